"""Classify lung sounds from Python in one call, or a stream block by block, with the daemon's own pipeline.

    from qlung_edge import Classifier

    classifier = Classifier.from_bundle()          # the model shipped in the package
    result = classifier.predict("recording.wav")   # or a numpy array and its rate
    print(result.verdict.task_2_2, result.quality.accepted_fraction)

`predict` reads the file as the daemon's file source does, pushes it through the same `SignalPath` (resampling,
windows, AQS, gate, examinations) and the same `EventReporter` (learned quality gate, verdicts), so `predict`,
`eval-stream` and the daemon give the same windows and verdicts for the same file.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.blocks import AudioBlock
from firmware_bridge.sources import DEFAULT_BLOCK_SECONDS, FileSource
from qlung_edge.backends import Backend
from qlung_edge.bundle import Bundle, BundleError, load_bundle
from qlung_edge.errors import AudioFileError
from qlung_edge.events import SCHEMA_VERSION, Header, VerdictEvent, WindowEvent, WindowStatus, event_dict
from qlung_edge.reporter import EventReporter, ReportedEvent, utc
from qlung_edge.streaming import Decision, ExamBoundary, SignalPath

MIN_SECONDS = 1.0
"""Shorter audio holds less than one breath: `predict` refuses it rather than classify a padded fragment."""

SHIPPED_BUNDLE = Path(__file__).resolve().parent / "bundles" / "sprsound-edge"
"""The model that comes with the package (see its MODEL_CARD.md): research and development, not diagnosis."""


@dataclass(frozen=True)
class QualitySummary:
    """How much of the recording the gate let through, and why the rest was refused."""

    windows: int
    accepted: int
    gated_by_reason: dict[str, int]
    mean_aqs: float | None
    mean_poor: float | None
    """The learned quality estimate P(poor) over the classified windows; None for a bundle without one."""

    @property
    def accepted_fraction(self) -> float:
        return self.accepted / self.windows if self.windows else 0.0


@dataclass(frozen=True)
class Classification:
    """Everything the pipeline said about one recording (or one stream)."""

    source: str
    seconds: float
    windows: tuple[WindowEvent, ...]
    verdicts: tuple[VerdictEvent, ...]
    """One per examination; a recording without a lift of the chest piece is one examination."""
    notes: tuple[str, ...]

    @property
    def verdict(self) -> VerdictEvent | None:
        """The last examination's verdict (the only one for a recording made in one go)."""
        return self.verdicts[-1] if self.verdicts else None

    @property
    def quality(self) -> QualitySummary:
        reasons: Counter[str] = Counter()
        for w in self.windows:
            reasons.update(w.reasons[:1] if w.reasons else ())
        accepted = [w for w in self.windows if w.status is WindowStatus.CLASSIFIED]
        aqs = [w.quality.aqs for w in self.windows]
        poor = [w.poor for w in accepted if w.poor is not None]
        return QualitySummary(
            windows=len(self.windows),
            accepted=len(accepted),
            gated_by_reason=dict(reasons),
            mean_aqs=round(float(np.mean(aqs)), 4) if aqs else None,
            mean_poor=round(float(np.mean(poor)), 4) if poor else None,
        )

    def to_dict(self, run_id: str = "predict") -> dict[str, Any]:
        """JSON-ready: each window and verdict as the daemon's event object (schema `qlung-edge schema`)."""

        def as_event(seq: int, event: Any) -> dict[str, Any]:
            return event_dict(Header(SCHEMA_VERSION, event.type, self.source, run_id, seq, utc(time.time())), event)

        quality = self.quality
        return {
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "verdict": None if self.verdict is None else as_event(0, self.verdict),
            "verdicts": [as_event(i, v) for i, v in enumerate(self.verdicts)],
            "quality": {**quality.__dict__, "accepted_fraction": round(quality.accepted_fraction, 4)},
            "windows": [as_event(i, w) for i, w in enumerate(self.windows)],
            "notes": list(self.notes),
        }


class ClassifierStream:
    """Push audio blocks as they arrive, get events back: the daemon's pipeline without its threads.

    Gated windows are events too (with the reason and advice); `finish()` ends the stream and the examination
    (its verdict event). `start_exam()` / `stop_exam()` are the daemon's control messages."""

    def __init__(self, classifier: Classifier, name: str = "stream") -> None:
        self.classifier = classifier
        self.name = name
        bundle = classifier.bundle
        hop = classifier.hop_seconds
        self.path = SignalPath(
            bundle.window_samples,
            round(hop * bundle.sample_rate),
            bundle.quality_config(),
            rate=bundle.sample_rate,
            frontend=classifier.backend.frontend,
        )
        self.reporter = EventReporter(bundle, classifier.run_id)
        self.reporter.epoch = time.time()
        self.seconds = 0.0
        self.notes: list[str] = []

    def push(self, samples: np.ndarray, rate: int, *, gap: bool = False) -> list[ReportedEvent]:
        """Mono float samples in [-1, 1] at `rate` (any rate: resampled); returns the events they complete."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"{self.name}: expected mono samples (one dimension), got shape {samples.shape}")
        if int(rate) <= 0:
            raise ValueError(f"{self.name}: sample rate must be positive, got {rate}")
        block = AudioBlock(samples, int(rate), self.seconds, gap=gap)
        self.seconds += block.duration
        return self._report(self.path.push(block))

    def finish(self) -> list[ReportedEvent]:
        """The end of the stream: the last windows (a stream shorter than one window becomes one padded
        window) and the verdict of the examination in progress."""
        return self._report(self.path.finish())

    def start_exam(self, patient: str | None = None, encounter: str | None = None, site: str | None = None) -> None:
        self.path.request(True, "control message", patient=patient, encounter=encounter, site=site)

    def stop_exam(self) -> None:
        self.path.request(False, "control message")

    def _report(self, outputs: list[Decision | ExamBoundary]) -> list[ReportedEvent]:
        self.notes += self.path.take_notes()
        accepted = [d for d in outputs if isinstance(d, Decision) and d.accepted]
        backend = self.classifier.backend
        out = backend.run_all(np.stack([backend.input_of(d.window) for d in accepted])) if accepted else {}
        rows = {id(d): i for i, d in enumerate(accepted)}
        events: list[ReportedEvent] = []
        for item in outputs:
            if isinstance(item, ExamBoundary):
                events += self.reporter.boundary(item)
                continue
            if id(item) in rows:
                i = rows[id(item)]
                poor = out["poor"][i] if "poor" in out else None
                outcome = self.reporter.window(
                    item, WindowStatus.CLASSIFIED, out["probabilities"][i], None if poor is None else float(poor)
                )
            else:
                outcome = self.reporter.window(item, WindowStatus.GATED, None)
            if outcome.event is not None:
                events.append(outcome.event)
        return events


class Classifier:
    """A loaded bundle and its backend (ONNX Runtime by default, TensorRT where the bundle has an engine)."""

    def __init__(self, bundle: Bundle, backend: Backend, hop_seconds: float | None = None) -> None:
        self.bundle = bundle
        self.backend = backend
        self.hop_seconds = float(hop_seconds or bundle.manifest["hop_seconds"])
        self.run_id = uuid.uuid4().hex
        """One per loaded classifier, in its events (as the daemon's run id is one per start)."""

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | None = None,
        *,
        hop_seconds: float | None = None,
        backend: str = "auto",
        threads: int = 1,
    ) -> Classifier:
        """The bundle at `path` (verified), or the one shipped with the package."""
        from qlung_edge.daemon import DaemonConfig, backend_for

        folder = Path(path) if path is not None else SHIPPED_BUNDLE
        if path is None and not (folder / "manifest.json").is_file():
            raise BundleError("the shipped model is missing from this installation (reinstall qlung-edge)", path=folder)
        bundle = load_bundle(folder)
        return cls(bundle, backend_for(bundle, DaemonConfig(bundle=folder, backend=backend, threads=threads)),
                   hop_seconds)  # fmt: skip

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    def stream(self, name: str = "stream") -> ClassifierStream:
        return ClassifierStream(self, name)

    def predict(self, audio: str | Path | np.ndarray, rate: int | None = None) -> Classification:
        """A file (any format and rate soundfile reads) or mono samples with their `rate`."""
        if isinstance(audio, (str, Path)):
            if rate is not None:
                raise ValueError("rate is read from the file: pass it only with samples")
            source = FileSource(name=f"file:{audio}", path=Path(audio))
            _check_length(str(audio), source.info.frames / source.info.sample_rate)
            stream = self.stream(str(audio))
            events: list[ReportedEvent] = []
            for block in source.blocks():
                events += stream.push(block.samples, block.sample_rate, gap=block.gap)
            stream.notes += source.notes
        else:
            if rate is None:
                raise ValueError("samples need their sample rate: predict(samples, rate=...)")
            samples = np.asarray(audio, dtype=np.float32)
            _check_length("samples", len(samples) / rate)
            stream = self.stream("samples")
            size = max(1, round(DEFAULT_BLOCK_SECONDS * rate))
            events = []
            for start in range(0, len(samples), size):
                events += stream.push(samples[start : start + size], rate)
        events += stream.finish()
        return Classification(
            source=stream.name,
            seconds=stream.seconds,
            windows=tuple(e for e in events if isinstance(e, WindowEvent)),
            verdicts=tuple(e for e in events if isinstance(e, VerdictEvent)),
            notes=tuple(stream.notes),
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_length(name: str, seconds: float) -> None:
    if seconds < MIN_SECONDS:
        raise AudioFileError(f"{seconds:.2f} s of audio: too short to classify (at least {MIN_SECONDS:g} s)", path=name)

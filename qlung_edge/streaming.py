"""The signal path as plain objects: resample, cut windows, score their quality, gate.

`SignalPath` takes source blocks and hands back one decision per window: classify it, or refuse it with
reasons. Nothing here owns a thread or a clock, so the daemon, `eval-stream`, `predict` and the benchmarks
run exactly the same code, and each step is tested on its own. Times are seconds on the stream's timeline
(the source's, concealed gaps included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Union

import numpy as np

from firmware_bridge.blocks import AudioBlock
from qlung_edge import FRAME_HOP, FRAME_LENGTH, MODEL_SAMPLE_RATE, frames_in
from qlung_edge.events import ExamState, GateReason
from qlung_edge.quality import FrameFeatures, QualityConfig, QualityReport, StreamingQuality, assess, rejudge
from qlung_edge.windows import pad_segment


class StreamResampler:
    """soxr's streaming resampler, restarted when the source's rate changes mid-stream.

    A block of concealed silence goes through like audio, so the output keeps the source's timeline; the
    output samples it produced are reported as gap samples.
    """

    def __init__(self, out_rate: int, quality: str = "HQ") -> None:
        self.out_rate = out_rate
        self.quality = quality
        self.in_rate: int | None = None
        self._stream: Any = None
        self._in_count = 0
        """Input samples since the current rate began."""
        self._base = 0
        """Output samples produced before the current rate began."""
        self.produced = 0

    def position(self) -> int:
        """Output sample index that the next input sample maps to.

        soxr's output is aligned with its input (its filter delay is held back, not prepended), but it hands
        output over in bursts: where a block lands must come from this arithmetic, not from what one call
        returned. After a rate change the old rate's tail is flushed first, so the same index holds.
        """
        if self.in_rate is None:
            return self.produced
        return self._base + round(self._in_count * self.out_rate / self.in_rate)

    def push(self, samples: np.ndarray, rate: int) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        tail = np.zeros(0, np.float32)
        if rate != self.in_rate:
            tail = self.flush()
            self.in_rate = rate
            self._base, self._in_count = self.produced, 0
            if rate != self.out_rate:
                import soxr

                self._stream = soxr.ResampleStream(rate, self.out_rate, 1, dtype="float32", quality=self.quality)
        stream: Any = self._stream
        out = samples if stream is None else stream.resample_chunk(samples)
        self._in_count += len(samples)
        out = np.concatenate([tail, out]) if len(tail) else out
        self.produced += len(out)
        return out

    def flush(self) -> np.ndarray:
        """What the resampler still holds (its filter delay), at the end of the stream or a rate change."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        out = np.asarray(self._stream.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)
        self._stream = None
        self.in_rate = None
        self.produced += len(out)
        return out


@dataclass(frozen=True)
class Window:
    index: int
    start: float
    """Seconds on the stream timeline (at the model's rate)."""
    end: float
    samples: np.ndarray
    gap_seconds: float
    """Concealed silence inside the window (the device lost frames)."""
    report: QualityReport
    """The window's AQS and quality figures."""
    features: np.ndarray | None = None
    """The window's log-mel frames [frames, mels], when the path computes them as audio arrives."""


FrontEnd = Callable[[np.ndarray], np.ndarray]
"""Audio [samples] at the model's rate to its log-mel frames [frames, mels] (25 ms frames every 10 ms)."""


class FrameRing:
    """The stream's log-mel frames, each computed once, when the next window needs it.

    A window's frames are the ones that start inside it (windows start at multiples of the 10 ms hop), which
    is exactly what the front end computes on the window alone: the network then runs on frames taken from
    here instead of the front end running again over every window's samples each hop. Audio is held until a
    window is asked for, so the front end runs once per hop on the hop's new samples, not once per block.
    """

    def __init__(self, frontend: FrontEnd, capacity: int, frame_length: int = FRAME_LENGTH,
                 hop: int = FRAME_HOP, start_frame: int = 0) -> None:  # fmt: skip
        self.frontend = frontend
        self.frame_length, self.hop, self.capacity = frame_length, hop, capacity
        self._frames: np.ndarray | None = None
        self._tail = np.zeros(0, np.float32)
        """Samples from the start of the next frame on, not yet a whole frame."""
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._count = start_frame
        """Frames computed since the start of the stream (frame k starts at sample k * hop)."""

    def push(self, samples: np.ndarray) -> None:
        self._pending.append(np.array(samples, np.float32))  # a copy: callers reuse their buffers
        self._pending_samples += len(samples)
        if self._pending_samples >= self.capacity * self.hop:  # never hold more audio than the ring has frames
            self._compute()

    @property
    def count(self) -> int:
        """Frames of the stream so far (computing any whose audio has arrived)."""
        self._compute()
        return self._count

    def _compute(self) -> None:
        if not self._pending:
            return
        buffer = np.concatenate([self._tail, *self._pending])
        self._pending, self._pending_samples = [], 0
        new = 0 if len(buffer) < self.frame_length else 1 + (len(buffer) - self.frame_length) // self.hop
        skip = max(0, new - self.capacity)  # more than the ring holds: the older frames would be overwritten
        if new > skip:
            frames = self.frontend(buffer[skip * self.hop : (new - 1) * self.hop + self.frame_length])
            if self._frames is None:
                self._frames = np.zeros((self.capacity, frames.shape[1]), np.float32)
            self._frames[(self._count + skip + np.arange(len(frames))) % self.capacity] = frames
        self._count += new
        self._tail = np.array(buffer[new * self.hop :], dtype=np.float32)

    def window(self, first: int, count: int) -> np.ndarray:
        """Frames first .. first + count - 1 of the stream (they must still be in the ring)."""
        self._compute()
        if self._frames is None or first < self._count - self.capacity or first + count > self._count:
            raise ValueError(f"frames {first}..{first + count - 1} are not in the ring (it holds up to {self._count})")
        return self._frames[(first + np.arange(count)) % self.capacity].copy()


QUALITY_CHUNK = 16000
"""Samples (1 s at 16 kHz) the quality scorer waits for between windows: an examination's start or end is
seen at most this late."""


class WindowCutter:
    """Ring buffer at the model's rate that hands out a full window every `hop` samples, with its AQS.

    The quality frames are computed once as audio arrives (`StreamingQuality`); a window's report summarises
    the frames that lie inside it, which is exactly what scoring the window on its own gives.
    """

    def __init__(self, window: int, hop: int, quality: QualityConfig, frontend: FrontEnd | None = None) -> None:
        if not 0 < hop <= window:
            raise ValueError(f"need 0 < hop ({hop}) <= window ({window})")
        if window % quality.hop_length or hop % quality.hop_length:
            raise ValueError(f"window and hop must be multiples of the AQS hop ({quality.hop_length} samples)")
        self.window = window
        self.hop = hop
        self.rate = quality.sample_rate
        self.frames_per_window = (window - quality.frame_length) // quality.hop_length + 1
        self.scorer = StreamingQuality(quality, history_frames=self.frames_per_window + 1)
        self._audio = np.zeros(window, np.float32)
        self._gaps: list[tuple[int, int]] = []
        """Concealed spans [start, end) in samples since the start of the stream."""
        self.total = 0
        """Samples seen since the start of the stream."""
        self.next_end = window
        """Stream sample at which the next window ends."""
        self.index = 0
        self.frames: list[FrameFeatures] = []
        """Quality frames completed since the caller last took them (`take_frames`)."""
        self._unscored: list[np.ndarray] = []
        """Audio not yet through the quality scorer: it runs on QUALITY_CHUNK samples or a window's end at once,
        not on every block (a sound card's 10 ms blocks would cost numpy's per-call overhead 100 times a second)."""
        self._unscored_samples = 0
        self.frontend: FrontEnd | None = None
        self.ring: FrameRing | None = None
        self.set_frontend(frontend)

    def set_frontend(self, frontend: FrontEnd | None) -> None:
        """Compute the model's frames as audio arrives with `frontend` (None: don't). A new front end (a
        reloaded bundle) recomputes the frames of the audio already buffered, so the next window is exact."""
        self.frontend, self.ring = frontend, None
        if frontend is None:
            return
        if self.window % FRAME_HOP or self.hop % FRAME_HOP:
            raise ValueError(f"window and hop must be multiples of the front end's hop ({FRAME_HOP} samples)")
        held = min(self.total, self.window)
        first = -(-(self.total - held) // FRAME_HOP)  # the first frame that starts inside the buffered audio
        self.ring = FrameRing(frontend, frames_in(self.window) + self.hop // FRAME_HOP + 1, start_frame=first)
        if held:
            self.ring.push(self._audio[len(self._audio) - (self.total - first * FRAME_HOP) :])

    def score_pending(self) -> None:
        """Run the quality scorer over the audio it has not seen yet."""
        if not self._unscored:
            return
        block = np.concatenate(self._unscored) if len(self._unscored) > 1 else self._unscored[0]
        self._unscored, self._unscored_samples = [], 0
        features = self.scorer.push(block)
        if len(features):
            self.frames.append(features)

    def take_frames(self) -> FrameFeatures:
        """The quality frames scored since the last call (audio waiting for a whole chunk is not scored yet)."""
        frames, self.frames = self.frames, []
        return FrameFeatures.concatenate(frames)

    def padded(self) -> Window | None:
        """The audio seen so far as one window, faded and repeated as training pads a cycle: a stream (or
        recording) shorter than one window is classified, not skipped. None once a window has been cut."""
        if self.index or self.total == 0:
            return None
        self.score_pending()
        audio = self._audio[-self.total :]
        padded = pad_segment(audio, self.window, self.rate)
        window = Window(
            index=self.index,
            start=0.0,
            end=self.total / self.rate,
            samples=padded,
            gap_seconds=self._gap_samples() / self.rate,
            report=self.scorer.window(self.frames_per_window) if self.scorer.frames_seen else assess(
                padded, self.rate, self.scorer.config
            ),
            features=None if self.frontend is None else self.frontend(padded),
        )  # fmt: skip
        self.index += 1
        return window

    def restart(self) -> None:
        """The stream restarted (a reconnect of unknown length): the next window starts after this point, so
        no window mixes audio from before and after; windows stay on their hop grid (indices go on)."""
        while self.next_end - self.window < self.total:
            self.next_end += self.hop

    def mark_gap(self, start: int, end: int) -> None:
        """Samples [start, end) of the stream (at the model's rate) are concealed device silence."""
        if end > start:
            self._gaps.append((start, end))

    def push(self, samples: np.ndarray, gap: bool = False) -> list[Window]:
        if gap:
            self.mark_gap(self.total, self.total + len(samples))
        out: list[Window] = []
        position = 0
        while position < len(samples):
            take = min(len(samples) - position, self.next_end - self.total)
            part = samples[position : position + take]
            self._append(part)
            position += take
            if self.total == self.next_end:
                out.append(self._cut())
                self.next_end += self.hop
        return out

    def _append(self, part: np.ndarray) -> None:
        n = len(part)
        if n == 0:
            return
        self._unscored.append(np.array(part, np.float32))
        self._unscored_samples += n
        if self._unscored_samples >= QUALITY_CHUNK:
            self.score_pending()
        if self.ring is not None:
            self.ring.push(part)
        if n >= self.window:
            self._audio[:] = part[-self.window :]
        else:
            self._audio[:-n] = self._audio[n:]
            self._audio[-n:] = part
        self.total += n

    def _gap_samples(self) -> int:
        begin = self.total - self.window
        self._gaps = [(a, b) for a, b in self._gaps if b > begin - self.window]  # keep a window's worth back
        return sum(max(0, min(b, self.total) - max(a, begin)) for a, b in self._gaps)

    def _cut(self) -> Window:
        self.score_pending()
        end = self.total / self.rate
        window = Window(
            index=self.index,
            start=end - self.window / self.rate,
            end=end,
            samples=self._audio.copy(),
            gap_seconds=self._gap_samples() / self.rate,
            report=self.scorer.window(self.frames_per_window),
            features=None if self.ring is None else self.ring.window(
                (self.total - self.window) // FRAME_HOP, frames_in(self.window)
            ),
        )  # fmt: skip
        self.index += 1
        return window


@dataclass(frozen=True)
class GateConfig:
    """Hysteresis: once a window is refused, the gate reopens only after `reopen_after` windows in a row
    pass thresholds tightened by the margins below, so it does not flicker on a borderline signal."""

    reopen_after: int = 2
    level_margin_db: float = 3.0
    entropy_margin: float = 0.02
    aqs_margin: float = 0.05
    max_gap_seconds: float = 0.07
    """A window with more concealed device silence than this is refused as 'device_gap'. Measured with
    scripts/gap_tolerance.py (link frames dropped at random from 40 real SPRSound test recordings, shipped
    model): windows holding up to 0.07 s of concealed silence keep the loss-free class in 95.9 % of 493 cases,
    up to 0.1 s in 94.7 %. 0 refused every window near a single lost frame (13 of 13 at --drop 0.01)."""


@dataclass
class Gate:
    thresholds: QualityConfig
    """The bundle's quality thresholds (too quiet, clipped, ...)."""
    config: GateConfig = field(default_factory=GateConfig)
    open: bool = True
    _passes: int = 0

    def decide(self, window: Window) -> tuple[str, ...]:
        """Reasons to refuse the window; empty means classify it."""
        thresholds = self.thresholds
        if not self.open:
            c = self.config
            thresholds = replace(
                thresholds,
                quiet_dbfs=thresholds.quiet_dbfs + c.level_margin_db,
                max_entropy=thresholds.max_entropy - c.entropy_margin,
                min_aqs=thresholds.min_aqs + c.aqs_margin if thresholds.min_aqs > 0 else 0.0,
            )
        reasons = list(rejudge(window.report, thresholds).reasons)
        if window.gap_seconds > self.config.max_gap_seconds:
            reasons.insert(0, GateReason.DEVICE_GAP.value)
        if reasons:
            self.open = False
            self._passes = 0
            return tuple(reasons)
        if not self.open:
            self._passes += 1
            if self._passes < self.config.reopen_after:
                return (GateReason.SETTLING.value,)
            self.open = True
        return ()


@dataclass(frozen=True)
class Decision:
    """One window and what the gate made of it."""

    window: Window
    reasons: tuple[str, ...]
    """Why the gate refused it; empty when it goes to the model."""

    @property
    def accepted(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class ExamBoundary:
    """An examination starts or ends here, in stream order with the windows around it."""

    start: bool
    """True: an examination begins; False: the current one ends."""
    time: float
    """Seconds on the stream timeline."""
    reason: str
    patient: str | None = None
    encounter: str | None = None
    site: str | None = None


@dataclass(frozen=True)
class ExamConfig:
    """When the signal path itself starts and ends examinations."""

    lift_seconds: float = 3.0
    """Silence (too quiet for the gate, or digital silence, or a device gap) this long means the chest piece
    was lifted or the link lost: the examination ends; the next sound starts the next one."""
    automatic: bool = True
    """False: only control messages (and the end of the source) start and end examinations."""


OUT_OF_RANGE = 8.0
"""Full scale is 1.0: a sample beyond ±8 (+18 dBFS) is not sound but a broken device or pipe. Left in, such
values overflow the quality features (1e20 squared is inf) and the resampler (1e38 becomes inf)."""


def finite_samples(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The samples with NaN, inf and out-of-range values replaced by silence, and how many there were."""
    if not len(samples) or np.max(np.abs(samples)) <= OUT_OF_RANGE:  # NaN fails the test: counted below
        return samples, 0
    with np.errstate(invalid="ignore"):
        bad_mask = ~(np.abs(samples) <= OUT_OF_RANGE)  # NaN compares false: caught too
    bad = int(np.count_nonzero(bad_mask))
    if not bad:
        return samples, 0
    return np.where(bad_mask, np.float32(0.0), samples).astype(samples.dtype, copy=False), bad


def _ignore(name: str, value: float = 1) -> None:
    pass


Output = Union[Decision, ExamBoundary]


class SignalPath:
    """Source blocks in, one `Decision` per window out: resample, cut windows every hop, AQS, gate — and where
    examinations start and end (`ExamBoundary`), in stream order with the windows.

    `push(block)` returns what the block completed, `finish()` what the resampler's tail completes at the end
    of the stream (and the end of the examination; a stream shorter than one window becomes one padded
    window). Blocks that carry NaN or inf become concealed gaps (a note says so); blocks the source flags as
    lost audio are marked as device gaps, so the windows that overlap them are refused. An examination starts
    with the first sound, ends after `ExamConfig.lift_seconds` of silence or lost audio, and starts again with
    the next sound; `request()` starts or ends one from outside (a control message). `count(name, value)` is
    told about samples, gaps and non-finite samples (the daemon's metrics).
    """

    def __init__(
        self,
        window_samples: int,
        hop_samples: int,
        thresholds: QualityConfig,
        gate: GateConfig | None = None,
        *,
        rate: int = MODEL_SAMPLE_RATE,
        count: Callable[..., None] = _ignore,
        exams: ExamConfig | None = None,
        frontend: FrontEnd | None = None,
    ) -> None:
        self.resampler = StreamResampler(rate)
        self.cutter = WindowCutter(window_samples, hop_samples, thresholds, frontend)
        self.gate = Gate(thresholds, gate or GateConfig())
        self.exams = exams or ExamConfig()
        self.count = count
        self.notes: list[str] = []
        """Things to tell the user about the stream, oldest first; the caller takes them."""
        self.in_exam = False
        self._silent_frames = 0
        self._stopped = False
        """An examination was ended by a control message: the next one waits for a lift and a new sound."""
        self._requests: list[ExamBoundary] = []

    @property
    def hop_seconds(self) -> float:
        return self.cutter.hop / self.cutter.rate

    @property
    def window_seconds(self) -> float:
        return self.cutter.window / self.cutter.rate

    def seconds_to_next_window(self) -> float:
        """Audio still to come before the next window is cut (the resampler's short delay aside)."""
        return (self.cutter.next_end - self.cutter.total) / self.cutter.rate

    def set_frontend(self, frontend: FrontEnd | None) -> None:
        """Compute log-mel frames as audio arrives with `frontend` (a reloaded bundle's); None: stop."""
        self.cutter.set_frontend(frontend)

    def set_thresholds(self, thresholds: QualityConfig) -> None:
        """A reloaded bundle's thresholds, from the next window on."""
        self.gate.thresholds = thresholds

    def request(self, start: bool, reason: str, **identifiers: str | None) -> None:
        """Start (ending the current one) or end an examination at the next block: a control message."""
        self._requests.append(ExamBoundary(start, self.cutter.total / self.cutter.rate, reason, **identifiers))

    def push(self, block: AudioBlock) -> list[Output]:
        samples, bad = finite_samples(block.samples)
        gap = block.gap
        self.count("samples", len(samples))
        if bad:
            # A device or pipe that sends NaN/inf: keep the timeline, treat the block as lost audio.
            self.count("nonfinite_samples", bad)
            self.notes.append(
                f"{bad} NaN/inf or out-of-range (beyond ±{OUT_OF_RANGE:g}) samples at {block.timestamp:.2f} s:"
                " block treated as a gap"
            )
            gap = True
        if gap:
            self.count("source_gaps")
            self.count("source_gap_seconds", block.duration)
            start = self.resampler.position()
            self.cutter.mark_gap(start, start + round(len(samples) * self.resampler.out_rate / block.sample_rate))
        requested = self._take_requests()
        if block.discontinuity and self.cutter.total:
            # Audio before and after a reconnect of unknown length do not join: the examination ends here
            # and windows start afresh after this point.
            when = self.cutter.total / self.cutter.rate
            self.notes.append(f"the stream restarted at {when:.2f} s (device reconnected): new window sequence")
            self.count("discontinuities")
            self.cutter.score_pending()  # what came before belongs to the examination that ends here
            requested += self._boundaries(self.cutter.take_frames())
            self.cutter.restart()
            if self.in_exam:
                requested.append(self._end(ExamBoundary(False, when, "the stethoscope link restarted")))
        decisions = self._decide(self.cutter.push(self.resampler.push(samples, block.sample_rate)))
        return requested + self._merge(decisions, self._boundaries(self.cutter.take_frames()))

    def finish(self) -> list[Output]:
        """What the resampler's last few milliseconds complete, a padded window for a stream shorter than one
        window, and the end of the examination."""
        requested = self._take_requests()
        decisions = self._decide(self.cutter.push(self.resampler.flush()))
        self.cutter.score_pending()
        out = requested + self._merge(decisions, self._boundaries(self.cutter.take_frames()))
        padded = self.cutter.padded()
        if padded is not None:
            if not self.in_exam:
                out.append(self._start(ExamBoundary(True, 0.0, "audio")))
            out += self._decide([padded])
        if self.in_exam:
            out.append(self._end(ExamBoundary(False, self.cutter.total / self.cutter.rate, "the source ended")))
        return out

    def feed(self, blocks: Iterable[AudioBlock]) -> Iterator[Output]:
        """Every decision of a whole stream: each block pushed, then the end of the stream."""
        for block in blocks:
            yield from self.push(block)
        yield from self.finish()

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def _decide(self, windows: list[Window]) -> list[Decision]:
        return [Decision(w, self.gate.decide(w)) for w in windows]

    def _start(self, boundary: ExamBoundary) -> ExamBoundary:
        self.in_exam, self._stopped = True, False
        return boundary

    def _end(self, boundary: ExamBoundary) -> ExamBoundary:
        self.in_exam = False
        return boundary

    def _take_requests(self) -> list[Output]:
        out: list[Output] = []
        while self._requests:
            request = self._requests.pop(0)
            if self.in_exam:
                out.append(self._end(replace(request, start=False)))
            if request.start:
                out.append(self._start(request))
            else:
                self._stopped = True
        return out

    def _boundaries(self, frames: FrameFeatures) -> list[ExamBoundary]:
        """Starts and ends of examinations among new quality frames: the first sound starts one; silence (too
        quiet, or digital silence, which is what concealed gaps are) for `lift_seconds` ends it."""
        if not self.exams.automatic or len(frames) == 0:
            return []
        thresholds = self.gate.thresholds
        hop = thresholds.hop_length / thresholds.sample_rate
        level = 10.0 * np.log10(frames.power.astype(np.float64) + 1e-20)
        silent = frames.dead | (level < thresholds.quiet_dbfs)
        lift = max(1, int(round(self.exams.lift_seconds / hop)))
        first = self.cutter.scorer.frames_seen - len(frames)
        out = []
        for i, quiet in enumerate(silent):
            if quiet:
                self._silent_frames += 1
                if self.in_exam and self._silent_frames == lift:
                    time = (first + i + 1 - lift) * hop
                    seconds = self.exams.lift_seconds
                    out.append(
                        self._end(ExamBoundary(False, time, f"no breath sounds for {seconds:g} s: lifted or lost"))
                    )
                if self._silent_frames >= lift:
                    self._stopped = False  # after a stop, a lift and a new sound start the next examination
            else:
                self._silent_frames = 0
                if not self.in_exam and not self._stopped:
                    out.append(self._start(ExamBoundary(True, (first + i) * hop, "breath sounds")))
        return out

    @staticmethod
    def _merge(decisions: list[Decision], boundaries: list[ExamBoundary]) -> list[Output]:
        """Windows (by their end) and boundaries (by their time) in stream order; a boundary goes first on a tie."""
        timed: list[tuple[float, int, Output]] = [(d.window.end, 1, d) for d in decisions]
        timed += [(b.time, 0, b) for b in boundaries]
        return [item for _, _, item in sorted(timed, key=lambda t: (t[0], t[1]))]


@dataclass
class ExamSmoother:
    """The examination's running answer: the mean of the class probabilities of the last `windows`
    accepted windows, and how many windows it rests on (few windows, little confidence)."""

    classes: tuple[str, ...]
    windows: int = 8
    _recent: deque[np.ndarray] = field(default_factory=deque)
    accepted: int = 0

    def add(self, probabilities: np.ndarray) -> ExamState:
        self._recent.append(np.asarray(probabilities, np.float64))
        while len(self._recent) > self.windows:
            self._recent.popleft()
        self.accepted += 1
        return self.state()

    def state(self) -> ExamState:
        if not self._recent:
            return ExamState(None, None, 0, self.accepted)
        mean = np.mean(self._recent, axis=0)
        return ExamState(
            label=self.classes[int(np.argmax(mean))],
            probabilities={c: round(float(p), 5) for c, p in zip(self.classes, mean)},
            windows=len(self._recent),
            accepted_total=self.accepted,
        )

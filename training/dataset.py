"""Training examples — annotated cycles or the daemon's windows — prepared once and cached on disk.

An example is a labelled span of a recording (`records.Cycle`): a respiratory cycle or event, padded to the
model's input length as the field does, or a window cut from the whole recording exactly where the daemon
cuts it (`qlung_edge.windows`). Decoding, resampling, AQS and — with `features=True` — the log-mel front end
are computed once per example and memory-mapped afterwards: the front end is deterministic and most of the
model's FLOPs, so training runs SpecAugment and the network on cached float16 log-mel frames. A window's
frames are a slice of its recording's frames, so each second of a recording goes through the front end once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qlung_edge import FRAME_HOP, MODEL_SAMPLE_RATE, frames_in
from qlung_edge.quality import QualityConfig, QualityInputError, QualityReport, assess, frame_features, summarize
from qlung_edge.windows import FADE_SECONDS, pad_segment, window_label, window_starts
from training.cycles import CycleAudioConfig, CycleAudioLoader
from training.frontend import KaldiFbank
from training.records import Cycle, Recording

UNITS = ("cycle", "window", "mixed")
"""What a training example is: an annotated cycle padded to length, a window of the daemon's, or (mixed) both:
cycles teach what each sound is, windows what the device sees; validation and test use windows."""
NO_LABEL = -1
"""Label of a window that overlaps no annotated event: not trained on, but part of its recording's verdict."""


@dataclass(frozen=True)
class Geometry:
    """What one model input is: its unit, its length, and (windows) the hop between them."""

    unit: str = "cycle"
    seconds: float = 8.0
    hop_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if (
            round(self.hop_seconds * MODEL_SAMPLE_RATE) % FRAME_HOP
            or round(self.seconds * MODEL_SAMPLE_RATE) % FRAME_HOP
        ):
            raise ValueError("window and hop must be positive whole multiples of 10 ms")

    @property
    def samples(self) -> int:
        return int(round(self.seconds * MODEL_SAMPLE_RATE))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * MODEL_SAMPLE_RATE))


@dataclass
class Prepared:
    examples: list[Cycle]
    inputs: np.ndarray
    """[N, frames, mels] float16 log-mel (features) or [N, samples] float32 waveforms; usually a memory map."""
    labels: np.ndarray
    aqs: np.ndarray
    features: bool

    def __len__(self) -> int:
        return len(self.examples)


def recording_windows(recording: Recording, geometry: Geometry, samples: int | None = None) -> list[Cycle]:
    """The daemon's windows of one recording as labelled spans (`NO_LABEL` where no event is overlapped, or an
    event of a kind the classes leave out)."""
    if samples is None:
        samples = int(round((recording.duration or 0.0) * MODEL_SAMPLE_RATE))
    out = []
    for start in window_starts(samples, geometry.samples, geometry.hop_samples):
        begin = start / MODEL_SAMPLE_RATE
        end = min(start + geometry.samples, samples) / MODEL_SAMPLE_RATE
        label = window_label(recording.cycles, begin, end, unlabelled=recording.unlabelled)
        out.append(recording.cycle(begin, end, NO_LABEL if label is None else label, f"{recording.id}@{begin:g}s"))
    return out


def _cache_key(examples: Sequence[Cycle], recordings: dict[str, Recording], geometry: Geometry,
               quality: QualityConfig, features: bool) -> str:  # fmt: skip
    digest = hashlib.sha1()
    config = [MODEL_SAMPLE_RATE, geometry.unit, geometry.seconds, FADE_SECONDS, features, quality.to_dict(), "v2"]
    digest.update(json.dumps(config).encode())
    for c in examples:
        path = recordings[c.recording].audio_path
        stat = path.stat() if path is not None else None
        digest.update(
            f"{path}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}|{c.start}|{c.end}|{c.label}".encode()
        )
    return digest.hexdigest()[:20]


class _FrontEnd:
    """The model's log-mel front end, run once per recording or cycle, in float32, stored as float16."""

    def __init__(self) -> None:
        self.module = KaldiFbank().eval()

    @torch.no_grad()
    def __call__(self, waves: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(np.array(waves, dtype=np.float32))).numpy()


def prepare(
    examples: Sequence[Cycle],
    recordings: Sequence[Recording],
    cache_dir: str | Path,
    quality: QualityConfig | None = None,
    geometry: Geometry | None = None,
    *,
    features: bool = True,
    progress: bool = True,
    desc: str = "prepare",
) -> Prepared:
    """Inputs, labels and AQS of `examples`, from the cache when an identical set was prepared before."""
    quality = quality or QualityConfig()
    geometry = geometry or Geometry()
    by_id = {r.id: r for r in recordings}
    cache_dir = Path(cache_dir)
    key = _cache_key(examples, by_id, geometry, quality, features)
    input_path, meta_path = cache_dir / f"{geometry.unit}s-{key}.npy", cache_dir / f"{geometry.unit}s-{key}.json"
    labels = np.array([c.label for c in examples], dtype=np.int64)
    if input_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        inputs = np.load(input_path, mmap_mode="r")
        return Prepared(list(examples), inputs, labels, np.array(meta["aqs"], np.float32), features)
    cache_dir.mkdir(parents=True, exist_ok=True)
    audio = CycleAudioConfig(seconds=geometry.seconds)
    loader = CycleAudioLoader(recordings, audio, cache_dir=cache_dir / "audio")
    frontend = _FrontEnd() if features else None
    shape = (len(examples), frames_in(geometry.samples), 128) if features else (len(examples), geometry.samples)
    tmp = input_path.with_suffix(f".{os.getpid()}.tmp")
    inputs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16 if features else np.float32, shape=shape)
    scores = np.zeros(len(examples), np.float32)
    if geometry.unit == "mixed":
        raise ValueError("prepare cycles and windows of a mixed recipe separately")
    if geometry.unit == "cycle":
        _prepare_cycles(examples, loader, frontend, quality, inputs, scores, progress, desc)
    else:
        _prepare_windows(examples, loader, frontend, quality, geometry, inputs, scores, progress, desc)
    inputs.flush()
    del inputs
    meta_tmp = meta_path.with_suffix(f".meta.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps({"aqs": scores.tolist(), "examples": len(examples)}))
    meta_tmp.replace(meta_path)  # the metadata first: a reader that finds the inputs finds it whole
    tmp.replace(input_path)
    return Prepared(list(examples), np.load(input_path, mmap_mode="r"), labels, scores, features)


def _prepare_cycles(examples: Sequence[Cycle], loader: CycleAudioLoader, frontend: _FrontEnd | None,
                    quality: QualityConfig, inputs: np.ndarray, scores: np.ndarray, progress: bool,
                    desc: str) -> None:  # fmt: skip
    batch = 32
    for first in tqdm(range(0, len(examples), batch), desc=desc, unit=f"{batch} cycles", disable=not progress):
        chunk = examples[first : first + batch]
        waves = np.stack([loader(c) for c in chunk])
        inputs[first : first + len(chunk)] = waves if frontend is None else frontend(waves)
        for i, (cycle, wave) in enumerate(zip(chunk, waves)):
            try:
                scores[first + i] = assess(loader.cycle_segment(cycle), MODEL_SAMPLE_RATE, quality).aqs
            except QualityInputError:  # a cycle shorter than one 25 ms frame: score its padded form
                scores[first + i] = assess(wave, MODEL_SAMPLE_RATE, quality).aqs


def indices_by_recording(recordings: Iterable[str]) -> dict[str, list[int]]:
    """Positions of each recording's items (windows, cycles), in order: windows come in stream order within a
    recording, so a recording's list is its stream."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, recording in enumerate(recordings):
        out[recording].append(i)
    return out


def _prepare_windows(examples: Sequence[Cycle], loader: CycleAudioLoader, frontend: _FrontEnd | None,
                     quality: QualityConfig, geometry: Geometry, inputs: np.ndarray, scores: np.ndarray,
                     progress: bool, desc: str) -> None:  # fmt: skip
    """Each recording decoded, scored frame by frame and (features) run through the front end once; its windows
    are slices of that."""
    by_recording = indices_by_recording(e.recording for e in examples)
    for recording, indices in tqdm(by_recording.items(), desc=desc, unit="rec", disable=not progress):
        audio = _recording_audio(loader, recording, geometry)
        recording_frames = frontend(audio[None])[0] if frontend is not None else None
        reports = _window_reports(audio, [examples[i] for i in indices], quality, geometry)
        for i, (start, report) in zip(indices, reports):
            first = start // FRAME_HOP
            if recording_frames is not None:
                inputs[i] = recording_frames[first : first + frames_in(geometry.samples)]
            else:
                inputs[i] = audio[start : start + geometry.samples]
            scores[i] = report.aqs


def _recording_audio(loader: CycleAudioLoader, recording: str, geometry: Geometry) -> np.ndarray:
    audio = np.asarray(loader.recording_audio(recording), dtype=np.float32)
    return pad_segment(audio, geometry.samples) if len(audio) < geometry.samples else audio


def _window_reports(audio: np.ndarray, windows: Sequence[Cycle], quality: QualityConfig,
                    geometry: Geometry) -> list[tuple[int, QualityReport]]:  # fmt: skip
    """(first sample, quality report) of each window of one recording, from its frames scored once."""
    quality_frames = frame_features(audio, quality)
    frames = frames_in(geometry.samples)
    out = []
    for window in windows:
        start = min(int(round(window.start * MODEL_SAMPLE_RATE)), len(audio) - geometry.samples)
        first = start // FRAME_HOP
        window_frames = replace(quality_frames, **{
            f: getattr(quality_frames, f)[first : first + frames] for f in ("entropy", "power", "clipped", "dead")
        })  # fmt: skip
        out.append((start, summarize(window_frames, quality)))
    return out


def window_reports(
    examples: Sequence[Cycle],
    recordings: Sequence[Recording],
    cache_dir: str | Path,
    quality: QualityConfig,
    geometry: Geometry,
    progress: bool = True,
) -> list[QualityReport]:
    """The quality report the daemon's gate reads for each window in `examples` (AQS, level, reasons), computed
    as `prepare` scores windows."""
    loader = CycleAudioLoader(
        recordings, CycleAudioConfig(seconds=geometry.seconds), cache_dir=Path(cache_dir) / "audio"
    )
    by_recording = indices_by_recording(e.recording for e in examples)
    out: list[QualityReport | None] = [None] * len(examples)
    for recording, indices in tqdm(by_recording.items(), desc="window quality", unit="rec", disable=not progress):
        audio = _recording_audio(loader, recording, geometry)
        for i, (_, report) in zip(indices, _window_reports(audio, [examples[i] for i in indices], quality, geometry)):
            out[i] = report
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:  # a silent gap would misalign reports and windows
        raise RuntimeError(f"{len(missing)} windows got no quality report (first: window {missing[0]})")
    return [r for r in out if r is not None]


class ExampleDataset(torch.utils.data.Dataset):
    """(input, label, aqs, index) per example: float32 log-mel [frames, mels] or waveform [samples]; with
    `targets` ([N, frames, 2], training.timing) each example's frame targets follow."""

    def __init__(self, prepared: Prepared, targets: np.ndarray | None = None) -> None:
        if targets is not None and len(targets) != len(prepared):
            raise ValueError(f"{len(targets)} frame targets for {len(prepared)} examples")
        self.prepared, self.targets = prepared, targets

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        p = self.prepared
        x = torch.from_numpy(np.array(p.inputs[index], dtype=np.float32))
        item = (x, int(p.labels[index]), float(p.aqs[index]), index)
        return item if self.targets is None else (*item, torch.from_numpy(self.targets[index]))

"""Cycles as training examples: fixed-length waveform, label and AQS, prepared once and cached on disk.

Decoding, resampling and scoring quality happen once per cycle; the arrays are memory-mapped afterwards,
so later epochs, seeds and runs with the same data read them straight from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from qlung_edge.quality import QualityConfig, QualityInputError, assess
from training.cycles import CycleAudioConfig, CycleAudioLoader
from training.records import Cycle, Recording


@dataclass
class PreparedCycles:
    cycles: list[Cycle]
    waveforms: np.ndarray
    """[N, samples] float32, usually a read-only memory map."""
    labels: np.ndarray
    aqs: np.ndarray


def _cache_key(
    cycles: Sequence[Cycle], recordings: dict[str, Recording], audio: CycleAudioConfig, quality: QualityConfig
) -> str:
    digest = hashlib.sha1()
    digest.update(json.dumps([audio.sample_rate, audio.seconds, audio.fade_seconds, quality.to_dict(), "v1"]).encode())
    for c in cycles:
        path = recordings[c.recording].audio_path
        stat = path.stat() if path is not None else None
        digest.update(
            f"{path}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}|{c.start}|{c.end}|{c.label}".encode()
        )
    return digest.hexdigest()[:20]


def prepare_cycles(
    cycles: Sequence[Cycle],
    recordings: Sequence[Recording],
    cache_dir: str | Path,
    quality: QualityConfig | None = None,
    audio: CycleAudioConfig | None = None,
    progress: bool = True,
    desc: str = "prepare cycles",
) -> PreparedCycles:
    """Waveforms, labels and AQS of `cycles`, from the cache when an identical set was prepared before."""
    quality = quality or QualityConfig()
    audio = audio or CycleAudioConfig()
    by_id = {r.id: r for r in recordings}
    cache_dir = Path(cache_dir)
    key = _cache_key(cycles, by_id, audio, quality)
    wave_path, meta_path = cache_dir / f"cycles-{key}.npy", cache_dir / f"cycles-{key}.json"
    labels = np.array([c.label for c in cycles], dtype=np.int64)
    if wave_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return PreparedCycles(
            list(cycles), np.load(wave_path, mmap_mode="r"), labels, np.array(meta["aqs"], np.float32)
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    loader = CycleAudioLoader(recordings, audio, cache_dir=cache_dir / "audio")
    tmp = wave_path.with_suffix(f".{os.getpid()}.tmp")
    waves = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(cycles), audio.length))
    scores = np.zeros(len(cycles), np.float32)
    for i, cycle in enumerate(tqdm(cycles, desc=desc, unit="cycle", disable=not progress)):
        waves[i] = loader(cycle)
        segment = loader.cycle_segment(cycle)
        try:
            scores[i] = assess(segment, audio.sample_rate, quality).aqs
        except QualityInputError:  # a cycle shorter than one 25 ms frame: score its padded form
            scores[i] = assess(waves[i], audio.sample_rate, quality).aqs
    waves.flush()
    del waves
    tmp.replace(wave_path)
    meta_path.write_text(json.dumps({"aqs": scores.tolist(), "cycles": len(cycles)}))
    return PreparedCycles(list(cycles), np.load(wave_path, mmap_mode="r"), labels, scores)


class CycleDataset(torch.utils.data.Dataset):
    """(waveform, label, aqs, index) per cycle."""

    def __init__(self, prepared: PreparedCycles) -> None:
        self.prepared = prepared

    def __len__(self) -> int:
        return len(self.prepared.cycles)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, float, int]:
        p = self.prepared
        return torch.from_numpy(np.array(p.waveforms[index])), int(p.labels[index]), float(p.aqs[index]), index

"""Turning annotated cycles into fixed-length 16 kHz model inputs, decoding each file once.

The field's preparation (Patch-Mix CL, BTS, QLung): resample to 16 kHz, cut the
cycle, short linear fades at its edges, then cut to 8 s or repeat it until 8 s.
Decoding and resampling a 44.1 kHz 32-bit file dominates an epoch, so the
resampled recording is cached in memory (bounded) and optionally on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlung_edge import MODEL_SAMPLE_RATE, WINDOW_SECONDS
from qlung_edge.audio import read_audio, resample
from qlung_edge.errors import DataError
from qlung_edge.windows import pad_segment
from training.records import Cycle, Recording


@dataclass(frozen=True)
class CycleAudioConfig:
    sample_rate: int = MODEL_SAMPLE_RATE
    seconds: float = WINDOW_SECONDS

    @property
    def length(self) -> int:
        return int(round(self.sample_rate * self.seconds))


class CycleAudioLoader:
    """Fixed-length model inputs for cycles, from a cache of resampled recordings."""

    def __init__(
        self,
        recordings: Iterable[Recording],
        config: CycleAudioConfig | None = None,
        *,
        cache_dir: str | Path | None = None,
        memory_cache_bytes: int = 2 << 30,
    ) -> None:
        self.config = config or CycleAudioConfig()
        self.recordings = {r.id: r for r in recordings}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memory_cache_bytes = memory_cache_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self.decodes = 0
        """How many times an audio file was decoded: stays put once everything is cached."""

    def _disk_key(self, path: Path) -> str:
        stat = path.stat()
        ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.config.sample_rate}|v1"
        return hashlib.sha1(ident.encode()).hexdigest()

    def _decode(self, rec: Recording) -> np.ndarray:
        if rec.audio_path is None:
            raise DataError(f"recording {rec.id} was scanned without audio", path=rec.annotation_path)
        cache_file = None
        if self.cache_dir is not None:
            cache_file = self.cache_dir / f"{self._disk_key(rec.audio_path)}.npy"
            if cache_file.exists():
                return np.load(cache_file, mmap_mode="r")
        audio = read_audio(rec.audio_path)
        self.decodes += 1
        samples = resample(audio.samples, audio.sample_rate, self.config.sample_rate)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, samples)
                tmp.replace(cache_file)  # atomic: a reader never sees half a file
            finally:
                tmp.unlink(missing_ok=True)
        return samples

    def recording_audio(self, recording_id: str) -> np.ndarray:
        """The whole recording at the model rate."""
        if recording_id in self._memory:
            self._memory.move_to_end(recording_id)
            return self._memory[recording_id]
        samples = self._decode(self.recordings[recording_id])
        self._memory[recording_id] = samples
        self._memory_bytes += samples.nbytes
        while self._memory_bytes > self.memory_cache_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= old.nbytes
        return samples

    def cycle_segment(self, cycle: Cycle) -> np.ndarray:
        """The cycle as annotated, at the model rate, before fades and padding."""
        audio = self.recording_audio(cycle.recording)
        rate = self.config.sample_rate
        start = int(round(cycle.start * rate))
        end = min(int(round(cycle.end * rate)), len(audio))
        if end <= start:
            where = self.recordings[cycle.recording].annotation_path
            raise DataError(f"cycle {cycle.start}-{cycle.end} s of {cycle.recording} holds no audio", path=where)
        return np.asarray(audio[start:end], dtype=np.float32)

    def __call__(self, cycle: Cycle) -> np.ndarray:
        """Fixed-length float32 input for one cycle."""
        return pad_segment(self.cycle_segment(cycle), self.config.length, self.config.sample_rate)

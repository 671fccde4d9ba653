"""What every audio source yields, and the interface they share."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioBlock:
    samples: np.ndarray
    """float32 mono at the device's native rate."""
    sample_rate: int
    timestamp: float
    """Seconds since the source started, of the first sample (concealed gaps included)."""
    gap: bool = False
    """The samples are silence standing in for audio the device sent but that was lost."""
    discontinuity: bool = False
    """The stream restarted (device reset, reconnect of unknown length): the audio before does not join this."""

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[frames] or [frames, channels] to float32 [frames] by averaging the channels."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1, dtype=np.float32) if array.shape[1] > 1 else array[:, 0]
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class Source:
    """A stream of `AudioBlock`s; `stop()` may be called from any thread and ends `blocks()` soon after."""

    name: str
    notes: list[str] = field(default_factory=list)
    """Things the user should know (downmixed, reconnected, ...), in order."""

    def __post_init__(self) -> None:
        self._stop_event = threading.Event()
        self._position = 0.0

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def blocks(self) -> Iterator[AudioBlock]:
        raise NotImplementedError

    def stats(self) -> dict[str, int | float]:
        return {}

    def __iter__(self) -> Iterator[AudioBlock]:
        return self.blocks()

    def _block(self, samples: np.ndarray, rate: int, gap: bool = False, discontinuity: bool = False) -> AudioBlock:
        """A block stamped with the source's running position, which it then advances."""
        block = AudioBlock(to_mono(samples), rate, self._position, gap, discontinuity)
        self._position += len(block.samples) / rate
        return block

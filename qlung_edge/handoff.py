"""Source blocks from the capture thread to the processing thread, handed over when there is work.

A live source delivers a block every 10-100 ms, and waking a thread to take each one costs more CPU than
the signal path spends on it (about 0.2 ms per wake-up on this project's 2-vCPU test VM: futexes, a
halted vCPU woken by an interrupt). The processing thread only has work when a window is due, so it tells
the queue how much audio that takes and sleeps until then; it never waits longer than `max_wait_seconds`
of audio, so the end of an examination (silence) and the live page are at most that late. A control
message goes into the same queue, between the blocks captured before and after it arrived, and is handed
over at once.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from firmware_bridge.blocks import AudioBlock
from qlung_edge.streaming import OUT_OF_RANGE


@dataclass(frozen=True)
class ExamRequest:
    """A control message: start (ending the current one) or stop an examination, at this point of the stream."""

    start: bool
    reason: str
    identifiers: dict[str, str | None] = field(default_factory=dict)


Item = Union[AudioBlock, ExamRequest, None]
"""What the queue carries: audio, a control message, or None for the end of the source."""


class BlockQueue:
    """Bounded: `put` blocks while `capacity` blocks wait (a stalled consumer slows the source down instead of
    growing memory, as before). `None` marks the end of the source."""

    def __init__(self, capacity: int, max_wait_seconds: float = 1.0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.max_wait_seconds = max_wait_seconds
        self._items: deque[Item] = deque()
        self._requests = 0
        self._queued_seconds = 0.0
        self._wanted_seconds = 0.0
        self._condition = threading.Condition()
        self.wakeups = 0
        """How often the consumer was woken with work (a benchmark figure)."""

    def put(self, item: Item) -> None:
        """Queue a block (waiting for room), the end, or a control message (never waits: it comes from a request
        handler, not from the source)."""
        with self._condition:
            while len(self._items) >= self.capacity and not isinstance(item, ExamRequest):
                self._condition.wait()
            self._items.append(item)
            if isinstance(item, AudioBlock):
                self._queued_seconds += item.duration
            elif item is not None:
                self._requests += 1
            if self._ready():
                self._condition.notify_all()

    def get(self, timeout: float, wanted_seconds: float = 0.0) -> list[Item]:
        """The queued items, in order, once `wanted_seconds` of audio (capped at `max_wait_seconds`), a control
        message or the end has queued, or whatever is queued after `timeout` seconds (possibly nothing)."""
        with self._condition:
            self._wanted_seconds = wanted_seconds
            if not self._ready():
                self._condition.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._queued_seconds, self._requests = 0.0, 0
            if items:
                self.wakeups += 1
                self._condition.notify_all()  # a producer waiting for room
            return items

    def _ready(self) -> bool:
        if not self._items:
            return False
        return (
            self._items[-1] is None
            or self._requests > 0
            or self._queued_seconds >= min(self._wanted_seconds, self.max_wait_seconds)
            or len(self._items) * 2 >= self.capacity  # tiny blocks: hand over before the producer must wait
        )


def joined(items: list[Item]) -> list[Item]:
    """Runs of plain blocks (same rate, back to back, neither a gap nor a restart, no NaN) as one block each: the
    signal path gives the same windows for any block sizes, and its fixed cost per call is paid once per run.
    Anything else stays alone and in place: a block with NaN (the path turns exactly that block into a gap), a
    control message, the end."""
    out: list[Item] = []
    run: list[AudioBlock] = []

    def close_run() -> None:
        if len(run) > 1:
            samples = np.concatenate([b.samples for b in run])
            out.append(AudioBlock(samples=samples, sample_rate=run[0].sample_rate, timestamp=run[0].timestamp))
        else:
            out.extend(run)
        run.clear()

    for item in items:
        if not _plain(item):
            close_run()
            out.append(item)
            continue
        assert isinstance(item, AudioBlock)
        if run and (
            item.sample_rate != run[-1].sample_rate or abs(item.timestamp - run[-1].timestamp - run[-1].duration) > 1e-6
        ):
            close_run()
        run.append(item)
    close_run()
    return out


def _plain(item: Item) -> bool:
    return isinstance(item, AudioBlock) and not item.gap and not item.discontinuity and is_clean(item.samples)


def is_clean(samples: np.ndarray) -> bool:
    """No NaN, inf or out-of-range sample (NaN fails the comparison)."""
    return not len(samples) or bool(np.max(np.abs(samples)) <= OUT_OF_RANGE)

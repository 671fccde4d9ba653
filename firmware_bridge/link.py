"""From link frames to a continuous audio timeline: sequence numbers, gaps, duplicates, reordering.

The decoder (`protocol.FrameDecoder`) only knows bytes and CRCs; this knows the stream.
A lost frame becomes silence of the same length flagged `gap`, so the audio after it
stays at the right time and nothing downstream mistakes a splice for a breath.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from firmware_bridge.blocks import AudioBlock, to_mono
from firmware_bridge.protocol import SEQUENCE_MODULO, Frame, FrameDecoder, FrameType, SampleFormat

HALF = SEQUENCE_MODULO // 2


@dataclass
class LinkCounters:
    audio_frames: int = 0
    gaps: int = 0
    """Runs of lost frames that were concealed."""
    lost_frames: int = 0
    concealed_samples: int = 0
    duplicates: int = 0
    reordered: int = 0
    """Frames that arrived after a later one and were put back in order."""
    late: int = 0
    """Frames that arrived after their span had already been concealed: dropped."""
    format_changes: int = 0
    restarts: int = 0
    replies: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LinkReceiver:
    """Feed bytes, get `AudioBlock`s in order; replies to host commands collect in `replies`.

    `reorder_depth` frames may arrive ahead of a missing one before it is declared lost
    (latency vs. repair); a jump of more than `max_gap_seconds` is a device restart, not
    a gap to fill with silence.
    """

    reorder_depth: int = 2
    max_gap_seconds: float = 5.0
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    counters: LinkCounters = field(default_factory=LinkCounters)
    replies: deque[Frame] = field(default_factory=lambda: deque(maxlen=64))
    _expected: int | None = None
    _pending: dict[int, Frame] = field(default_factory=dict)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    _format: tuple[int, SampleFormat | None, int] | None = None
    _frame_samples: int = 0
    _position: float = 0.0
    _discontinuity: bool = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[AudioBlock]:
        out: list[AudioBlock] = []
        for frame in self.decoder.feed(data):
            out.extend(self.accept(frame))
        return out

    def reconnected(self) -> None:
        """The port was closed and opened again: drop the partial frame, keep the timeline."""
        self.decoder.reset()

    def accept(self, frame: Frame) -> list[AudioBlock]:
        if frame.kind is FrameType.REPLY:
            self.counters.replies += 1
            self.replies.append(frame)
            return []
        if frame.kind is not FrameType.AUDIO:
            return []
        self.counters.audio_frames += 1
        sequence = frame.sequence
        if self._expected is None:
            self._expected = sequence
        distance = (sequence - self._expected) % SEQUENCE_MODULO
        out: list[AudioBlock] = []
        if distance == 0:
            if self._pending:
                self.counters.reordered += 1
            out.extend(self._emit(frame))
            out.extend(self._drain())
        elif distance < HALF and distance * max(self._frame_samples, 1) <= self._max_gap_samples(frame):
            if sequence in self._pending:
                self.counters.duplicates += 1
            else:
                self._pending[sequence] = frame
                if len(self._pending) > self.reorder_depth:
                    out.extend(self._give_up_waiting())
        elif sequence in self._recent:
            self.counters.duplicates += 1
        elif distance >= HALF and SEQUENCE_MODULO - distance <= 4 * self.reorder_depth + 64:
            self.counters.late += 1
        else:
            # Too far ahead or far behind: the device restarted or the link was down for long.
            self.counters.restarts += 1
            out.extend(self._flush_pending())
            self._expected = sequence
            self._discontinuity = True
            out.extend(self._emit(frame))
            out.extend(self._drain())
        return out

    def flush(self) -> list[AudioBlock]:
        """End of stream: decode what the decoder still holds, then release frames waiting for a missing one."""
        out: list[AudioBlock] = []
        for frame in self.decoder.flush():
            out.extend(self.accept(frame))
        return out + self._flush_pending()

    def _max_gap_samples(self, frame: Frame) -> float:
        return self.max_gap_seconds * frame.sample_rate

    def _emit(self, frame: Frame) -> list[AudioBlock]:
        fmt = (frame.sample_rate, frame.sample_format, frame.channels)
        if self._format is not None and fmt != self._format:
            self.counters.format_changes += 1
        self._format = fmt
        self._frame_samples = frame.frames
        self._recent.append(frame.sequence)
        self._expected = (frame.sequence + 1) % SEQUENCE_MODULO
        return [self._block(to_mono(frame.samples()), frame.sample_rate, gap=False)]

    def _drain(self) -> list[AudioBlock]:
        out: list[AudioBlock] = []
        while self._expected in self._pending:
            out.extend(self._emit(self._pending.pop(self._expected)))
        return out

    def _give_up_waiting(self) -> list[AudioBlock]:
        assert self._expected is not None
        expected = self._expected
        nearest = min(self._pending, key=lambda s: (s - expected) % SEQUENCE_MODULO)
        lost = (nearest - expected) % SEQUENCE_MODULO
        frame = self._pending.pop(nearest)
        out = self._conceal(lost, frame)
        out.extend(self._emit(frame))
        out.extend(self._drain())
        return out

    def _flush_pending(self) -> list[AudioBlock]:
        out: list[AudioBlock] = []
        while self._pending:
            out.extend(self._give_up_waiting())
        return out

    def _conceal(self, lost: int, next_frame: Frame) -> list[AudioBlock]:
        if lost <= 0:
            return []
        samples = lost * (self._frame_samples or next_frame.frames)
        self.counters.gaps += 1
        self.counters.lost_frames += lost
        self.counters.concealed_samples += samples
        return [self._block(np.zeros(samples, dtype=np.float32), next_frame.sample_rate, gap=True)]

    def _block(self, samples: np.ndarray, rate: int, gap: bool) -> AudioBlock:
        block = AudioBlock(samples, rate, self._position, gap=gap, discontinuity=self._discontinuity)
        self._discontinuity = False
        self._position += len(samples) / rate
        return block

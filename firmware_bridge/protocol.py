"""The stethoscope link protocol: frame layout, CRC, encoder and an incremental decoder.

The byte layout is specified in `PROTOCOL.md` beside this file; `c/qlung_link.h` is the
same layout for firmware. Everything is little-endian. The decoder takes bytes in
whatever chunks the serial port hands over, finds frames again after garbage, and
never returns a frame whose CRC fails.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

SYNC = b"\xa5\x5a"
VERSION = 1
HEADER = struct.Struct("<2sBBHIIBBH")
"""sync, version, frame type, sequence, device time (us), sample rate, format, channels, payload length."""
HEADER_SIZE = HEADER.size  # 18
CRC_SIZE = 2
MAX_PAYLOAD = 4096
MAX_CHANNELS = 8
MAX_SAMPLE_RATE = 192_000
SEQUENCE_MODULO = 1 << 16
TIMESTAMP_MODULO = 1 << 32


class FrameType(IntEnum):
    AUDIO = 1
    COMMAND = 2
    REPLY = 3


class SampleFormat(IntEnum):
    INT16 = 1
    INT24 = 2
    FLOAT32 = 3

    @property
    def width(self) -> int:
        return {SampleFormat.INT16: 2, SampleFormat.INT24: 3, SampleFormat.FLOAT32: 4}[self]


class Command(IntEnum):
    START = 1
    STOP = 2
    SET_GAIN = 3
    QUERY_INFO = 4


class Status(IntEnum):
    OK = 0
    UNKNOWN_COMMAND = 1
    BAD_ARGUMENT = 2
    BUSY = 3


class ProtocolError(ValueError):
    """Samples or fields that cannot be put into a frame."""


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor (check 0x29B1)."""
    return binascii.crc_hqx(data, crc)


@dataclass(frozen=True)
class Frame:
    kind: FrameType
    sequence: int
    timestamp_us: int
    sample_rate: int
    sample_format: SampleFormat | None
    channels: int
    payload: bytes

    @property
    def frames(self) -> int:
        """Samples per channel in an audio frame."""
        if self.kind is not FrameType.AUDIO or self.sample_format is None:
            return 0
        return len(self.payload) // (self.sample_format.width * self.channels)

    def samples(self) -> np.ndarray:
        """Audio payload as float32 [frames, channels] in [-1, 1]."""
        if self.kind is not FrameType.AUDIO or self.sample_format is None:
            raise ProtocolError(f"a {self.kind.name} frame carries no samples")
        return decode_samples(self.payload, self.sample_format, self.channels)


def decode_samples(payload: bytes, sample_format: SampleFormat, channels: int) -> np.ndarray:
    if sample_format is SampleFormat.INT16:
        values = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    elif sample_format is SampleFormat.INT24:
        raw = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        packed = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        values = (np.where(packed >= 1 << 23, packed - (1 << 24), packed)).astype(np.float32) / float(1 << 23)
    else:
        values = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    return values.reshape(-1, channels)


def encode_samples(samples: np.ndarray, sample_format: SampleFormat) -> bytes:
    """float samples [frames] or [frames, channels] (interleaved) to payload bytes; clips to full scale."""
    values = np.asarray(samples, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ProtocolError("samples contain NaN or infinity")
    if sample_format is SampleFormat.FLOAT32:
        return values.astype("<f4").tobytes()
    scale = 32768 if sample_format is SampleFormat.INT16 else 1 << 23
    ints = np.clip(np.round(values * scale), -scale, scale - 1).astype(np.int32)
    if sample_format is SampleFormat.INT16:
        return ints.astype("<i2").tobytes()
    unsigned = (ints & 0xFFFFFF).astype("<u4")
    return unsigned.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def encode_frame(
    kind: FrameType,
    sequence: int,
    payload: bytes,
    timestamp_us: int = 0,
    sample_rate: int = 0,
    sample_format: SampleFormat | int = 0,
    channels: int = 0,
) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    header = HEADER.pack(
        SYNC,
        VERSION,
        int(kind),
        sequence % SEQUENCE_MODULO,
        timestamp_us % TIMESTAMP_MODULO,
        sample_rate,
        int(sample_format),
        channels,
        len(payload),
    )
    body = header[len(SYNC) :] + payload
    return SYNC + body + struct.pack("<H", crc16(body))


def encode_audio(
    samples: np.ndarray,
    sequence: int,
    timestamp_us: int,
    sample_rate: int,
    sample_format: SampleFormat = SampleFormat.INT16,
) -> bytes:
    """One audio frame; `samples` is [frames] (mono) or [frames, channels]."""
    array = np.asarray(samples)
    channels = 1 if array.ndim == 1 else array.shape[1]
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(f"{channels} channels; the link carries 1 to {MAX_CHANNELS}")
    if not 1 <= sample_rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(f"sample rate {sample_rate} Hz out of 1..{MAX_SAMPLE_RATE}")
    payload = encode_samples(array, sample_format)
    return encode_frame(FrameType.AUDIO, sequence, payload, timestamp_us, sample_rate, sample_format, channels)


def max_frames_per_packet(sample_format: SampleFormat, channels: int = 1) -> int:
    return MAX_PAYLOAD // (sample_format.width * channels)


def encode_command(command: Command, sequence: int, argument: bytes = b"") -> bytes:
    return encode_frame(FrameType.COMMAND, sequence, bytes([int(command)]) + argument)


def set_gain_argument(gain_db: float) -> bytes:
    return struct.pack("<f", gain_db)


def encode_reply(command: int, sequence: int, status: Status, data: bytes = b"") -> bytes:
    return encode_frame(FrameType.REPLY, sequence, bytes([int(command) & 0xFF, int(status)]) + data)


@dataclass(frozen=True)
class DeviceInfo:
    sample_rate: int
    sample_format: SampleFormat
    channels: int
    gain_db: float
    name: str

    INFO = struct.Struct("<IBBf")

    def to_bytes(self) -> bytes:
        return (
            self.INFO.pack(self.sample_rate, int(self.sample_format), self.channels, self.gain_db)
            + (self.name.encode("utf-8")[: MAX_PAYLOAD - 2 - self.INFO.size])
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceInfo:
        if len(data) < cls.INFO.size:
            raise ProtocolError(f"device info of {len(data)} bytes, expected at least {cls.INFO.size}")
        rate, fmt, channels, gain = cls.INFO.unpack_from(data)
        return cls(rate, SampleFormat(fmt), channels, gain, data[cls.INFO.size :].decode("utf-8", "replace"))


@dataclass
class DecoderCounters:
    frames: int = 0
    bytes: int = 0
    crc_errors: int = 0
    bad_headers: int = 0
    resyncs: int = 0
    garbage_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _header_problem(version: int, kind: int, fmt: int, channels: int, rate: int, length: int) -> bool:
    if version != VERSION or kind not in (1, 2, 3) or length > MAX_PAYLOAD:
        return True
    if kind != FrameType.AUDIO:
        return False
    if fmt not in (1, 2, 3) or not 1 <= channels <= MAX_CHANNELS or not 1 <= rate <= MAX_SAMPLE_RATE:
        return True
    return length % (SampleFormat(fmt).width * channels) != 0


@dataclass
class FrameDecoder:
    """Incremental: `feed()` any chunk of bytes, get the complete valid frames it finishes.

    A header that cannot be right, or a CRC that fails, costs one byte: the search for
    the next sync word starts just after the bad one, so a corrupted length field never
    swallows the frames behind it.
    """

    counters: DecoderCounters = field(default_factory=DecoderCounters)
    _buffer: bytearray = field(default_factory=bytearray)
    _synced: bool = True

    def reset(self) -> None:
        """Forget a partial frame (the port was closed); counters are kept."""
        self._buffer.clear()
        self._synced = True

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        self.counters.bytes += len(data)
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        start = 0
        end = len(buffer)
        while True:
            position = buffer.find(SYNC, start)
            if position < 0:
                # Keep a trailing first sync byte: the second may come in the next chunk.
                keep = 1 if end > start and buffer[end - 1] == SYNC[0] else 0
                self._skip(end - keep - start)
                start = end - keep
                break
            if position > start:
                self._skip(position - start)
                start = position
            if end - start < HEADER_SIZE:
                break
            _, version, kind, sequence, timestamp, rate, fmt, channels, length = HEADER.unpack_from(buffer, start)
            if _header_problem(version, kind, fmt, channels, rate, length):
                self.counters.bad_headers += 1
                self._skip(1)
                start += 1
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if end - start < total:
                break
            body_end = start + HEADER_SIZE + length
            (expected,) = struct.unpack_from("<H", buffer, body_end)
            if crc16(memoryview(buffer)[start + len(SYNC) : body_end]) != expected:
                self.counters.crc_errors += 1
                self._skip(1)
                start += 1
                continue
            frame_type = FrameType(kind)
            frames.append(
                Frame(
                    kind=frame_type,
                    sequence=sequence,
                    timestamp_us=timestamp,
                    sample_rate=rate,
                    sample_format=SampleFormat(fmt) if frame_type is FrameType.AUDIO else None,
                    channels=channels,
                    payload=bytes(buffer[start + HEADER_SIZE : body_end]),
                )
            )
            self.counters.frames += 1
            self._synced = True
            start += total
        del buffer[:start]
        return frames

    def flush(self) -> list[Frame]:
        """The stream ended: recover frames hidden behind a partial one.

        A corrupted length field can claim bytes that will never come; while the stream flows, more bytes
        arrive, the CRC fails and the search resumes one byte on. At the end nothing more arrives, so the
        partial frame is given up a byte at a time and the rest is searched; what remains is garbage.
        """
        frames = self.feed(b"")
        while self._buffer:
            self._skip(1)
            del self._buffer[:1]
            frames += self.feed(b"")
        return frames

    def _skip(self, count: int) -> None:
        if count <= 0:
            return
        self.counters.garbage_bytes += count
        if self._synced:
            self.counters.resyncs += 1
            self._synced = False

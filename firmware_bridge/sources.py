"""Audio sources behind one interface: `mic:`, `serial:`, `file:` and `stdin:`.

Each yields `AudioBlock`s of float32 mono at the device's native rate (resampling is
the consumer's job, so nothing here guesses a rate) and ends soon after `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from firmware_bridge.blocks import AudioBlock, Source
from firmware_bridge.link import LinkReceiver
from firmware_bridge.protocol import (
    Command,
    DeviceInfo,
    ProtocolError,
    SampleFormat,
    Status,
    decode_samples,
    encode_command,
)
from qlung_edge.audio import audio_info
from qlung_edge.errors import AudioFileError, QLungError

DEFAULT_BLOCK_SECONDS = 0.1
PACE_SLICE = 0.1
"""A paced file source sleeps at most this long at a time, so that a stop is seen this soon."""


class SourceError(QLungError):
    """A source that cannot be opened or read, named by its spec."""


@dataclass
class FileSource(Source):
    """A recording, as fast as it can be read or paced like a live device (`realtime`)."""

    path: Path = Path()
    realtime: bool = False
    speed: float = 1.0
    block_seconds: float = DEFAULT_BLOCK_SECONDS

    def __post_init__(self) -> None:
        super().__post_init__()
        self.info = audio_info(self.path)
        if self.info.frames == 0:
            raise AudioFileError("holds no audio samples", path=self.path)
        if self.info.truncated:
            self.notes.append(
                f"{self.path}: truncated, header declares {self.info.declared_frames} frames, file holds "
                f"{self.info.frames}: streaming what is there"
            )
        if self.info.channels > 1:
            self.notes.append(f"{self.path}: {self.info.channels} channels, averaged to mono")
        self.frames_read = 0

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def live(self) -> bool:
        """Paced like a device; read as fast as possible, a file can wait for its reader."""
        return self.realtime

    def blocks(self) -> Iterator[AudioBlock]:
        import soundfile as sf

        rate = self.info.sample_rate
        size = max(1, round(self.block_seconds * rate))
        started = time.monotonic()
        try:
            with sf.SoundFile(str(self.path)) as handle:
                # Decoded a second or more at a time, handed out a block at a time: libsndfile's cost is per call.
                for chunk in handle.blocks(blocksize=size * max(1, round(rate / size)), dtype="float32",
                                           always_2d=True):  # fmt: skip
                    finite = np.isfinite(chunk).all(axis=1)
                    bad_from = len(chunk) if finite.all() else int(np.argmin(finite)) // size * size
                    for first in range(0, len(chunk), size):
                        if self.stopped:
                            return
                        if first >= bad_from:  # the blocks before it were delivered, as they would have been live
                            at = (self.frames_read + int(np.argmin(finite[first:]))) / rate
                            raise AudioFileError(f"NaN or infinite samples near {at:.2f} s", path=self.path)
                        data = chunk[first : first + size]
                        if self.realtime and self._pace(started + self.frames_read / rate / self.speed):
                            return
                        self.frames_read += len(data)
                        yield self._block(data, rate)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioFileError(f"cannot decode samples ({err})", path=self.path) from err

    def _pace(self, due: float) -> bool:
        """Sleep until `due` (time.monotonic()); True if stopped meanwhile. time.sleep rather than the stop
        event's wait: a timed Event.wait costs about 1.6x the CPU of a sleep (measured here, 126 vs 78 us each),
        paid once a block; a stop is then seen within one block or PACE_SLICE, whichever is shorter."""
        while not self.stopped:
            left = due - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, PACE_SLICE))
        return True

    def stats(self) -> dict[str, int | float]:
        return {"frames_read": self.frames_read}


STDIN_FORMATS = {"s16le": SampleFormat.INT16, "s24le": SampleFormat.INT24, "f32le": SampleFormat.FLOAT32}


@dataclass
class StdinSource(Source):
    """Raw little-endian PCM (`arecord -t raw -f S16_LE`, `sox -t raw`, a pipe from firmware tools)."""

    sample_rate: int = 0
    sample_format: str = "s16le"
    channels: int = 1
    stream: BinaryIO | None = None
    block_seconds: float = DEFAULT_BLOCK_SECONDS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_rate <= 0:
            raise SourceError("raw PCM needs its sample rate (rate=HZ)", path=self.name)
        if self.sample_format not in STDIN_FORMATS:
            raise SourceError(f"format {self.sample_format!r}; one of {', '.join(STDIN_FORMATS)}", path=self.name)
        if not 1 <= self.channels <= 8:
            raise SourceError(f"{self.channels} channels; 1 to 8", path=self.name)
        self.bytes_read = 0

    def blocks(self) -> Iterator[AudioBlock]:
        fmt = STDIN_FORMATS[self.sample_format]
        frame_bytes = fmt.width * self.channels
        want = max(1, round(self.block_seconds * self.sample_rate)) * frame_bytes
        stream = self.stream if self.stream is not None else sys.stdin.buffer
        fileno = _fileno(stream)
        pending = b""
        while not self.stopped:
            if fileno is not None:
                ready, _, _ = select.select([fileno], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(fileno, want)
            else:
                chunk = stream.read(want)
            if not chunk:
                break
            self.bytes_read += len(chunk)
            pending += chunk
            whole = len(pending) - len(pending) % frame_bytes
            if whole:
                data, pending = pending[:whole], pending[whole:]
                yield self._block(decode_samples(data, fmt, self.channels), self.sample_rate)
        if pending:
            self.notes.append(f"{self.name}: stream ended inside a sample frame; {len(pending)} bytes left over")

    def stats(self) -> dict[str, int | float]:
        return {"bytes_read": self.bytes_read}


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


@dataclass
class MicSource(Source):
    """A line-in or USB sound card through PortAudio, opened at the device's own rate.

    The PortAudio callback only copies into a bounded buffer. When the consumer falls
    so far behind that the buffer is full, the incoming audio cannot be kept; its
    length is remembered and comes out as a flagged gap at the right place.
    """

    device: str | int | None = None
    sample_rate: int | None = None
    channels: int = 1
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    buffer_seconds: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            import sounddevice as sd
        except (ImportError, OSError) as err:
            problem = f"sounddevice/PortAudio unavailable ({err}); pip install qlung-edge[mic]"
            raise SourceError(problem, path=self.name) from err
        self._sd = sd
        self.device_index = find_input_device(self.device, self.name)
        info = sd.query_devices(self.device_index)
        self.device_name = str(info["name"])
        if self.sample_rate is None:
            self.sample_rate = int(info["default_samplerate"])
        if self.channels > int(info["max_input_channels"]):
            raise SourceError(f"{self.device_name} has {info['max_input_channels']} input channels", path=self.name)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._chunks: list[list[Any]] = []
        self._capacity = max(2, round(self.buffer_seconds / self.block_seconds))
        self.callbacks = 0
        self.overflow_blocks = 0
        self.lost_samples = 0
        self.portaudio_overflows = 0

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.portaudio_overflows += 1
        self.callbacks += 1
        with self._lock:
            if len(self._chunks) < self._capacity:
                self._chunks.append([indata.copy(), 0])
            elif self._chunks:
                self._chunks[-1][1] += frames
                self.overflow_blocks += 1
                self.lost_samples += frames
        self._ready.set()

    def blocks(self) -> Iterator[AudioBlock]:
        rate = int(self.sample_rate or 0)
        try:
            stream = self._sd.InputStream(
                device=self.device_index,
                samplerate=rate,
                channels=self.channels,
                dtype="float32",
                blocksize=max(1, round(self.block_seconds * rate)),
                callback=self._callback,
            )
        except self._sd.PortAudioError as err:
            raise SourceError(f"cannot open {self.device_name} at {rate} Hz ({err})", path=self.name) from err
        with stream:
            while not self.stopped:
                self._ready.wait(0.1)
                with self._lock:
                    chunks, self._chunks = self._chunks, []
                    self._ready.clear()
                for data, lost_after in chunks:
                    yield self._block(data, rate)
                    if lost_after:
                        yield self._block(np.zeros(lost_after, np.float32), rate, gap=True)
                if not stream.active and not self._chunks:
                    raise SourceError(f"{self.device_name} stopped delivering audio (unplugged?)", path=self.name)

    def stats(self) -> dict[str, int | float]:
        return {
            "callbacks": self.callbacks,
            "overflow_blocks": self.overflow_blocks,
            "lost_samples": self.lost_samples,
            "portaudio_overflows": self.portaudio_overflows,
        }


def find_input_device(device: str | int | None, spec: str = "mic:") -> int:
    """Index of an input device given by index, exact name or unique part of a name."""
    import sounddevice as sd

    devices = list(sd.query_devices())
    inputs = [i for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if device is None or device == "":
        default = sd.default.device[0]
        if default is None or default < 0:
            if not inputs:
                raise SourceError("no audio input device", path=spec)
            return inputs[0]
        return int(default)
    if isinstance(device, int) or str(device).isdigit():
        index = int(device)
        if index not in inputs:
            raise SourceError(f"no input device with index {index}; inputs: {_names(devices, inputs)}", path=spec)
        return index
    exact = [i for i in inputs if devices[i]["name"] == device]
    if exact:
        return exact[0]
    matches = [i for i in inputs if str(device).lower() in devices[i]["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several input devices" if matches else "matches no input device"
    raise SourceError(f"{device!r} {problem}; inputs: {_names(devices, inputs)}", path=spec)


def _names(devices: list[Any], indices: list[int]) -> str:
    return ", ".join(f"{i}: {devices[i]['name']}" for i in indices) or "none"


@dataclass
class SerialSource(Source):
    """A stethoscope streaming the link protocol over USB-CDC or a UART (any pyserial URL).

    When the port goes away (cable pulled, device reset) it is reopened every
    `reconnect_seconds` until `stop()`; frames decoded before stay delivered, and the
    receiver conceals the outage from the device's sequence numbers when it can.
    """

    port: str = ""
    baudrate: int = 921_600
    reconnect_seconds: float = 0.5
    send_start: bool = True
    read_timeout: float = 0.05
    receiver: LinkReceiver = field(default_factory=LinkReceiver)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            import serial
        except ImportError as err:
            raise SourceError("pyserial is not installed; pip install qlung-edge[serial]", path=self.name) from err
        self._serial = serial
        self._handle: Any = None
        self._command_sequence = 0
        self.connects = 0
        self.disconnects = 0
        self.device_info: DeviceInfo | None = None

    def _open(self) -> bool:
        try:
            handle = self._serial.serial_for_url(
                self.port, baudrate=self.baudrate, timeout=self.read_timeout, exclusive=True
            )
        except (self._serial.SerialException, OSError, ValueError):
            return False
        self._handle = handle
        self.connects += 1
        if self.connects > 1:
            self.notes.append(f"{self.name}: reconnected ({self.connects - 1} time(s))")
        if self.send_start:
            self.send(Command.QUERY_INFO)
            self.send(Command.START)
        return True

    def _close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(self._serial.SerialException, OSError):
                self._handle.close()
        self._handle = None

    def send(self, command: Command, argument: bytes = b"") -> None:
        """Write a host command; its reply arrives in `receiver.replies`."""
        if self._handle is None:
            raise SourceError("not connected", path=self.name)
        self._command_sequence = (self._command_sequence + 1) % 65536
        self._handle.write(encode_command(command, self._command_sequence, argument))

    def blocks(self) -> Iterator[AudioBlock]:
        if not self._open():
            raise SourceError(f"cannot open {self.port}", path=self.name)
        try:
            while not self.stopped:
                if self._handle is None and not self._open():
                    self._stop_event.wait(self.reconnect_seconds)
                    continue
                try:
                    data = self._handle.read(max(1, self._handle.in_waiting))
                except (self._serial.SerialException, OSError) as err:
                    self.disconnects += 1
                    self.notes.append(f"{self.name}: disconnected ({err.__class__.__name__}); reconnecting")
                    self._close()
                    self.receiver.reconnected()
                    continue
                if data:
                    yield from self.receiver.feed(data)
                    self._read_replies()
            yield from self.receiver.flush()
        finally:
            if self._handle is not None and self.send_start:
                with contextlib.suppress(self._serial.SerialException, OSError, SourceError):
                    self.send(Command.STOP)
            self._close()

    def _read_replies(self) -> None:
        while self.receiver.replies:
            reply = self.receiver.replies.popleft()
            if len(reply.payload) >= 2 and reply.payload[0] == Command.QUERY_INFO and reply.payload[1] == Status.OK:
                try:
                    self.device_info = DeviceInfo.from_bytes(reply.payload[2:])
                except (ProtocolError, ValueError):
                    self.notes.append(f"{self.name}: unreadable device info reply")

    def stats(self) -> dict[str, int | float]:
        return {
            "connects": self.connects,
            "disconnects": self.disconnects,
            **{f"decoder_{k}": v for k, v in self.receiver.decoder.counters.as_dict().items()},
            **self.receiver.counters.as_dict(),
        }


SOURCE_KINDS = ("mic", "serial", "file", "stdin")


def open_source(spec: str, **options: Any) -> Source:
    """`mic:[DEVICE]`, `serial:PORT`, `file:PATH`, `stdin:` (options: rate, format, channels, realtime, ...)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        raise SourceError(f"unknown source; use one of {', '.join(k + ':' for k in SOURCE_KINDS)}", path=spec)
    if kind == "file":
        if not rest:
            raise SourceError("file: needs a path", path=spec)
        keys = {"realtime", "speed", "block_seconds"}
        return FileSource(name=spec, path=Path(rest), **_pick(options, keys, spec))
    if kind == "stdin":
        picked = _pick(options, {"rate", "format", "channels", "stream", "block_seconds"}, spec)
        if "rate" in picked:
            picked["sample_rate"] = int(picked.pop("rate"))
        if "format" in picked:
            picked["sample_format"] = picked.pop("format")
        return StdinSource(name=spec, **picked)
    if kind == "mic":
        device: str | int | None = rest or None
        picked = _pick(options, {"rate", "channels", "block_seconds", "buffer_seconds"}, spec)
        if "rate" in picked:
            picked["sample_rate"] = int(picked.pop("rate"))
        return MicSource(name=spec, device=device, **picked)
    if not rest:
        raise SourceError("serial: needs a port, e.g. serial:/dev/ttyACM0", path=spec)
    keys = {"baudrate", "reconnect_seconds", "send_start", "read_timeout", "receiver"}
    return SerialSource(name=spec, port=rest, **_pick(options, keys, spec))


def _pick(options: dict[str, Any], allowed: set[str], spec: str) -> dict[str, Any]:
    unknown = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if unknown:
        raise SourceError(f"option(s) {', '.join(unknown)} do not apply to this source", path=spec)
    return {k: v for k, v in options.items() if v is not None and k in allowed}

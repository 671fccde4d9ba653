"""A stethoscope on a pseudo-terminal: streams a recording through the link protocol.

It behaves like firmware on USB-CDC: waits for START (unless `autostart`), answers
host commands, keeps its own sample clock, and can be told to lose, duplicate,
reorder or corrupt frames, deliver them with jitter, or be unplugged for a while.
The port is reached through a symlink that survives unplugging, like /dev/serial/by-id.
"""

from __future__ import annotations

import array
import fcntl
import math
import os
import random
import select
import shutil
import struct
import tempfile
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.protocol import (
    Command,
    DeviceInfo,
    FrameDecoder,
    FrameType,
    SampleFormat,
    Status,
    encode_audio,
    encode_reply,
    max_frames_per_packet,
)
from qlung_edge.audio import read_audio
from qlung_edge.errors import QLungError

SUBTYPE_FORMATS = {"PCM_16": SampleFormat.INT16, "PCM_24": SampleFormat.INT24}


@dataclass(frozen=True)
class Impairments:
    bit_error_rate: float = 0.0
    """Probability that any one bit of the byte stream is flipped."""
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    """Probability that a frame is held back and sent after the next one."""
    garbage_rate: float = 0.0
    """Probability of 1-64 random bytes before a frame (line noise, a debug print)."""
    jitter_ms: float = 0.0
    """Extra random delay per frame, uniform in [0, jitter_ms]: bursty delivery."""


@dataclass
class SimulatorCounters:
    frames: int = 0
    """Frames the device produced (sent or not)."""
    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    """Frames with at least one flipped bit."""
    garbage_bursts: int = 0
    lost_unplugged: int = 0
    overruns: int = 0
    """Frames cut short because nobody read the port."""
    unplugs: int = 0
    commands: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class DeviceSimulator:
    wav: Path
    link: Path | None = None
    frame_samples: int = 256
    speed: float = 1.0
    """Multiple of real time; 0 streams as fast as the reader takes it."""
    loop: bool = False
    autostart: bool = False
    impairments: Impairments = field(default_factory=Impairments)
    seed: int = 0
    name: str = "qlung-edge simulated stethoscope"
    counters: SimulatorCounters = field(default_factory=SimulatorCounters)

    def __post_init__(self) -> None:
        import soundfile as sf

        if not isinstance(self.frame_samples, int) or self.frame_samples < 1:
            raise QLungError(
                f"frame samples must be a positive whole number, got {self.frame_samples!r}", path=self.wav
            )
        if not (self.speed >= 0 and math.isfinite(self.speed)):
            raise QLungError(f"speed must be 0 (as fast as read) or a positive multiple, got {self.speed!r}",
                             path=self.wav)  # fmt: skip
        audio = read_audio(self.wav)
        info = sf.info(str(self.wav))
        self.sample_rate = audio.sample_rate
        self.sample_format = SUBTYPE_FORMATS.get(str(info.subtype), SampleFormat.FLOAT32)
        self.samples = audio.samples
        self.frame_samples = min(self.frame_samples, max_frames_per_packet(self.sample_format))
        self.gain_db = 0.0
        self.streaming = self.autostart
        self._random = random.Random(self.seed)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._unplug_until = 0.0
        self._lock = threading.Lock()
        self._master = -1
        self._slave = -1
        self._thread: threading.Thread | None = None
        self._decoder = FrameDecoder()
        self._held: bytes | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="qlung-sim-"))
        if self.link is None:
            self.link = self._folder / "stethoscope"
        self._plug_in()

    @property
    def path(self) -> Path:
        assert self.link is not None
        return self.link

    @property
    def tty(self) -> str:
        return os.ttyname(self._slave)

    def _plug_in(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        link = self.path
        temporary = link.with_name(link.name + ".new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.ttyname(slave))
        temporary.replace(link)

    def _pull_plug(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self.counters.unplugs += 1

    def start(self) -> DeviceSimulator:
        self._thread = threading.Thread(target=self._run, name="device-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_seconds: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._master >= 0:
            self._drain(drain_seconds)
            self._pull_plug()
            self.counters.unplugs -= 1
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self._folder, ignore_errors=True)  # the default link's temporary folder

    def _drain(self, seconds: float) -> None:
        """Wait (bounded) until the host has read what was sent: closing a pty discards its unread input."""
        deadline = time.monotonic() + seconds
        unread = array.array("i", [0])
        while time.monotonic() < deadline:
            try:
                fcntl.ioctl(self._slave, termios.FIONREAD, unread, True)
            except OSError:
                return
            if unread[0] == 0:
                return
            time.sleep(0.01)

    def unplug(self, seconds: float) -> None:
        """Pull the cable now and plug it back after `seconds` (device time keeps running)."""
        with self._lock:
            self._unplug_until = time.monotonic() + seconds

    def wait(self, timeout: float | None = None) -> bool:
        """True once the whole recording has been produced (never, with `loop`)."""
        return self._done.wait(timeout)

    def __enter__(self) -> DeviceSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        sequence = 0
        position = 0
        started: float | None = None
        total = len(self.samples)
        while not self._stop.is_set():
            with self._lock:
                unplugged = time.monotonic() < self._unplug_until
            if unplugged and self._master >= 0:
                self._pull_plug()
            elif not unplugged and self._master < 0:
                self._plug_in()
            if self._master >= 0:
                self._serve_commands()
            if not self.streaming:
                self._stop.wait(0.01)
                started = None
                continue
            if position >= total:
                if not self.loop:
                    self._flush_held()
                    self._done.set()
                    self._stop.wait(0.01)
                    continue
                position = 0
                started = None  # pace the next pass from now, not from the first pass's start
            if started is None:
                started = time.monotonic() - position / self.sample_rate / max(self.speed, 1e-9)
            chunk = self.samples[position : position + self.frame_samples] * 10 ** (self.gain_db / 20)
            frame = encode_audio(
                np.clip(chunk, -1.0, 1.0),
                sequence,
                round(position / self.sample_rate * 1e6),
                self.sample_rate,
                self.sample_format,
            )
            position += len(chunk)
            number, sequence = sequence, sequence + 1
            self.counters.frames += 1
            if self.speed > 0:
                due = started + position / self.sample_rate / self.speed
                jitter = self._random.uniform(0, self.impairments.jitter_ms) / 1000
                self._stop.wait(max(0.0, due + jitter - time.monotonic()))
            if self._master < 0:
                self.counters.lost_unplugged += 1
            else:
                self._send_impaired(frame, number)
            if position >= total and not self.loop:  # done now: a STOP from the host may come before the next turn
                self._flush_held()
                self._done.set()

    def _send_impaired(self, frame: bytes, number: int) -> None:
        imp = self.impairments
        # Each frame's fate depends on the seed and its number alone: drawn from one running generator, the frames
        # after an unplug would meet other fates depending on how many fell into it, i.e. on timing and load.
        rnd = random.Random(f"{self.seed}/{number}")
        if rnd.random() < imp.drop_rate:
            self.counters.dropped += 1
            return
        copies = 2 if rnd.random() < imp.duplicate_rate else 1
        self.counters.duplicated += copies - 1
        for _ in range(copies):
            data = bytearray(frame)
            if imp.bit_error_rate > 0:
                flips = np.random.default_rng(rnd.getrandbits(32)).binomial(len(data) * 8, imp.bit_error_rate)
                for bit in rnd.sample(range(len(data) * 8), min(flips, len(data) * 8)):
                    data[bit // 8] ^= 1 << (bit % 8)
                self.counters.corrupted += flips > 0
            if rnd.random() < imp.garbage_rate:
                self.counters.garbage_bursts += 1
                data[:0] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64)))
            if self._held is None and rnd.random() < imp.reorder_rate:
                self._held = bytes(data)
                self.counters.reordered += 1
                continue
            self._write(bytes(data))
            self.counters.sent += 1
            self._flush_held()

    def _flush_held(self) -> None:
        if self._held is not None and self._master >= 0:
            held, self._held = self._held, None
            self._write(held)
            self.counters.sent += 1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 0.5
        while view and self._master >= 0:
            try:
                written = os.write(self._master, view)
                view = view[written:]
            except BlockingIOError:
                if time.monotonic() > deadline or self._stop.is_set():
                    self.counters.overruns += 1
                    return
                select.select([], [self._master], [], 0.05)
            except OSError:
                return

    def _serve_commands(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        for frame in self._decoder.feed(data):
            if frame.kind is FrameType.COMMAND and frame.payload:
                self.counters.commands += 1
                self._write(self._answer(frame.payload[0], frame.payload[1:], frame.sequence))

    def _answer(self, command: int, argument: bytes, sequence: int) -> bytes:
        if command == Command.START:
            self.streaming = True
        elif command == Command.STOP:
            self.streaming = False
        elif command == Command.SET_GAIN:
            if len(argument) != 4:
                return encode_reply(command, sequence, Status.BAD_ARGUMENT)
            (gain,) = struct.unpack("<f", argument)
            if not -40.0 <= gain <= 40.0:
                return encode_reply(command, sequence, Status.BAD_ARGUMENT)
            self.gain_db = gain
        elif command == Command.QUERY_INFO:
            info = DeviceInfo(self.sample_rate, self.sample_format, 1, self.gain_db, self.name)
            return encode_reply(command, sequence, Status.OK, info.to_bytes())
        else:
            return encode_reply(command, sequence, Status.UNKNOWN_COMMAND)
        return encode_reply(command, sequence, Status.OK)

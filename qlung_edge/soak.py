"""The soak benchmark: the daemon for N minutes of accelerated audio while everything around it misbehaves.

A simulated stethoscope on a pseudo-terminal (drops, duplicates, reorders, bit errors, line noise, an unplug
every audio minute), a private mosquitto stopped for a second every `broker_every` seconds of wall time
(default: every audio minute), a bundle reload (SIGHUP) every audio minute and a JSONL file whose disk is full
for a third of every audio minute. The file and the broker sinks both have an on-disk spool. At the end the
books must balance: windows cut = classified + gated + dropped, and every event produced reaches every sink
(a listener subscribed to the broker counts what arrives).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("qlung_edge.soak")


@dataclass
class SoakReport:
    audio_minutes: float
    wall_seconds: float
    device: dict[str, int]
    samples: int
    """Samples the daemon took in at the device's rate, concealed gaps included."""
    samples_expected: int
    """Every frame the device produced, in samples. The receiver conceals what it sees missing from the frame
    sequence (dropped, corrupted) as silence; an outage longer than its `max_gap_seconds` (5 s of audio, so an
    unplug at high speed) is a restart instead, not concealed: only frames lost while unplugged, or sent before
    the host opened the port again (it retries every `reconnect_seconds` of wall time), may be missing."""
    samples_lost_unplugged: int
    samples_reconnect_allowance: int
    """Per unplug, what the device sends in the host's reconnect wait (plus 0.25 s): the bound on the rest."""
    windows: int
    classified: int
    gated: int
    dropped: int
    events: int
    """Events the daemon produced (its last sequence number + 1)."""
    delivered: dict[str, int]
    """Distinct events that arrived, per sink (mqtt: at a listener subscribed to the broker)."""
    broker_acknowledged: int
    """Events the broker acknowledged to the daemon's MQTT sink (QoS 1)."""
    missing: dict[str, list[int]]
    """Sequence numbers that did not arrive, per sink (the first 20)."""
    sink_dropped: dict[str, int]
    reloads: int
    unplugs: int
    broker_restarts: int
    disk_full_seconds: float
    jsonl_spooled_max: int
    """Most events the JSONL sink's spool held at once (while its disk was full): the fault took effect."""
    rss_mb: list[float] = field(default_factory=list)
    """Resident memory at the start and after every audio minute."""
    exit_status: int = 0

    @property
    def balanced(self) -> bool:
        return self.windows == self.classified + self.gated + self.dropped

    @property
    def samples_accounted(self) -> bool:
        missing = self.samples_expected - self.samples
        return 0 <= missing <= self.samples_lost_unplugged + self.samples_reconnect_allowance

    @property
    def nothing_lost(self) -> bool:
        return all(n == self.events for n in self.delivered.values())

    def lines(self) -> list[str]:
        device = self.device
        return [
            f"{self.audio_minutes:.1f} min of audio in {self.wall_seconds:.0f} s; exit status {self.exit_status}",
            f"device frames {device['frames']}: sent {device['sent']}, dropped {device['dropped']}, duplicated "
            f"{device['duplicated']}, reordered {device['reordered']}, corrupted {device['corrupted']}, lost while "
            f"unplugged {device['lost_unplugged']}",
            f"samples in {self.samples} of {self.samples_expected} the device produced; the "
            f"{self.samples_expected - self.samples} missing are within the {self.samples_lost_unplugged} unplugged "
            f"+ {self.samples_reconnect_allowance} sent before the host reconnected"
            + ("" if self.samples_accounted else " (NOT ACCOUNTED FOR)"),
            f"windows cut {self.windows} = classified {self.classified} + gated {self.gated} + dropped {self.dropped}"
            f" ({'balanced' if self.balanced else 'NOT BALANCED'})",
            f"events produced {self.events}; delivered "
            + ", ".join(f"{k} {v} (dropped {self.sink_dropped.get(k, 0)})" for k, v in self.delivered.items())
            + (" (nothing lost)" if self.nothing_lost else f" (EVENTS LOST: {self.missing})")
            + f"; the broker acknowledged {self.broker_acknowledged}",
            f"reloads {self.reloads}, unplugs {self.unplugs}, broker restarts {self.broker_restarts}, disk full "
            f"{self.disk_full_seconds:.0f} s of wall time (the JSONL spool held up to {self.jsonl_spooled_max} events)",
            "RSS MB by audio minute: " + " ".join(f"{v:.0f}" for v in self.rss_mb),
        ]

    def to_dict(self) -> dict[str, Any]:
        checks = {
            "balanced": self.balanced,
            "nothing_lost": self.nothing_lost,
            "samples_accounted": self.samples_accounted,
        }
        return {**asdict(self), **checks}


def rss_mb() -> float:
    """Resident memory now (not the peak): a leak shows as growth from minute to minute."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    return float("nan")


class PrivateBroker:
    """A mosquitto of our own on a free loopback port, with persistence, that can be stopped and started."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise RuntimeError("mosquitto is not installed (scripts/setup.sh installs it)")
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            # As root, mosquitto would switch to its own user, which cannot write in our private folder: its
            # persistence (sessions kept across a restart) would silently be off.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder / 'data'}/\nautosave_interval 1\nmax_queued_messages 0\n"
            f"log_dest file {folder / 'mosquitto.log'}\nlog_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._restarting = threading.Lock()
        self._closed = False

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self, down_seconds: float) -> None:
        """Stop, wait, start; skipped while another restart runs, and never after `close()`."""
        if not self._restarting.acquire(blocking=False):
            return
        try:
            with self._lock:
                if self._closed:
                    return
                self.stop()
            time.sleep(down_seconds)
            with self._lock:
                if self._closed:
                    return
                self.start()
                self.restarts += 1
        finally:
            self._restarting.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.stop()


class Listener:
    """Subscribes to every event topic and keeps the distinct sequence numbers that arrived."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.seen: set[int] = set()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {"client_id": "soak-listener", "clean_session": False}
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
            kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
        self.client = mqtt.Client(**kwargs)
        self.connects = 0
        self.client.on_connect = lambda c, u, f, rc, p=None: self._on_connect(c, f"{prefix}/#")
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, topic: str) -> None:
        self.connects += 1
        client.subscribe(topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith(("/status", "/command/reply")):
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seq = int(json.loads(message.payload)["seq"])
            with self._lock:
                self.seen.add(seq)

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_soak(
    bundle: Path,
    wav: Path,
    minutes: float,
    speed: float = 20.0,
    broker_every: float | None = None,
    log_line: Callable[[str], None] = print,
) -> SoakReport:
    """Run the daemon in this process for `minutes` of audio streamed at `speed` × real time."""
    from firmware_bridge.simulator import DeviceSimulator, Impairments
    from firmware_bridge.sources import open_source
    from qlung_edge.daemon import Daemon, DaemonConfig
    from qlung_edge.sinks import CollectSink, open_sink

    folder = Path(tempfile.mkdtemp(prefix="qlung-soak-"))
    broker = PrivateBroker(folder / "broker")
    broker.start()
    listener = Listener(broker.port, "soak")
    impairments = Impairments(
        bit_error_rate=2e-6, drop_rate=0.005, duplicate_rate=0.005, reorder_rate=0.005, garbage_rate=0.002
    )
    device = DeviceSimulator(wav, speed=speed, loop=True, impairments=impairments, seed=7).start()
    events = folder / "events.jsonl"
    (folder / "events.real.jsonl").touch()
    events.symlink_to(folder / "events.real.jsonl")
    collect = CollectSink()
    jsonl = open_sink(f"jsonl:{events}?spool={folder / 'spool-jsonl'}")
    mqtt = open_sink(
        f"mqtt://127.0.0.1:{broker.port}/soak?client_id=soak-daemon&reconnect=2&spool={folder / 'spool-mqtt'}"
    )
    config = DaemonConfig(bundle=bundle, source=f"serial:{device.path}", sinks=[], stream_name="soak")
    source = open_source(config.source)
    reconnect_seconds = float(getattr(source, "reconnect_seconds", 0.5))
    daemon = Daemon(config, source=source, sinks=[collect, jsonl, mqtt])
    audio_minute = 60.0 / speed
    broker_every = broker_every or audio_minute
    total = minutes * audio_minute
    marks = {"reloads": 0, "unplugs": 0, "disk_full": 0.0, "full_since": 0.0, "spooled": 0}
    memory = [rss_mb()]
    stop_chaos = threading.Event()

    def disk(full: bool) -> None:
        """Swap the link in one rename: an unlink-then-link leaves a moment in which the sink's next append
        creates a plain events.jsonl and the swap fails."""
        swap = folder / "events.swap"
        swap.unlink(missing_ok=True)
        swap.symlink_to("/dev/full" if full else folder / "events.real.jsonl")
        swap.replace(events)

    chaos_errors: list[BaseException] = []

    def chaos() -> None:
        """A fault in the chaos itself stops the daemon and fails the soak at once instead of leaving it running."""
        try:
            inject_faults()
        except BaseException as error:  # handed to the main thread, re-raised there
            chaos_errors.append(error)
            daemon.stop()

    def inject_faults() -> None:
        """One audio minute: unplug at 10 %, disk full from 30 % to 63 %, SIGHUP at 70 %; the broker restarts on
        its own wall clock."""
        started = time.monotonic()
        next_broker = started + broker_every
        minute = 0
        while not stop_chaos.is_set():
            now = time.monotonic()
            if now - started >= total:
                break
            at = ((now - started) % audio_minute) / audio_minute
            step = int((now - started) // audio_minute)
            if step != minute:
                minute = step
                memory.append(rss_mb())
                windows = daemon.metrics.snapshot()["counts"].get("windows", 0)
                log_line(f"audio minute {minute}: RSS {memory[-1]:.0f} MB, windows {windows}, events {daemon._seq}, "
                         f"at the listener {listener.count()}")  # fmt: skip
            if at >= 0.1 and marks["unplugs"] <= minute:
                device.unplug(0.3)
                marks["unplugs"] += 1
            marks["spooled"] = max(marks["spooled"], jsonl.health().buffered)
            if 0.3 <= at < 0.63 and events.resolve() != Path("/dev/full"):
                disk(True)
                marks["full_since"] = time.monotonic()
            if at >= 0.63 and events.resolve() == Path("/dev/full"):
                disk(False)
                marks["disk_full"] += time.monotonic() - marks["full_since"]
            if at >= 0.7 and marks["reloads"] <= minute:
                os.kill(os.getpid(), signal.SIGHUP)
                marks["reloads"] += 1
            if now >= next_broker:  # in its own thread: the faults above keep their audio-time schedule
                threading.Thread(target=broker.restart, args=(1.0,), name="soak-broker", daemon=True).start()
                next_broker = now + broker_every
            time.sleep(0.02)
        if events.resolve() == Path("/dev/full"):
            disk(False)
            marks["disk_full"] += time.monotonic() - marks["full_since"]
        device.stop()  # the stethoscope goes quiet; what is still on its way is taken in before the stop
        seen = -1
        while (now_seen := daemon.metrics.snapshot()["counts"].get("samples", 0)) != seen:
            seen = now_seen
            time.sleep(1.0)
        daemon.stop()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    daemon.install_signal_handlers()
    started = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, name="soak-chaos", daemon=True)
    try:
        assert listener.subscribed.wait(10), "the listener could not subscribe"
        chaos_thread.start()
        status = daemon.run()
        stop_chaos.set()
        chaos_thread.join(30)
        if chaos_errors:
            raise RuntimeError(f"the soak's fault injection failed: {chaos_errors[0]!r}") from chaos_errors[0]
        produced = daemon._seq
        _wait_until(lambda: listener.count() >= produced, 30)
    finally:
        stop_chaos.set()
        for number, handler in previous.items():
            signal.signal(number, handler)
        device.stop()
        listener.close()
        broker.close()
    wall = time.monotonic() - started
    memory.append(rss_mb())
    written = {json.loads(line)["seq"] for line in (folder / "events.real.jsonl").read_text().splitlines() if line}
    counts = daemon.counts()
    collected = {e["seq"] for e in collect.events}
    statuses = [e["status"] for e in collect.events if e["type"] == "window"]
    device_counts = device.counters.as_dict()
    streamed = device_counts["frames"] * device.frame_samples
    report = SoakReport(
        audio_minutes=counts.get("samples", 0) / device.sample_rate / 60,
        wall_seconds=wall,
        device=device_counts,
        samples=int(counts.get("samples", 0)),
        samples_expected=streamed,
        samples_lost_unplugged=device_counts["lost_unplugged"] * device.frame_samples,
        samples_reconnect_allowance=round(
            device_counts["unplugs"] * (reconnect_seconds + 0.25) * speed * device.sample_rate
        ),
        windows=int(counts.get("windows", 0)),
        classified=statuses.count("classified"),
        gated=statuses.count("gated"),
        dropped=statuses.count("dropped"),
        events=produced,
        delivered={"collect": len(collected), "jsonl": len(written), "mqtt": len(listener.seen)},
        missing={
            name: sorted(set(range(produced)) - seen)[:20]
            for name, seen in (("collect", collected), ("jsonl", written), ("mqtt", listener.seen))
        },
        broker_acknowledged=int(mqtt.stats()["acknowledged"]),
        sink_dropped={"collect": 0, "jsonl": jsonl.health().dropped, "mqtt": mqtt.health().dropped},
        reloads=int(counts.get("reloads", 0)),
        unplugs=device_counts["unplugs"],
        broker_restarts=broker.restarts,
        disk_full_seconds=marks["disk_full"],
        jsonl_spooled_max=int(marks["spooled"]),
        rss_mb=memory,
        exit_status=status,
    )
    shutil.rmtree(folder, ignore_errors=True)
    return report

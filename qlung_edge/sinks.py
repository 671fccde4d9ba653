"""Where the daemon's events go: JSON lines (stdout or a rotating file) and MQTT.

Every sink takes the same event dicts (schema in `qlung_edge/events.py`). A sink must never block the
inference thread for long: MQTT keeps its own bounded buffer of events the broker has not acknowledged and
sends them again after a reconnect. Each sink reports its health (`SinkHealth`): the daemon's /health says
"degraded" while one is disconnected or has dropped events.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlparse

from qlung_edge.errors import QLungError
from qlung_edge.spool import Spool

log = logging.getLogger("qlung_edge.sinks")


class SinkError(QLungError):
    """A sink that cannot be opened or configured, named by its spec."""


@dataclass(frozen=True)
class SinkHealth:
    name: str
    connected: bool
    """Events can leave now (the file is open, the broker is connected)."""
    buffered: int
    """Events waiting to be delivered."""
    dropped: int
    """Events lost for good (buffer overflow, write failure)."""
    last_error: str | None = None

    @property
    def degraded(self) -> bool:
        return not self.connected or self.dropped > 0


class Sink:
    name: str = "sink"

    def send(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self, timeout: float = 5.0) -> bool:
        """Push out what is buffered; False if something could not be delivered in time."""
        return True

    def close(self) -> None:
        self.flush()

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> SinkHealth:
        return SinkHealth(self.name, connected=True, buffered=0, dropped=0)


@dataclass
class CollectSink(Sink):
    """Keeps every event in memory, in order: for tests, `predict` and the benchmarks."""

    events: list[dict[str, Any]] = field(default_factory=list)
    name: str = "collect"

    def send(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


@dataclass
class JsonLinesSink(Sink):
    """One event a line to stdout (`jsonl:-`) or to a file rotated at `max_bytes` keeping `backups` old ones.

    With a `spool`, every event is stored on disk first and written to the file in order: while the file
    cannot be written (a full disk, a removed drive) events wait in the spool, also across a restart.
    Without one, an event that cannot be written is lost, counted and logged once per outage.
    """

    path: Path | None = None
    max_bytes: int = 50_000_000
    backups: int = 5
    stream: IO[str] | None = None
    spool: Spool | None = None
    lines: int = 0

    def __post_init__(self) -> None:
        self.name = f"jsonl:{self.path or '-'}"
        self._lock = threading.Lock()
        self.dropped = 0
        self.last_error: str | None = None
        self._failing = False
        self._file: IO[bytes] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._open()
        if self.spool is not None:
            with self._lock:
                self._drain()

    def _open(self) -> IO[bytes]:
        """Open for appending, unbuffered (a failed write leaves nothing behind to be written later); a line
        cut short by an earlier failure is cut off, so the next event starts on a line of its own."""
        assert self.path is not None
        out = self.path.open("ab", buffering=0)
        size = out.seek(0, os.SEEK_END)
        if size and self.path.is_file():
            with self.path.open("rb") as tail:
                tail.seek(max(0, size - 65536))
                chunk = tail.read()
            if not chunk.endswith(b"\n"):
                keep = size - len(chunk) + chunk.rfind(b"\n") + 1 if b"\n" in chunk else max(0, size - len(chunk))
                out.truncate(keep)
                out.seek(0, os.SEEK_END)
        return out

    def _write(self, line: str) -> None:
        if self.path is None:
            out = self.stream or sys.stdout
            out.write(line)
            out.flush()
            return
        if self._file is not None and self._replaced():
            self._file.close()  # moved away or swapped (logrotate, another disk): write where the path points now
            self._file = None
        if self._file is None:
            self._file = self._open()
        elif self._file.tell() + len(line) > self.max_bytes and self._file.tell() > 0:
            self._rotate()
        data = line.encode("utf-8")
        written = self._file.write(data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes")

    def _replaced(self) -> bool:
        assert self.path is not None and self._file is not None
        try:
            now, held = self.path.stat(), os.fstat(self._file.fileno())
        except OSError:
            return True  # gone: opened (created) again
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def _failed(self, err: Exception) -> None:
        if not self._failing:
            then = "keeping them in the spool until it can" if self.spool else "dropping them until it can"
            log.error("%s: cannot write events (%s): %s", self.name, err, then)
        self.last_error = f"{self.name}: {err}"
        self._failing = True
        if self._file is not None:  # opened afresh next time: the disk may have been swapped or freed
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _recovered(self) -> None:
        if self._failing:
            log.warning("%s: writing again (%d event(s) dropped meanwhile)", self.name, self.dropped)
            self._failing = False

    def _drain(self) -> None:
        """Write what the spool holds, oldest first, on disk (fsynced) before the spool lets go of it; stop at
        the first failure."""
        assert self.spool is not None
        while True:
            records = self.spool.pending(limit=256)
            if not records:
                return
            written = []
            try:
                for record in records:
                    self._write(record.payload + "\n")
                    written.append(record.id)
                if self._file is not None:
                    os.fsync(self._file.fileno())
            except (OSError, ValueError) as err:
                self._failed(err)
                return  # what was written stays in the spool too: written again, a repeat rather than a loss
            for number in written:
                self.spool.ack(number)
            self.lines += len(written)
            self._recovered()

    def send(self, event: dict[str, Any]) -> None:
        line = encode(event)
        with self._lock:
            if self.spool is not None:
                _, lost = self.spool.append(line)
                self.dropped += len(lost)
                self._drain()
                return
            try:
                self._write(line + "\n")
            except (OSError, ValueError) as err:  # ValueError: the file was closed by a failed rotation
                self.dropped += 1
                self._failed(err)
                return
            self._recovered()
            self.lines += 1

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._file = self._open()

    def flush(self, timeout: float = 5.0) -> bool:
        with self._lock:
            if self.spool is not None and len(self.spool):
                self._drain()
                return len(self.spool) == 0
            if self.path is None:
                with contextlib.suppress(OSError, ValueError):
                    (self.stream or sys.stdout).flush()
        return not self._failing

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):  # a full disk at shutdown: already counted, nothing to add
                    self._file.close()
                self._file = None
            if self.spool is not None:
                self.spool.close()

    def stats(self) -> dict[str, int]:
        spooled = len(self.spool) if self.spool is not None else 0
        return {"lines": self.lines, "dropped": self.dropped, "spooled": spooled}

    def health(self) -> SinkHealth:
        buffered = len(self.spool) if self.spool is not None else 0
        error = self.last_error or (self.spool.last_error if self.spool is not None else None)
        return SinkHealth(self.name, not self._failing, buffered=buffered, dropped=self.dropped, last_error=error)


@dataclass
class MqttSink(Sink):
    """Events published with QoS 1 on one topic per event type, `<topic>/<type>` (`qlung/window`,
    `qlung/verdict`, ...); the broker's PUBACK removes an event from the buffer of unsent ones.

    While the broker is away events wait in a buffer of at most `buffer` (the oldest are dropped and
    counted beyond that); on reconnect they are published again in order. With a `spool` the buffer is on
    disk instead (bounded by the spool's size): what the broker has not acknowledged is published again after
    a restart of the daemon too. `<topic>/status` holds a retained
    `{"state": "online"|"offline", ...}`: online on every connect, offline on a clean stop, and offline from
    the broker itself (the last will) when the daemon vanishes without one.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "qlung"
    """Prefix of every topic this sink publishes on or listens to."""
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    buffer: int = 10_000
    keepalive: int = 30
    reconnect_seconds: int = 1
    """First wait before reconnecting; doubles up to 10 s while the broker stays away."""
    commands: bool = False
    """Also take control messages on `<topic>/command` (JSON: {"action": "start"|"stop", "patient": ...});
    each gets an answer on `<topic>/command/reply`."""
    on_command: Callable[..., dict[str, Any]] | None = None
    status: dict[str, Any] = field(default_factory=dict)
    """Extra fields of the retained status message (a site or device name, say)."""
    spool: Spool | None = None

    def __post_init__(self) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as err:
            raise SinkError("paho-mqtt is not installed; pip install qlung-edge[mqtt]", path="mqtt") from err
        self.name = f"mqtt://{self.host}:{self.port}/{self.topic}"
        self.topic = self.topic.rstrip("/")
        self.last_error: str | None = None
        self._mqtt = mqtt
        # Lock order: paho calls our callbacks while holding its own locks (on_publish under its outgoing-message
        # lock, on_connect under its callback lock), and its publish() takes both. So `_lock` guards our state
        # only and is never held while calling into paho; one publisher thread alone publishes events.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_id = 0
        self._queue: OrderedDict[int, tuple[str, str]] = OrderedDict()
        """Events (type, JSON) not yet acknowledged, by our own id, in order."""
        self._in_flight: dict[int, int] = {}
        """paho message id -> our id: handed to paho, which sends it again itself after a reconnect."""
        self._handed: set[int] = set()
        """Our ids handed to paho (or being handed) and not yet acknowledged."""
        self._early_acks: dict[int, float] = {}
        """Acknowledgements that came before publish() returned the message id (and those of status messages)."""
        self._connected = threading.Event()
        self._closing = False
        self._drop_logged = False
        self.published = 0
        self.acknowledged = 0
        self.dropped = 0
        self.reconnects = 0
        self._ever_connected = False
        if self.spool is not None:  # an earlier run's undelivered events go first
            for record in self.spool.pending():
                self._queue[record.id] = (_event_type(record.payload), record.payload)
        kwargs: dict[str, Any] = {"client_id": self.client_id, "clean_session": True}
        if hasattr(mqtt, "CallbackAPIVersion"):
            kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
        client = mqtt.Client(**kwargs)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=self.reconnect_seconds, max_delay=max(10, self.reconnect_seconds))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.will_set(self.status_topic, self._status("offline", "connection lost"), qos=1, retain=True)
        self._client = client
        self._publisher = threading.Thread(target=self._publish_loop, name="mqtt-publisher", daemon=True)
        self._publisher.start()
        client.connect_async(self.host, self.port, keepalive=self.keepalive)
        client.loop_start()

    @property
    def status_topic(self) -> str:
        return f"{self.topic}/status"

    def _status(self, state: str, why: str | None = None) -> str:
        fields = {"state": state, **self.status, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return json.dumps({**fields, "reason": why} if why else fields)

    # paho calls these from its network thread; the signatures cover callback API 1 and 2.
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False) or (isinstance(reason, int) and reason != 0):
            self.last_error = f"connect refused: {reason}"
            return
        with self._lock:
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._connected.set()
            self._drop_logged = False
            self._wake.notify_all()  # the publisher hands paho what it does not already hold
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        if self.commands:
            client.subscribe(f"{self.topic}/command", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """A control message: handed to the daemon, the answer (or the problem) published beside it."""
        try:
            fields = json.loads(message.payload.decode("utf-8"))
            if not isinstance(fields, dict) or not isinstance(fields.get("action"), str):
                raise ValueError('expected a JSON object with "action": "start" or "stop"')
            if self.on_command is None:
                raise ValueError("this sink takes no commands")
            answer = self.on_command(fields.pop("action"), **fields)
        except (ValueError, UnicodeDecodeError) as err:
            answer = {"ok": False, "error": str(err)}
        client.publish(f"{self.topic}/command/reply", json.dumps(answer), qos=1)

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        if self._connected.is_set():
            self.last_error = f"disconnected from {self.host}:{self.port}"
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        with self._lock:
            ours = self._in_flight.pop(mid, None)
            if ours is None:
                self._early_acks[mid] = time.monotonic()
                return
            self._acknowledged(ours)
            self._wake.notify_all()

    def _acknowledged(self, ours: int) -> None:
        self._handed.discard(ours)
        if self._queue.pop(ours, None) is not None:
            self.acknowledged += 1
            if self.spool is not None:
                self.spool.ack(ours)

    def _publish_loop(self) -> None:
        """Hand paho each event not yet handed, in order, whenever the broker is connected."""
        while True:
            with self._wake:
                while not self._closing and not (self._connected.is_set() and len(self._handed) < len(self._queue)):
                    self._wake.wait(0.5)
                if self._closing:
                    return
                batch = [(o, p) for o, p in self._queue.items() if o not in self._handed][:100]
                self._handed.update(o for o, _ in batch)
            for ours, payload in batch:
                info = self._client.publish(f"{self.topic}/{payload[0]}", payload[1], qos=1)
                with self._lock:
                    # Kept by paho (sent now, or after the reconnect when the link is down): in flight.
                    if info.rc in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                        self.published += 1
                        if self._early_acks.pop(info.mid, None) is not None:
                            self._acknowledged(ours)
                        else:
                            self._in_flight[info.mid] = ours
                    else:
                        self._handed.discard(ours)
            with self._lock:
                # Acknowledgements of status messages and replies, or of an event's publish a moment ago:
                # forgotten after 5 s, long before paho's message ids wrap around to them again.
                now = time.monotonic()
                self._early_acks = {m: t for m, t in self._early_acks.items() if now - t < 5}

    def send(self, event: dict[str, Any]) -> None:
        payload = (str(event.get("type", "event")), encode(event))
        with self._lock:
            if self.spool is not None:
                ours, lost = self.spool.append(payload[1])
                for number in lost:
                    self._queue.pop(number, None)
                    self._handed.discard(number)
                self._note_dropped(len(lost))
            else:
                ours = self._next_id
                self._next_id += 1
            self._queue[ours] = payload
            while self.spool is None and len(self._queue) > self.buffer:
                oldest, _ = self._queue.popitem(last=False)
                self._handed.discard(oldest)
                self._note_dropped(1)
            self._wake.notify_all()

    def _note_dropped(self, count: int) -> None:
        if not count:
            return
        self.dropped += count
        if not self._drop_logged:  # once per outage: the count is in /health and /metrics
            where = "spool" if self.spool is not None else f"buffer of {self.buffer} events"
            log.error("%s: %s full, dropping the oldest", self.name, where)
            self.last_error = f"{self.name}: {where} full, oldest events dropped"
            self._drop_logged = True

    def unsent(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.unsent() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.unsent() == 0

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self._publisher.join(timeout=5)
        if self._connected.is_set():
            info = self._client.publish(self.status_topic, self._status("offline", "stopped"), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # gone meanwhile: the last will says offline
                info.wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()
        if self.spool is not None:
            with self._lock:
                self.spool.close()

    def health(self) -> SinkHealth:
        error = self.last_error or (self.spool.last_error if self.spool is not None else None)
        return SinkHealth(self.name, self._connected.is_set(), self.unsent(), self.dropped, error)

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "acknowledged": self.acknowledged,
            "unsent": self.unsent(),
            "dropped": self.dropped,
            "reconnects": self.reconnects,
        }


def _event_type(payload: str) -> str:
    try:
        return str(json.loads(payload).get("type", "event"))
    except (ValueError, AttributeError):
        return "event"


def _open_spool(spec: str, query: dict[str, list[str]]) -> Spool | None:
    if "spool" not in query:
        return None
    try:
        megabytes = float(query.get("spool_mb", ["20"])[0])
    except ValueError as err:
        raise SinkError(f"bad option ({err})", path=spec) from None
    if not (0.004 <= megabytes < float("inf")):
        raise SinkError(f"spool_mb must be at least 0.004 (4 kB), got {megabytes:g}", path=spec)
    try:
        return Spool(Path(query["spool"][0]), max_bytes=int(megabytes * 1e6))
    except QLungError as err:
        raise SinkError(f"spool: {err.problem}", path=spec) from None


def mqtt_options(spec: str) -> dict[str, Any]:
    """The MqttSink fields an `mqtt://` spec gives, checked (`--check` parses without connecting)."""
    url = urlparse(spec)
    query = parse_qs(url.query)
    known = {"tls", "ca", "buffer", "client_id", "reconnect", "commands", "spool", "spool_mb"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise SinkError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", path=spec)
    tls = url.scheme == "mqtts" or query.get("tls", ["0"])[0] in ("1", "true", "yes")
    try:
        port = url.port or (8883 if tls else 1883)
        buffer = int(query.get("buffer", ["10000"])[0])
        reconnect = int(query.get("reconnect", ["1"])[0])
        if buffer < 1 or reconnect < 1:
            raise ValueError(f"buffer and reconnect must be at least 1, got {buffer} and {reconnect}")
    except ValueError as err:
        raise SinkError(f"bad option ({err})", path=spec) from None
    return {
        "host": url.hostname or "127.0.0.1",
        "port": port,
        "topic": url.path.strip("/") or "qlung",
        "client_id": query.get("client_id", [""])[0],
        "username": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
        "tls": tls,
        "ca_file": query.get("ca", [None])[0],
        "buffer": buffer,
        "reconnect_seconds": reconnect,
        "commands": query.get("commands", ["0"])[0] in ("1", "true", "yes"),
    }


def describe_spool(spec: str) -> str | None:
    """For `--check`: the spool a sink spec names opens (writable, not in use) and how much it holds."""
    query = parse_qs(urlparse(spec[len("jsonl:") :] if spec.startswith("jsonl:") else spec).query)
    spool = _open_spool(spec, query)
    if spool is None:
        return None
    try:
        return f"spool {spool.folder}: {len(spool)} undelivered event(s), {spool.size_bytes()} bytes"
    finally:
        spool.close()


def open_sink(spec: str, with_spool: bool = True) -> Sink:
    """`jsonl:-` (stdout), `jsonl:PATH[?max_mb=50&backups=5]`,
    `mqtt://[user:pass@]host[:port]/prefix[?tls=1&ca=F&buffer=N&client_id=ID&reconnect=S&commands=1]`,
    `fhir:PATH` or `fhir:http(s)://server/base[?buffer=N]` (verdicts as FHIR R4 Observations).

    `spool=DIR` keeps undelivered events on disk (`qlung_edge/spool.py`), at most `spool_mb` megabytes.
    `with_spool=False` leaves the spool alone (for `--check`, which must not deliver or lock it)."""
    if spec in ("-", "jsonl", "jsonl:", "jsonl:-", "stdout"):
        return JsonLinesSink()
    if spec.startswith("jsonl:"):
        url = urlparse(spec[len("jsonl:") :])
        query = parse_qs(url.query)
        try:
            max_mb = float(query.get("max_mb", ["50"])[0])
            backups = int(query.get("backups", ["5"])[0])
        except ValueError as err:
            raise SinkError(f"bad option ({err})", path=spec) from None
        if not (max_mb >= 0.001 and max_mb < float("inf")):
            raise SinkError(f"max_mb must be at least 0.001 (1 kB), got {max_mb:g}", path=spec)
        if backups < 0:
            raise SinkError(f"backups must be 0 or more, got {backups}", path=spec)
        spool = _open_spool(spec, query) if with_spool else None
        try:
            return JsonLinesSink(Path(url.path), max_bytes=int(max_mb * 1e6), backups=backups, spool=spool)
        except OSError as err:
            raise SinkError(f"cannot open the file ({err.strerror})", path=spec) from None
    if spec.startswith(("mqtt://", "mqtts://")):
        options = mqtt_options(spec)
        spool = _open_spool(spec, parse_qs(urlparse(spec).query)) if with_spool else None
        try:
            return MqttSink(**options, spool=spool)
        except Exception:
            if spool is not None:
                spool.close()  # its lock would keep the next try out
            raise
    if spec.startswith("fhir:"):
        from qlung_edge.fhir import open_fhir_sink

        return open_fhir_sink(spec)
    raise SinkError("expected jsonl:-, jsonl:PATH, mqtt://host[:port]/prefix, fhir:PATH or fhir:http://server/base",
                    path=spec)  # fmt: skip

"""`qlung-edge daemon`: source → resample → windows → quality gate → model → events, for days on end.

Three threads joined by queues. Capture only moves source blocks into a queue (it blocks rather than drop a
sample). Processing resamples, cuts a window every hop and scores its quality; every window, accepted or not,
goes into one ordered queue of pending windows. Inference takes the accepted ones in batches; when more than
`max_pending` wait, the oldest lose their audio and become 'dropped' events. Events leave in window order, so
accepted + gated + dropped always equals the windows cut.

Event schema (version 1, one JSON object per event; see `EVENT_SCHEMA` and the README):
`{"schema": 1, "type": "window"|"start"|"source"|"reload"|"error"|"stop", "stream": str, "seq": int,
"time": ISO-8601 UTC, ...}`; a window event adds `window` {index, start, end} (seconds on the stream), `status`
("classified", "gated" or "dropped"), `quality`, `reasons` and `advice` (gated), `prediction` and `exam`
(classified), `latency_ms`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.blocks import AudioBlock
from firmware_bridge.sources import open_source
from qlung_edge import FRAME_HOP, MODEL_SAMPLE_RATE, __version__
from qlung_edge.audit import AuditRecorder
from qlung_edge.backends import Backend, open_backend
from qlung_edge.bundle import CHECK_FILE, FRONTEND_FFT_FILE, Bundle, load_bundle
from qlung_edge.config import from_dict, to_dict
from qlung_edge.errors import QLungError
from qlung_edge.events import (
    SCHEMA_VERSION,
    ErrorEvent,
    Header,
    ReloadEvent,
    SourceEvent,
    StartEvent,
    StopEvent,
    VerdictEvent,
    WindowStatus,
    event_dict,
    validate,
)
from qlung_edge.examination import check_identifier
from qlung_edge.frontend import (
    DFT_AGREEMENT,
    FRAME_TOLERANCE,
    FRONTEND_VARIANTS,
    OnnxFrontEnd,
    block_by_block_difference,
)
from qlung_edge.handoff import BlockQueue, ExamRequest, Item, joined
from qlung_edge.live import LiveFeed, envelope
from qlung_edge.reporter import EventReporter, utc
from qlung_edge.sdnotify import Notifier
from qlung_edge.sinks import JsonLinesSink, Sink, describe_spool, mqtt_options, open_sink
from qlung_edge.streaming import (
    Decision,
    ExamBoundary,
    ExamConfig,
    GateConfig,
    SignalPath,
    Window,
    finite_samples,
)
from qlung_edge.telemetry import Metrics, StatusServer, peak_rss_bytes, prometheus_registry, thread_wakeups
from qlung_edge.tensorrt_runner import ENGINE_TOLERANCE

log = logging.getLogger("qlung_edge.daemon")

FRAME_SECONDS = FRAME_HOP / MODEL_SAMPLE_RATE
"""Hops are whole numbers of 10 ms frames: the incremental path and the AQS advance frame by frame."""


class DaemonError(QLungError):
    pass


@dataclass
class DaemonConfig:
    """Every option of the daemon; the CLI flags and the TOML file fill the same fields, checked the same way."""

    bundle: Path | None = None
    source: str = ""
    sinks: list[str] = field(default_factory=lambda: ["jsonl:-"])
    source_options: dict[str, Any] = field(default_factory=dict)
    """Passed to `open_source`: rate, format, channels (stdin); realtime, speed (file); baudrate (serial)."""
    hop_seconds: float | None = None
    """Default: the bundle's."""
    backend: str = "auto"
    precision: str = "fp32"
    threads: int = 1
    max_batch: int = 8
    checkpoint: Path | None = None
    """The torch backend only (development)."""
    incremental: bool | None = None
    """Compute each log-mel frame once as audio arrives and run the network alone on a window's frames.
    None: whenever the bundle has the pieces and the backend can (FP32); False: the whole model per window."""
    frontend: str | None = None
    """The incremental path's front end, dft, fft or pocketfft; None: the one the export measured fastest."""
    max_pending: int = 8
    """Accepted windows that may wait for inference before the oldest is dropped."""
    drop_when_behind: bool | None = None
    """Drop the oldest pending window when inference falls behind (live sources), or make the source wait
    (a file read as fast as possible: nothing is gained by skipping). None: decide from the source."""
    smoothing_windows: int = 8
    gate: GateConfig = field(default_factory=GateConfig)
    exams: ExamConfig = field(default_factory=ExamConfig)
    emit_gated: bool = True
    http: str | None = None
    """host:port for /health and /metrics; None: off. Bound to 127.0.0.1 unless a host is given."""
    audit_dir: Path | None = None
    audit_minutes: float = 2.0
    audit_max_mb: float = 200.0
    stream_name: str = field(default_factory=socket.gethostname)
    trusted_keys: list[Path] = field(default_factory=list)
    """Ed25519 public keys (PEM): when given, only bundles signed by one of them run, at start and on SIGHUP."""
    block_queue: int = 1024
    """Source blocks buffered between capture and processing (capture waits when full, losing nothing)."""

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> DaemonConfig:
        try:
            import tomllib  # novermin (3.11+; tomli below)
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise DaemonError(f"cannot read the config ({err})", path=path) from None
        except tomllib.TOMLDecodeError as err:
            raise DaemonError(f"not valid TOML ({err})", path=path) from None
        return cls.from_dict({**values, **(overrides or {})}, where=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> DaemonConfig:
        """Strictly: an unknown option or a value of the wrong type is an error naming the option."""
        try:
            return from_dict(cls, values)
        except QLungError as err:
            raise DaemonError(err.problem if err.path is None else f"{err.path}: {err.problem}", path=where) from None

    def check(self) -> None:
        if self.bundle is None:
            raise DaemonError("no bundle: give --bundle DIR or `bundle = ...` in the config")
        if not self.source:
            raise DaemonError("no source: give --source mic:|serial:PORT|file:PATH|stdin: or `source = ...`")
        if self.hop_seconds is not None:
            frames = self.hop_seconds / FRAME_SECONDS
            if not (math.isfinite(self.hop_seconds) and self.hop_seconds > 0 and abs(frames - round(frames)) < 1e-6):
                raise DaemonError(
                    f"hop_seconds must be a positive multiple of {FRAME_SECONDS:g} s (the frame hop), got"
                    f" {self.hop_seconds}"
                )
        if self.frontend not in (None, *FRONTEND_VARIANTS):
            raise DaemonError(f"frontend must be one of {', '.join(FRONTEND_VARIANTS)}, got {self.frontend!r}")
        for name in ("threads", "max_batch", "max_pending", "smoothing_windows", "block_queue"):
            if getattr(self, name) < 1:
                raise DaemonError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("audit_minutes", "audit_max_mb"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise DaemonError(f"{name} must be a positive number, got {value}")
        if self.http:
            parse_address(self.http)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise DaemonError(f"http address {text!r}: expected [HOST:]PORT") from None
    if not 0 <= number <= 65535:
        raise DaemonError(f"http address {text!r}: port {number} is not between 0 and 65535")
    return host or "127.0.0.1", number


@dataclass(eq=False)
class _Pending:
    decision: Decision | ExamBoundary
    """A window, or where an examination starts or ends (kept in order with the windows)."""
    ready: float
    """time.monotonic() when processing of the block holding the window's last sample began."""
    status: WindowStatus | None
    """None for an examination boundary."""
    window: Window | None
    """The window the model will see (its samples, and its frames on the incremental path); None once it is
    not needed (gated, dropped)."""


class Daemon:
    """The running pipeline. `run()` blocks until the source ends or `stop()`; `reload()` swaps the bundle."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        source: Any = None,
        sinks: list[Sink] | None = None,
        backend_factory: Callable[[Bundle, DaemonConfig], Backend] | None = None,
    ) -> None:
        config.check()
        assert config.bundle is not None
        self.config = config
        self.started = time.monotonic()
        self.run_id = uuid.uuid4().hex
        """New at every start, in every event: tells restarts and duplicates apart downstream."""
        self.metrics = Metrics()
        self._backend_factory = backend_factory or backend_for
        self.bundle = load_trusted(config.bundle, config.trusted_keys)
        self.backend = self._backend_factory(self.bundle, config)
        rate = self.bundle.sample_rate
        hop = config.hop_seconds if config.hop_seconds is not None else float(self.bundle.manifest["hop_seconds"])
        self.path = SignalPath(
            self.bundle.window_samples,
            round(hop * rate),
            self.bundle.quality_config(),
            config.gate,
            rate=rate,
            count=self.metrics.add,
            exams=config.exams,
            frontend=self.backend.frontend,
        )
        self.reporter = EventReporter(
            self.bundle, self.run_id, smoothing_windows=config.smoothing_windows, emit_gated=config.emit_gated
        )
        """Window events, the examination in progress (as the inference thread sees it) and its verdict."""
        self.source = source if source is not None else open_source(config.source, **config.source_options)
        self.sinks = sinks if sinks is not None else [open_sink(s) for s in config.sinks]
        for sink in self.sinks:  # sinks that also take control messages (MQTT's command topic)
            if hasattr(sink, "on_command"):
                sink.on_command = self.control
        self.audit = None
        if config.audit_dir is not None:
            self.audit = AuditRecorder(
                config.audit_dir, keep_seconds=config.audit_minutes * 60, max_bytes=int(config.audit_max_mb * 1e6)
            )
        live = getattr(self.source, "live", True)
        self._drop_when_behind = live if config.drop_when_behind is None else config.drop_when_behind
        self._blocks = BlockQueue(config.block_queue)
        self._pending: deque[_Pending] = deque()
        self._pending_lock = threading.Condition()
        self._path_lock = threading.Lock()
        """The signal path belongs to the processing thread; a reload changes its front end under this lock."""
        self._processing_done = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._seq = 0
        self._emit_lock = threading.Lock()
        self._errors: list[str] = []
        self._invalid_events = 0
        self._validate = os.environ.get("QLUNG_VALIDATE_EVENTS") == "1"
        """Check every event against the shipped JSON Schema (the test suite turns this on; needs jsonschema)."""
        self._last_block = time.monotonic()
        self._epoch_set = False
        self._notes_seen = 0
        """Source notes already emitted as events."""
        self._threads: list[threading.Thread] = []
        self._thread_cpu: dict[str, float] = {}
        """CPU seconds of each finished thread: capture (the source), process (the signal path), infer."""
        self._thread_wakeups: dict[str, int] = {}
        """How often each finished thread went to sleep and was woken (Linux; empty elsewhere)."""
        self.notifier = Notifier()
        """systemd's READY/WATCHDOG/RELOADING/STOPPING (Type=notify); silent outside systemd."""
        self.server: StatusServer | None = None
        self.live: LiveFeed | None = None
        """The bedside page's feed (with --http): every event, and the audio envelope while a page watches."""
        if config.http:
            host, port = parse_address(config.http)
            registry = prometheus_registry(self.metrics, lambda: [s.health() for s in self.sinks], self._build_info)
            self.live = LiveFeed()
            self.server = StatusServer(self.metrics, self.health, host, port, control=self.control,
                                       registry=registry, live=self.live)  # fmt: skip
        self.start_seconds = time.monotonic() - self.started
        self._cpu_at_run, self._wall_at_run = time.process_time(), time.monotonic()
        self._warm: tuple[float, float] | None = None
        """Process CPU time and the audio (seconds) taken in when the first window went through the model."""

    @property
    def hop_seconds(self) -> float:
        return self.path.hop_seconds

    @property
    def model_id(self) -> str:
        return self.reporter.model_id

    def _build_info(self) -> dict[str, str]:
        return {
            "version": __version__,
            "model": str(self.bundle.manifest.get("name")),
            "model_id": self.model_id,
            "backend": self.backend.name,
            "run_id": self.run_id,
        }

    @property
    def quality_threshold(self) -> float | None:
        return self.reporter.threshold

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Finish the windows already cut, flush the sinks, return from `run()`."""
        self._stop.set()
        self.notifier.stopping()
        self.source.stop()

    def reload(self) -> None:
        """Load the bundle again (from the same path) before the next batch; the audio stream goes on."""
        self.notifier.reloading()
        self._reload.set()
        with self._pending_lock:
            self._pending_lock.notify_all()

    def health(self) -> dict[str, Any]:
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        quiet = time.monotonic() - self._last_block
        sinks = [sink.health() for sink in self.sinks]
        status = "ok" if alive and quiet < 10 else "unhealthy"
        if status == "ok" and any(s.degraded for s in sinks):
            status = "degraded"  # classifying, but events are waiting or were lost
        return {
            "status": status,
            "sinks": [asdict(s) for s in sinks],
            "run_id": self.run_id,
            "source": self.source.name,
            "seconds_since_audio": round(quiet, 3),
            "backend": self.backend.name,
            "backend_details": self.backend.details,
            "quality_estimate": "AQS-only gate: the bundle has no quality estimate"
            if self.quality_threshold is None
            else f"learned, threshold {self.quality_threshold:.3f}",
            "bundle": str(self.bundle.path),
            "model_id": self.model_id,
            "errors": self._errors[-3:],
            **self.metrics.snapshot(),
        }

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop cleanly; SIGHUP reloads the bundle. Main thread only."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload())

    # ----------------------------------------------------------------- events

    def emit(self, event: Any) -> dict[str, Any]:
        """Send one event (a dataclass of `qlung_edge.events`) to every sink; returns its JSON object."""
        with self._emit_lock:
            header = Header(
                SCHEMA_VERSION, event.type, self.config.stream_name, self.run_id, self._seq, utc(time.time())
            )
            body = event_dict(header, event)
            if self._validate:
                try:
                    validate(body)
                except Exception as err:  # jsonschema's ValidationError, reported and counted
                    self._invalid_events += 1
                    self._note_error(f"event {header.seq} does not fit the schema: {str(err)[:300]}")
            self._seq += 1
            if self.live is not None:
                self.live.publish(event.type, body)
            for sink in self.sinks:
                try:
                    sink.send(body)
                except Exception as err:  # a broken sink must not stop the others or the audio
                    self.metrics.add("sink_errors")
                    self._note_error(f"{sink.name}: {err}")
            self.metrics.add("events")
        return body

    def _note_error(self, text: str) -> None:
        if len(self._errors) < 1000:
            self._errors.append(text)
        log.error(text)

    # ----------------------------------------------------------------- threads

    def run(self) -> int:
        """Run to the end of the source or to `stop()`; 0 if it ended cleanly, 1 after a failure of the source,
        the processing or the inference thread, 3 if an event did not fit the schema."""
        self._cpu_at_run, self._wall_at_run = time.process_time(), time.monotonic()
        self._warm = None
        if self.server is not None:
            self.server.start()
        self.emit(
            StartEvent(
                bundle=str(self.bundle.path),
                model=self.bundle.manifest.get("name"),
                model_id=self.model_id,
                backend=self.backend.name,
                backend_details=self.backend.details,
                source=self.source.name,
                hop_seconds=self.hop_seconds,
                window_seconds=self.path.window_seconds,
                start_seconds=round(self.start_seconds, 3),
                http=None if self.server is None else "{}:{}".format(*self.server.address),
            )
        )
        self._threads = [
            threading.Thread(target=self._timed, args=(name, target), name=name, daemon=True)
            for name, target in (("capture", self._capture), ("process", self._process), ("infer", self._infer))
        ]
        for thread in self._threads:
            thread.start()
        self.notifier.ready(f"{self.source.name} -> {self.bundle.manifest.get('name')} on {self.backend.name}")
        for thread in self._threads:
            while thread.is_alive():  # a timeout, so that a signal's handler runs (it is the main thread's)
                thread.join(timeout=1.0)
        self._source_notes()
        self.emit(StopEvent(counts=self.counts(), source_stats=self.source.stats(), errors=self._errors[-10:]))
        undelivered = [s.name for s in self.sinks if not s.flush(timeout=10)]
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                self._note_error(f"{sink.name}: closing: {err}")
        if undelivered:
            log.error("undelivered events left in %s", ", ".join(undelivered))
        self.backend.close()
        if self.server is not None:
            self.server.close()
        self.notifier.stopping()
        self.notifier.close()
        if self._invalid_events:
            return 3
        failed = ("source", "processing", "inference")  # systemd's Restart=on-failure needs a non-zero status
        return 1 if any(e.startswith(failed) for e in self._errors) else 0

    def counts(self) -> dict[str, Any]:
        snap = self.metrics.snapshot()
        return {
            **snap["counts"],
            "gated_by_reason": snap["gated"],
            "cpu_seconds": snap["cpu_seconds"],
            "stream_cpu_seconds": round(time.process_time() - self._cpu_at_run, 3),
            **(
                {}
                if self._warm is None
                else {
                    "warm_cpu_seconds": round(self._warm[0] - self._cpu_at_run, 4),
                    "warm_audio_seconds": self._warm[1],
                }
            ),
            "stream_wall_seconds": round(time.monotonic() - self._wall_at_run, 3),
            "thread_cpu_seconds": {name: round(seconds, 3) for name, seconds in self._thread_cpu.items()},
            "thread_wakeups": dict(self._thread_wakeups),
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def _timed(self, name: str, target: Callable[[], None]) -> None:
        """Run a thread's loop and keep the CPU it used and how often it slept: which part of the daemon costs
        what. On a virtual machine a wake-up can cost more CPU than the work it wakes for."""
        try:
            target()
        finally:
            self._thread_cpu[name] = time.thread_time()
            wakeups = thread_wakeups()
            if wakeups is not None:
                self._thread_wakeups[name] = wakeups

    def _capture(self) -> None:
        try:
            for block in self.source.blocks():
                self._blocks.put(block)
        except Exception as err:
            self._note_error(f"source {self.source.name}: {err}")
            self.emit(ErrorEvent(where="source", message=str(err)))
        finally:
            self._blocks.put(None)

    def _next_blocks(self) -> list[Item]:
        """The source blocks that complete the next window (or the blocks up to the end, marked by None), feeding
        systemd's watchdog while it waits: the processing loop is what must stay alive, so a hung loop gets the
        service restarted. A page watching the live signal gets every block as it comes."""
        while True:
            self.notifier.watchdog()
            self._source_notes()  # a disconnect is an event when it happens, not when the stream ends
            watching = self.live is not None and self.live.watching
            wanted = 0.0 if watching else self.path.seconds_to_next_window()
            blocks = self._blocks.get(timeout=self.notifier.poll_seconds, wanted_seconds=wanted)
            if blocks:
                return blocks

    def _source_notes(self) -> None:
        """Emit what the source has noted (disconnects, reconnects, resyncs) since the last look."""
        notes = self.source.notes
        while self._notes_seen < len(notes):
            self.emit(SourceEvent(notes[self._notes_seen]))
            self._notes_seen += 1

    def _process(self) -> None:
        try:
            ended = False
            while not ended:
                for item in joined(self._next_blocks()):
                    if item is None:
                        ended = True
                        break
                    if isinstance(item, ExamRequest):  # where the message arrived among the captured audio
                        with self._path_lock:
                            self.path.request(item.start, item.reason, **item.identifiers)
                    else:
                        self._process_block(item)
            taken = time.monotonic()
            with self._path_lock:
                outputs = self.path.finish()  # the resampler's last milliseconds, the end of the examination
            for item in outputs:
                self._queue(item, taken)
        except Exception as err:
            self._note_error(f"processing: {err}")
            self.emit(ErrorEvent(where="processing", message=str(err)))
            self.source.stop()
            while not any(b is None for b in self._blocks.get(timeout=self.notifier.poll_seconds)):
                pass  # let capture finish
        finally:
            with self._pending_lock:
                self._processing_done = True
                self._pending_lock.notify_all()

    def _process_block(self, block: AudioBlock) -> None:
        self._last_block = time.monotonic()
        if not self._epoch_set:  # stream time + epoch = capture time (UTC)
            self.reporter.epoch, self._epoch_set = time.time() - block.timestamp - block.duration, True
        if self.audit is not None:
            self.audit.add(block.timestamp, block.sample_rate, finite_samples(block.samples)[0])
        if self.live is not None and self.live.watching:
            shape = envelope(finite_samples(block.samples)[0], block.sample_rate)
            self.live.publish("signal", {"time": round(block.timestamp, 3), "envelope": shape}, keep=False)
        taken = time.monotonic()  # latency counts from here: the signal path's work (resampling, the
        with self._path_lock:  # AQS, incremental frames) is part of it
            outputs = self.path.push(block)
            notes = self.path.take_notes()
        for item in outputs:
            self._queue(item, taken)
        for note in notes:
            self.emit(SourceEvent(note))

    def _queue(self, decision: Decision | ExamBoundary, taken: float) -> None:
        if isinstance(decision, ExamBoundary):
            with self._pending_lock:
                self._pending.append(_Pending(decision, taken, None, None))
                self._pending_lock.notify_all()
            return
        self.metrics.add("windows")
        if decision.accepted:
            self.metrics.add("windows_accepted")
            item = _Pending(decision, taken, WindowStatus.CLASSIFIED, decision.window)
        else:
            self.metrics.gate(decision.reasons)
            item = _Pending(decision, taken, WindowStatus.GATED, None)
        with self._pending_lock:
            if not self._drop_when_behind:
                while (
                    sum(p.status is WindowStatus.CLASSIFIED for p in self._pending) >= self.config.max_pending
                    and not self._stop.is_set()
                ):
                    self._pending_lock.wait(timeout=1.0)
            self._pending.append(item)
            waiting = [p for p in self._pending if p.status is WindowStatus.CLASSIFIED]
            for old in waiting[: max(0, len(waiting) - self.config.max_pending)]:
                old.status, old.window = WindowStatus.DROPPED, None
                self.metrics.add("windows_dropped")
            self._pending_lock.notify_all()

    def _take(self) -> list[_Pending] | None:
        """The pending windows up to and including `max_batch` accepted ones; None when all is done."""
        with self._pending_lock:
            while not self._pending and not self._processing_done and not self._reload.is_set():
                self._pending_lock.wait(timeout=1.0)  # every change notifies: the timeout is a safety net
            if not self._pending:
                return None if self._processing_done else []
            taken: list[_Pending] = []
            accepted = 0
            while self._pending and accepted < self.config.max_batch:
                item = self._pending.popleft()
                taken.append(item)
                accepted += item.status is WindowStatus.CLASSIFIED
            self._pending_lock.notify_all()
            return taken

    def _infer(self) -> None:
        try:
            while (taken := self._take()) is not None:
                if self._reload.is_set():
                    self._do_reload()
                if not taken:
                    continue
                classify = [p for p in taken if p.window is not None]
                rows: dict[int, tuple[np.ndarray, float | None]] = {}
                if classify:
                    out = self.backend.run_all(np.stack([self.backend.input_of(p.window) for p in classify]))
                    poor = out.get("poor")
                    rows = {
                        id(p): (row, None if poor is None else float(poor[i]))
                        for i, (p, row) in enumerate(zip(classify, out["probabilities"]))
                    }
                    self.metrics.add("batches")
                    self.metrics.add("inferences", len(classify))
                for item in taken:
                    if isinstance(item.decision, ExamBoundary):
                        self._boundary(item.decision)
                    else:
                        self._report(item, *rows.get(id(item), (None, None)))
        except Exception as err:
            self._note_error(f"inference: {err}")
            self.emit(ErrorEvent(where="inference", message=str(err)))
            self.stop()
            with self._pending_lock:
                self._processing_done = True

    def _boundary(self, boundary: ExamBoundary) -> None:
        """An examination starts (its running answer afresh) or ends (its verdict)."""
        for event in self.reporter.boundary(boundary):
            if isinstance(event, VerdictEvent):
                self.metrics.add("verdicts")
            self.emit(event)

    def control(self, action: str, **fields: Any) -> dict[str, Any]:
        """A control message (HTTP POST /exam/start|stop, the MQTT command topic): start an examination, with
        optional patient/encounter/site identifiers, or stop the current one. A ValueError says what is wrong."""
        unknown = sorted(set(fields) - {"patient", "encounter", "site", "exam_id"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: patient, encounter, site, exam_id")
        if action == "start":
            ids = {k: check_identifier(k, fields.get(k)) for k in ("patient", "encounter", "site")}
            self._blocks.put(ExamRequest(True, "control message", ids))
            return {"ok": True, "action": "start", **{k: v for k, v in ids.items() if v}}
        if action == "stop":
            current = self.reporter.exam.id if self.reporter.exam is not None else None
            wanted = fields.get("exam_id")
            if current is None and not self.path.in_exam:
                raise ValueError("no examination in progress")
            if wanted is not None and wanted != current:
                raise ValueError(f"unknown examination {wanted!r}; the current one is {current!r}")
            self._blocks.put(ExamRequest(False, "control message"))
            return {"ok": True, "action": "stop", "exam_id": current}
        raise ValueError(f"unknown action {action!r}: start or stop")

    def _report(self, item: _Pending, probabilities: np.ndarray | None, poor: float | None = None) -> None:
        assert isinstance(item.decision, Decision) and item.status is not None
        latency = time.monotonic() - item.ready
        if self._warm is None and probabilities is not None:  # the first window through the model: the CPU so
            # far is warm-up (imports, first passes), against the audio processing has taken in by now (a file read
            # as fast as possible is far ahead of this window)
            self._warm = (time.process_time(), self.path.cutter.total / self.path.cutter.rate)
        outcome = self.reporter.window(item.decision, item.status, probabilities, poor, latency * 1000)
        if outcome.gated_after_model:
            self.metrics.gate(outcome.reasons)
            self.metrics.add("windows_gated_after_model")
        if outcome.event is None:
            return
        event = self.emit(outcome.event)
        if outcome.status is WindowStatus.CLASSIFIED:
            self.metrics.latency(latency)
            if self.audit is not None:
                try:
                    self.audit.record(event)
                except OSError as err:
                    self._note_error(f"audit: {err}")

    def _do_reload(self) -> None:
        self._reload.clear()
        assert self.config.bundle is not None
        try:
            bundle = load_trusted(self.config.bundle, self.config.trusted_keys)
            if (bundle.window_samples, bundle.sample_rate) != (self.bundle.window_samples, self.bundle.sample_rate):
                raise DaemonError(
                    f"its windows are {bundle.window_samples} samples at {bundle.sample_rate} Hz, the running"
                    f" stream's {self.bundle.window_samples} at {self.bundle.sample_rate} Hz: restart to change them",
                    path=bundle.path,
                )
            backend = self._backend_factory(bundle, self.config)
            try:
                try_bundle(bundle, backend, self.config.precision)
            except Exception:
                backend.close()
                raise
        except Exception as err:
            self._note_error(f"reload: {err}")
            self.emit(ReloadEvent(ok=False, bundle=str(self.config.bundle), message=str(err)))
            self.notifier.ready(f"reload refused: {err}")
            return
        old, self.backend, self.bundle = self.backend, backend, bundle
        old.close()
        with self._path_lock:  # never between a block's frames and its samples (the processing thread's push)
            self.path.set_frontend(backend.frontend)
            self.path.set_thresholds(bundle.quality_config())
        self.reporter.use(bundle)
        self.metrics.add("reloads")
        self.notifier.ready(f"reloaded {bundle.manifest.get('name')}")
        self.emit(
            ReloadEvent(
                ok=True,
                bundle=str(bundle.path),
                model=bundle.manifest.get("name"),
                model_id=self.model_id,
                backend=backend.name,
            )
        )


def load_trusted(folder: Path, trusted_keys: list[Path]) -> Bundle:
    """`load_bundle`, and with trusted keys its signature checked too (`Bundle.signer` names the key)."""
    bundle = load_bundle(folder)
    if not trusted_keys:
        return bundle
    from qlung_edge.signing import verify_signature

    return replace(bundle, signer=verify_signature(bundle.path, list(trusted_keys)))


def backend_for(bundle: Bundle, config: DaemonConfig) -> Backend:
    return open_backend(
        bundle,
        kind=config.backend,
        precision=config.precision,
        threads=config.threads,
        max_batch=config.max_batch,
        checkpoint=config.checkpoint,
        incremental=config.incremental,
        frontend=config.frontend,
    )


def check_tolerance(backend: Backend, precision: str) -> float:
    """How far `--check` lets the backend's probabilities stray from the export's on the check windows: an
    engine by its own precision (FP16, INT8), ONNX Runtime by the model file it runs."""
    if backend.name == "tensorrt":
        record = backend.bundle.manifest["engine"]
        return float(record.get("tolerance", ENGINE_TOLERANCE[record.get("precision", "fp16")]))
    return ENGINE_TOLERANCE["int8"] if precision == "int8" else ENGINE_TOLERANCE["fp32"]


def try_bundle(bundle: Bundle, backend: Backend, precision: str) -> float:
    """Run the bundle's check windows through `backend`: a bundle that verifies but cannot run (a wrong input
    shape, an op this runtime lacks) or disagrees with its export is refused before it replaces a working one.
    Returns the largest probability difference."""
    checks = np.load(bundle.file(CHECK_FILE))
    got = backend.run(checks["waveform"])  # through the front-end graph first on the incremental path
    worst = float(np.abs(got - checks["probabilities"]).max())
    tolerance = check_tolerance(backend, precision)
    if not worst <= tolerance:
        problem = f"backend {backend.name} differs from the export by {worst:.2e} (tolerance {tolerance:g})"
        raise DaemonError(problem, path=bundle.path)
    return worst


def check_setup(config: DaemonConfig) -> list[str]:
    """`--check`: the config, the bundle (verified), the backend on the bundle's check windows, the source."""
    config.check()
    assert config.bundle is not None
    lines = []
    bundle = load_trusted(config.bundle, config.trusted_keys)
    signed = f", signed by trusted key {bundle.signer}" if bundle.signer else ""
    lines.append(
        f"bundle {bundle.path}: verified ({bundle.manifest.get('name')}, {len(bundle.manifest['files'])} files{signed})"
    )
    backend = backend_for(bundle, config)
    checks = np.load(bundle.file(CHECK_FILE))
    try:
        worst = try_bundle(bundle, backend, config.precision)
    finally:
        backend.close()
    tolerance = check_tolerance(backend, config.precision)
    how = ""
    if backend.frontend is not None:
        variant = backend.frontend.variant
        exact = OnnxFrontEnd(bundle.file(FRONTEND_FFT_FILE), variant="fft")
        agreement = max(float(np.abs(backend.frontend(w) - exact(w)).max()) for w in checks["waveform"])
        allowed = DFT_AGREEMENT if variant == "dft" else FRAME_TOLERANCE
        if not agreement <= allowed:
            raise DaemonError(f"the {variant} front end differs from the bundle's FFT graph by {agreement:.1e} on"
                              f" this machine (tolerance {allowed:g})", path=bundle.path)  # fmt: skip
        drift = block_by_block_difference(backend.frontend, checks["waveform"])
        if not drift <= FRAME_TOLERANCE:
            raise DaemonError(
                f"the {backend.frontend.variant} front end computes frames block by block {drift:.1e} away from"
                f" whole-window frames on this machine (tolerance {FRAME_TOLERANCE:g}): run --whole-window",
                path=backend.frontend.path,
            )
        how = f", network on {backend.frontend.variant} front-end frames (block by block |d| {drift:.1e})"
    lines.append(
        f"backend {backend.name}{how}: {len(checks['waveform'])} check windows, max |dp| {worst:.2e} vs export"
        f" (<= {tolerance:g})"
    )
    if "fallback" in backend.details:
        lines.append(f"note: {backend.details['fallback']}")
    hop = config.hop_seconds if config.hop_seconds is not None else float(bundle.manifest["hop_seconds"])
    if hop * bundle.sample_rate > bundle.window_samples:
        window = bundle.window_samples / bundle.sample_rate
        problem = f"hop_seconds {hop:g} is longer than the bundle's {window:g} s windows: audio between would be lost"
        raise DaemonError(problem, path=bundle.path)
    source = open_source(config.source, **config.source_options)
    lines.append(f"source {source.name}: opens")
    for spec in config.sinks:
        lines.append(check_sink(spec))
    if config.http:
        host, port = parse_address(config.http)
        try:
            with socket.create_server((host, port)):
                pass
        except OSError as err:
            raise DaemonError(f"cannot listen on {host}:{port} ({err.strerror or err})", path="http") from None
        lines.append(f"http {host}:{port}: free, bound and released")
    if config.audit_dir is not None:
        lines.append(f"audit {_writable(config.audit_dir)}: writable")
    return lines


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise DaemonError(f"cannot write here ({err.strerror or err})", path=folder) from None
    return folder


def check_sink(spec: str, timeout: float = 5.0) -> str:
    """What `--check` can know of a sink before the run: its spec parses, its file opens for appending, its
    MQTT broker accepts a connection within `timeout`."""
    if spec.startswith(("mqtt://", "mqtts://")):
        options = mqtt_options(spec)  # the options parse, before any connection
        host, port = options["host"], options["port"]
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as err:
            raise DaemonError(f"broker {host}:{port} unreachable ({err.strerror or err})", path=spec) from None
        spooled = describe_spool(spec)
        return f"sink {spec}: broker {host}:{port} reachable" + (f"; {spooled}" if spooled else "")
    sink = open_sink(spec, with_spool=False)  # parses the options; opens (creates) a file
    try:
        if isinstance(sink, JsonLinesSink) and sink.path is not None and not os.access(sink.path, os.W_OK):
            raise DaemonError("not writable", path=spec)
    finally:
        sink.close()
    spooled = describe_spool(spec)
    return f"sink {spec}: opens" + (f"; {spooled}" if spooled else "")

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
import queue
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.backends import Backend, open_backend
from qlung_edge.bundle import CHECK_FILE, Bundle, load_bundle
from qlung_edge.errors import QLungError
from qlung_edge.metrics import Metrics, StatusServer, peak_rss_bytes
from qlung_edge.sinks import Sink, open_sink
from qlung_edge.streaming import ExamSmoother, Gate, GateConfig, StreamResampler, Window, WindowCutter

EVENT_SCHEMA = 1
STATUSES = ("classified", "gated", "dropped")
ADVICE = {
    "device_gap": "the stethoscope link lost audio: check the cable or connection",
    "too_quiet": "signal too quiet: press the chest piece flat on bare skin",
    "clipped": "signal clipping: lower the gain or ease the pressure",
    "noise_like": "noise, not breath sounds: check contact, stop rubbing, quiet the room",
    "dropout": "audio dropped out: check the chest piece and cable",
    "low_quality": "poor recording quality: reposition the chest piece",
    "settling": "signal recovering: hold the chest piece still",
}
log = logging.getLogger("qlung_edge.daemon")


class DaemonError(QLungError):
    pass


@dataclass
class DaemonConfig:
    """Every option of the daemon; the CLI flags and the TOML file fill the same fields."""

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
    max_pending: int = 8
    """Accepted windows that may wait for inference before the oldest is dropped."""
    drop_when_behind: bool | None = None
    """Drop the oldest pending window when inference falls behind (live sources), or make the source wait
    (a file read as fast as possible: nothing is gained by skipping). None: decide from the source."""
    smoothing_windows: int = 8
    gate: GateConfig = field(default_factory=GateConfig)
    emit_gated: bool = True
    classify_gated: bool = False
    """Evaluation only: run the model on gated windows too and put its answer in their events (never in
    the examination's result), to measure what gating buys."""
    http: str | None = None
    """host:port for /health and /metrics; None: off. Bound to 127.0.0.1 unless a host is given."""
    audit_dir: Path | None = None
    audit_minutes: float = 2.0
    audit_max_mb: float = 200.0
    stream_name: str = field(default_factory=socket.gethostname)
    block_queue: int = 1024
    """Source blocks buffered between capture and processing (capture waits when full, losing nothing)."""

    @classmethod
    def from_toml(cls, path: Path, overrides: dict[str, Any] | None = None) -> DaemonConfig:
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise DaemonError(f"{path}: cannot read the config ({err})") from None
        except tomllib.TOMLDecodeError as err:
            raise DaemonError(f"{path}: not valid TOML ({err})") from None
        return cls.from_dict({**values, **(overrides or {})}, where=str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> DaemonConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DaemonError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        gate = values.pop("gate", None)
        try:
            config = cls(**values)
            if isinstance(gate, dict):
                config.gate = GateConfig(**gate)
            elif isinstance(gate, GateConfig):
                config.gate = gate
        except TypeError as err:
            raise DaemonError(f"{where}: {err}") from None
        for name in ("bundle", "checkpoint", "audit_dir"):
            value = getattr(config, name)
            if value is not None and not isinstance(value, Path):
                setattr(config, name, Path(value))
        if isinstance(config.sinks, str):
            config.sinks = [config.sinks]
        return config

    def check(self) -> None:
        if self.bundle is None:
            raise DaemonError("no bundle: give --bundle DIR or `bundle = ...` in the config")
        if not self.source:
            raise DaemonError("no source: give --source mic:|serial:PORT|file:PATH|stdin: or `source = ...`")
        if self.hop_seconds is not None and self.hop_seconds <= 0:
            raise DaemonError(f"hop_seconds must be positive, got {self.hop_seconds}")
        for name in ("threads", "max_batch", "max_pending", "smoothing_windows", "block_queue"):
            if getattr(self, name) < 1:
                raise DaemonError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise DaemonError(f"http address {text!r}: expected [HOST:]PORT") from None


@dataclass(eq=False)
class _Pending:
    window: Window
    ready: float
    """time.monotonic() when the window's last sample was processed."""
    reasons: tuple[str, ...]
    status: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
        from firmware_bridge.sources import open_source

        config.check()
        assert config.bundle is not None
        self.config = config
        self.started = time.monotonic()
        self.metrics = Metrics()
        self._backend_factory = backend_factory or _default_backend
        self.bundle = load_bundle(config.bundle)
        self.backend = self._backend_factory(self.bundle, config)
        quality = self.bundle.quality_config()
        rate = self.bundle.sample_rate
        hop = config.hop_seconds if config.hop_seconds is not None else float(self.bundle.manifest["hop_seconds"])
        self.hop_seconds = hop
        self.cutter = WindowCutter(self.bundle.window_samples, round(hop * rate), quality)
        self.gate = Gate(quality, config.gate)
        self.smoother = ExamSmoother(self.bundle.classes, config.smoothing_windows)
        self.resampler = StreamResampler(rate)
        self.source = source if source is not None else open_source(config.source, **config.source_options)
        self.sinks = sinks if sinks is not None else [open_sink(s) for s in config.sinks]
        self.audit = None
        if config.audit_dir is not None:
            from qlung_edge.audit import AuditRecorder

            self.audit = AuditRecorder(
                config.audit_dir, keep_seconds=config.audit_minutes * 60, max_bytes=int(config.audit_max_mb * 1e6)
            )
        live = getattr(self.source, "live", True)
        self._drop_when_behind = live if config.drop_when_behind is None else config.drop_when_behind
        self._blocks: queue.Queue[Any] = queue.Queue(maxsize=config.block_queue)
        self._pending: deque[_Pending] = deque()
        self._pending_lock = threading.Condition()
        self._processing_done = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._seq = 0
        self._emit_lock = threading.Lock()
        self._errors: list[str] = []
        self._last_block = time.monotonic()
        self._threads: list[threading.Thread] = []
        self.server: StatusServer | None = None
        if config.http:
            host, port = parse_address(config.http)
            self.server = StatusServer(self.metrics, self.health, host, port)
        self.start_seconds = time.monotonic() - self.started
        self._cpu_at_run, self._wall_at_run = time.process_time(), time.monotonic()

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Finish the windows already cut, flush the sinks, return from `run()`."""
        self._stop.set()
        self.source.stop()

    def reload(self) -> None:
        """Load the bundle again (from the same path) before the next batch; the audio stream goes on."""
        self._reload.set()
        with self._pending_lock:
            self._pending_lock.notify_all()

    def health(self) -> dict[str, Any]:
        alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        quiet = time.monotonic() - self._last_block
        status = "ok" if alive and quiet < 10 else "unhealthy"
        return {
            "status": status,
            "source": self.source.name,
            "seconds_since_audio": round(quiet, 3),
            "backend": self.backend.name,
            "bundle": str(self.bundle.path),
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

    def emit(self, kind: str, **body: Any) -> dict[str, Any]:
        with self._emit_lock:
            event = {
                "schema": EVENT_SCHEMA,
                "type": kind,
                "stream": self.config.stream_name,
                "seq": self._seq,
                "time": _now(),
                **body,
            }
            self._seq += 1
            for sink in self.sinks:
                try:
                    sink.send(event)
                except Exception as err:  # a broken sink must not stop the others or the audio
                    self.metrics.add("sink_errors")
                    self._note_error(f"{sink.name}: {err}")
            self.metrics.add("events")
        return event

    def _note_error(self, text: str) -> None:
        if len(self._errors) < 1000:
            self._errors.append(text)
        log.error(text)

    # ----------------------------------------------------------------- threads

    def run(self) -> int:
        """Run to the end of the source or to `stop()`; 0 if it ended cleanly, 1 after a source error."""
        self._cpu_at_run, self._wall_at_run = time.process_time(), time.monotonic()
        if self.server is not None:
            self.server.start()
        self.emit(
            "start",
            bundle=str(self.bundle.path),
            model=self.bundle.manifest.get("name"),
            backend=self.backend.name,
            backend_details=self.backend.details,
            source=self.source.name,
            hop_seconds=self.hop_seconds,
            window_seconds=self.bundle.window_samples / self.bundle.sample_rate,
            start_seconds=round(self.start_seconds, 3),
            http=None if self.server is None else "{}:{}".format(*self.server.address),
        )
        self._threads = [
            threading.Thread(target=self._capture, name="capture", daemon=True),
            threading.Thread(target=self._process, name="process", daemon=True),
            threading.Thread(target=self._infer, name="infer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            while thread.is_alive():
                thread.join(timeout=0.2)
        for note in self.source.notes:
            self.emit("source", note=note)
        self.emit("stop", counts=self.counts(), source_stats=self.source.stats(), errors=self._errors[-10:])
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
        return 1 if any(e.startswith("source") for e in self._errors) else 0

    def counts(self) -> dict[str, Any]:
        snap = self.metrics.snapshot()
        return {
            **snap["counts"],
            "gated_by_reason": snap["gated"],
            "cpu_seconds": snap["cpu_seconds"],
            "stream_cpu_seconds": round(time.process_time() - self._cpu_at_run, 3),
            "stream_wall_seconds": round(time.monotonic() - self._wall_at_run, 3),
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def _capture(self) -> None:
        try:
            for block in self.source.blocks():
                self._blocks.put(block)
        except Exception as err:
            self._note_error(f"source {self.source.name}: {err}")
            self.emit("error", where="source", message=str(err))
        finally:
            self._blocks.put(None)

    def _process(self) -> None:
        try:
            while (block := self._blocks.get()) is not None:
                self._last_block = time.monotonic()
                self.metrics.add("samples", len(block.samples))
                if not np.isfinite(block.samples).all():
                    # A device or pipe that sends NaN/inf: keep the timeline, treat the block as lost audio.
                    bad = int(np.count_nonzero(~np.isfinite(block.samples)))
                    self.metrics.add("nonfinite_samples", bad)
                    self.emit(
                        "source", note=f"{bad} NaN/inf samples at {block.timestamp:.2f} s: block treated as a gap"
                    )
                    block = replace(
                        block, samples=np.nan_to_num(block.samples, nan=0.0, posinf=0.0, neginf=0.0), gap=True
                    )
                if self.audit is not None:
                    self.audit.add(block.timestamp, block.sample_rate, block.samples)
                if block.gap:
                    self.metrics.add("source_gaps")
                    self.metrics.add("source_gap_seconds", block.duration)
                    start = self.resampler.position()
                    length = round(len(block.samples) * self.resampler.out_rate / block.sample_rate)
                    self.cutter.mark_gap(start, start + length)
                audio = self.resampler.push(block.samples, block.sample_rate)
                for window in self.cutter.push(audio):
                    self._queue(window)
            for window in self.cutter.push(self.resampler.flush()):  # the resampler's last few milliseconds
                self._queue(window)
        except Exception as err:
            self._note_error(f"processing: {err}")
            self.emit("error", where="processing", message=str(err))
            self.source.stop()
            while self._blocks.get() is not None:  # let capture finish
                pass
        finally:
            with self._pending_lock:
                self._processing_done = True
                self._pending_lock.notify_all()

    def _queue(self, window: Window) -> None:
        self.metrics.add("windows")
        reasons = self.gate.decide(window)
        status = "gated" if reasons else "classified"
        if reasons:
            self.metrics.gate(reasons)
            if not self.config.classify_gated:
                window = replace(window, samples=np.zeros(0, np.float32))
        else:
            self.metrics.add("windows_accepted")
        with self._pending_lock:
            if not self._drop_when_behind:
                while (
                    sum(p.status == "classified" for p in self._pending) >= self.config.max_pending
                    and not self._stop.is_set()
                ):
                    self._pending_lock.wait(timeout=0.5)
            self._pending.append(_Pending(window, time.monotonic(), reasons, status))
            waiting = [p for p in self._pending if p.status == "classified"]
            for old in waiting[: max(0, len(waiting) - self.config.max_pending)]:
                old.status = "dropped"
                old.window = replace(old.window, samples=np.zeros(0, np.float32))
                self.metrics.add("windows_dropped")
            self._pending_lock.notify_all()

    def _take(self) -> list[_Pending] | None:
        """The pending windows up to and including `max_batch` accepted ones; None when all is done."""
        with self._pending_lock:
            while not self._pending and not self._processing_done and not self._reload.is_set():
                self._pending_lock.wait(timeout=0.5)
            if not self._pending:
                return None if self._processing_done else []
            taken: list[_Pending] = []
            accepted = 0
            while self._pending and accepted < self.config.max_batch:
                item = self._pending.popleft()
                taken.append(item)
                accepted += item.status == "classified"
            self._pending_lock.notify_all()
            return taken

    def _infer(self) -> None:
        try:
            while (taken := self._take()) is not None:
                if self._reload.is_set():
                    self._do_reload()
                if not taken:
                    continue
                classify = [p for p in taken if len(p.window.samples) and p.status != "dropped"]
                probabilities = np.zeros((0, len(self.bundle.classes)), np.float32)
                if classify:
                    probabilities = self.backend.run(np.stack([p.window.samples for p in classify]))
                    self.metrics.add("batches")
                    self.metrics.add("inferences", len(classify))
                rows = iter(probabilities)
                for item in taken:
                    self._report(item, next(rows) if item in classify else None)
        except Exception as err:
            self._note_error(f"inference: {err}")
            self.emit("error", where="inference", message=str(err))
            self.stop()
            with self._pending_lock:
                self._processing_done = True

    def _report(self, item: _Pending, probabilities: np.ndarray | None) -> None:
        w = item.window
        q = w.quality
        body: dict[str, Any] = {
            "window": {"index": w.index, "start": round(w.start, 4), "end": round(w.end, 4)},
            "status": item.status,
            "quality": {
                "aqs": round(q.aqs, 4),
                "rms_dbfs": round(q.rms_dbfs, 2),
                "entropy": round(q.live_entropy, 4),
                "clipped_fraction": round(q.clipped_fraction, 5),
                "dropout_seconds": round(q.dropout_seconds, 3),
                "gap_seconds": round(w.gap_seconds, 3),
            },
        }
        if item.status == "gated":
            if not self.config.emit_gated:
                return
            body["reasons"] = list(item.reasons)
            body["advice"] = ADVICE.get(item.reasons[0], "reposition the chest piece")
        if probabilities is not None:
            classes = self.bundle.classes
            body["prediction"] = {
                "label": classes[int(np.argmax(probabilities))],
                "probabilities": {c: round(float(p), 5) for c, p in zip(classes, probabilities)},
            }
            if item.status == "classified":
                body["exam"] = self.smoother.add(probabilities)
        latency = time.monotonic() - item.ready
        body["latency_ms"] = round(latency * 1000, 2)
        event = self.emit("window", **body)
        if item.status == "classified":
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
            bundle = load_bundle(self.config.bundle)
            backend = self._backend_factory(bundle, self.config)
        except Exception as err:
            self._note_error(f"reload: {err}")
            self.emit("reload", ok=False, message=str(err), bundle=str(self.config.bundle))
            return
        old, self.backend, self.bundle = self.backend, backend, bundle
        old.close()
        self.gate.quality = bundle.quality_config()
        self.smoother = ExamSmoother(bundle.classes, self.config.smoothing_windows)
        self.metrics.add("reloads")
        self.emit(
            "reload",
            ok=True,
            bundle=str(bundle.path),
            model=bundle.manifest.get("name"),
            manifest_sha256=bundle.manifest.get("manifest_sha256"),
            backend=backend.name,
        )


def _default_backend(bundle: Bundle, config: DaemonConfig) -> Backend:
    return open_backend(
        bundle,
        kind=config.backend,
        precision=config.precision,
        threads=config.threads,
        max_batch=config.max_batch,
        checkpoint=config.checkpoint,
    )


def check_setup(config: DaemonConfig) -> list[str]:
    """`--check`: the config, the bundle (verified), the backend on the bundle's check windows, the source."""
    from firmware_bridge.sources import open_source

    config.check()
    assert config.bundle is not None
    lines = []
    bundle = load_bundle(config.bundle)
    lines.append(
        f"bundle {bundle.path}: verified ({bundle.manifest.get('name')}, {len(bundle.manifest['files'])} files)"
    )
    backend = _default_backend(bundle, config)
    checks = np.load(bundle.file(CHECK_FILE))
    got = backend.run(checks["waveform"])
    worst = float(np.abs(got - checks["probabilities"]).max())
    backend.close()
    tolerance = 0.05 if config.precision == "int8" else 1e-3
    if not worst <= tolerance:
        raise DaemonError(f"{bundle.path}: backend {backend.name} differs from the export by {worst:.2e}")
    lines.append(f"backend {backend.name}: {len(got)} check windows, max |dp| {worst:.2e} vs export")
    source = open_source(config.source, **config.source_options)
    lines.append(f"source {source.name}: opens")
    for spec in config.sinks:
        if spec.startswith("jsonl:") and spec not in ("jsonl:", "jsonl:-"):
            folder = Path(spec[len("jsonl:") :].split("?")[0]).parent
            if not folder.exists() and not folder.parent.exists():
                raise DaemonError(f"sink {spec}: folder {folder} cannot be created")
        lines.append(f"sink {spec}: ok")
    if config.http:
        lines.append("http {}:{}: will listen".format(*parse_address(config.http)))
    return lines

"""The daemon's counters, a latency histogram, and a localhost HTTP endpoint for health and Prometheus.

`/metrics` is written by prometheus_client (standard names and base units, the process collector, a build
info metric); the daemon's own figures come from `Metrics` through `DaemonCollector` at each scrape.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from qlung_edge.live import LiveFeed

log = logging.getLogger("qlung_edge.telemetry")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds from a window's last sample arriving to its event being sent."""


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def thread_wakeups() -> int | None:
    """Voluntary context switches of the calling thread so far (each is a sleep and a wake-up); None where the
    kernel does not say (not Linux)."""
    try:
        with open("/proc/thread-self/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM). getrusage's ru_maxrss would do, except that Linux
    carries it across exec: a daemon spawned by a big parent would report the parent's peak."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Metrics:
    """Thread-safe counters; `snapshot()` for JSON, `prometheus()` for scraping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.gated: Counter[str] = Counter()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self.latencies: list[float] = []
        """Every latency, for p50/p99 in benchmarks and tests (bounded)."""
        self.gauges: dict[str, float] = {}

    def add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counts[name] += value  # type: ignore[assignment]

    def gate(self, reasons: tuple[str, ...]) -> None:
        with self._lock:
            for reason in reasons:
                self.gated[reason] += 1

    def latency(self, seconds: float) -> None:
        with self._lock:
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
                    break
            else:
                self._buckets[-1] += 1
            self._latency_sum += seconds
            self._latency_count += 1
            if len(self.latencies) < 1_000_000:
                self.latencies.append(seconds)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_seconds": round(time.monotonic() - self.started, 3),
                "counts": dict(self.counts),
                "gated": dict(self.gated),
                "gauges": dict(self.gauges),
                "cpu_seconds": round(time.process_time(), 3),
                "rss_bytes": rss_bytes(),
            }

    def histogram(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative latency buckets (Prometheus `le` labels) and the sum of latencies."""
        with self._lock:
            buckets, total = list(self._buckets), self._latency_sum
        cumulative, out = 0, []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets):
            cumulative += n
            out.append((bound, cumulative))
        return out, total


COUNTERS = (
    ("windows", "Windows cut from the stream."),
    ("windows_accepted", "Windows that passed the quality gate."),
    ("windows_dropped", "Accepted windows dropped because inference fell behind."),
    ("windows_gated_after_model", "Windows the learned quality estimate refused."),
    ("inferences", "Windows classified."),
    ("batches", "Backend calls."),
    ("verdicts", "Examinations ended with a verdict."),
    ("samples", "Audio samples received from the source, at its rate."),
    ("source_gaps", "Concealed device gaps (blocks of lost frames)."),
    ("source_gap_seconds", "Seconds of concealed device silence."),
    ("events", "Events sent to the sinks."),
    ("sink_errors", "Events a sink raised an error on."),
    ("reloads", "Bundle reloads (SIGHUP)."),
)


class DaemonCollector:
    """The daemon's figures as Prometheus metric families, read at each scrape."""

    def __init__(self, metrics: Metrics, sinks: Callable[[], list[Any]], info: Callable[[], dict[str, str]]) -> None:
        self.metrics, self.sinks, self.info = metrics, sinks, info

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        snap = self.metrics.snapshot()
        counts = snap["counts"]
        for key, help_text in COUNTERS:
            yield CounterMetricFamily(f"qlung_{key}", help_text, value=counts.get(key, 0))
        gated = CounterMetricFamily("qlung_windows_gated", "Windows refused by the gate, by reason.", labels=["reason"])
        for reason, value in sorted(snap["gated"].items()):
            gated.add_metric([reason], value)
        yield gated
        buckets, total = self.metrics.histogram()
        yield HistogramMetricFamily(
            "qlung_window_latency_seconds", "A window's last sample to its event.", buckets=buckets, sum_value=total
        )
        health = self.sinks()
        connected = GaugeMetricFamily("qlung_sink_connected", "1 while the sink can deliver.", labels=["sink"])
        buffered = GaugeMetricFamily("qlung_sink_buffered_events", "Events waiting in a sink.", labels=["sink"])
        dropped = CounterMetricFamily("qlung_sink_dropped_events", "Events a sink lost for good.", labels=["sink"])
        for sink in health:
            connected.add_metric([sink.name], float(sink.connected))
            buffered.add_metric([sink.name], sink.buffered)
            dropped.add_metric([sink.name], sink.dropped)
        yield from (connected, buffered, dropped)
        yield InfoMetricFamily("qlung_build", "qlung-edge version, model and backend.", value=self.info())
        for name, value in sorted(snap["gauges"].items()):
            yield GaugeMetricFamily(f"qlung_{name}", name.replace("_", " ").capitalize() + ".", value=value)


def prometheus_registry(
    metrics: Metrics, sinks: Callable[[], list[Any]] = list, info: Callable[[], dict[str, str]] = dict
) -> Any:
    """A registry with the daemon's metrics and the process' own (CPU seconds, memory, open files, start time)."""
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    registry.register(DaemonCollector(metrics, sinks, info))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


PAGE = Path(__file__).resolve().parent / "web" / "bedside.html"
"""The bedside page: one file, no external assets, so it works on a ward network without internet."""

MAX_BODY = 4096
"""Largest control message accepted (bytes)."""


IDLE_SECONDS = 30.0
"""A connection that sends nothing (or reads nothing) for this long is closed."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    """Connections the kernel queues before accept (the default 5 refused a burst of /health checks)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up early is routine, not a traceback on the daemon's stderr."""
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            log.debug("http client %s went away", client_address)
            return
        log.exception("http: request from %s failed", client_address)


class StatusServer:
    """`GET /health` (JSON; 503 when unhealthy, 200 when ok or degraded), `GET /metrics` (Prometheus), with
    a `live` feed the bedside page (`GET /`, updates from `GET /live`), and with a `control` callback
    `POST /exam/start` and `POST /exam/stop` (a JSON object of identifiers), in a daemon thread."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        control: Callable[..., dict[str, Any]] | None = None,
        registry: Any = None,
        live: LiveFeed | None = None,
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                if owner.control is None or path not in ("/exam/start", "/exam/stop"):
                    self._reply(404, "text/plain", b"not found: POST /exam/start or /exam/stop\n")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > MAX_BODY:
                        raise ValueError(f"body of {length} bytes; at most {MAX_BODY}")
                    raw = self.rfile.read(length) if length else b"{}"
                    fields = json.loads(raw.decode("utf-8") or "{}")
                    if not isinstance(fields, dict):
                        raise ValueError("the body must be a JSON object")
                    answer = owner.control(path.rsplit("/", 1)[1], **fields)
                except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
                    self._reply(400, "application/json", json.dumps({"ok": False, "error": str(err)}).encode())
                    return
                self._reply(200, "application/json", json.dumps(answer).encode())

            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(owner.registry))
                elif self.path.split("?")[0] in ("/", "/index.html") and owner.live is not None:
                    self._reply(200, "text/html; charset=utf-8", PAGE.read_bytes())
                elif self.path.split("?")[0] == "/live" and owner.live is not None:
                    self._stream(owner.live)
                elif self.path.split("?")[0] in ("/health", "/healthz", "/"):
                    state = owner.health()
                    code = 503 if state.get("status") == "unhealthy" else 200  # degraded still classifies
                    self._reply(code, "application/json", json.dumps(state).encode())
                else:
                    self._reply(404, "text/plain", b"not found: try /health or /metrics\n")

            def _stream(self, live: LiveFeed) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    for chunk in live.messages():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the page was closed
                    pass

            def _reply(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            timeout = IDLE_SECONDS  # an idle or stalled client loses its thread after this, not never

            def log_message(self, *args: Any) -> None:  # quiet: the daemon's stdout may carry events
                pass

        self.metrics = metrics
        self.health = health
        self.control = control
        self.registry = registry if registry is not None else prometheus_registry(metrics)
        self.live = live
        """With a live feed: the bedside page at / and its Server-Sent Events at /live."""
        self.server = _Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
        self.server.shutdown()
        self.server.server_close()

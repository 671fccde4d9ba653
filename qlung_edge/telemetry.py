"""The daemon's counters, a latency histogram, and a localhost HTTP endpoint for health and Prometheus.

The exposition format is Prometheus' plain text (version 0.0.4); a handful of counters do not need a client
library on the device.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds from a window's last sample arriving to its event being sent."""


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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

    def prometheus(self) -> str:
        snap = self.snapshot()
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP qlung_{name} {help_text}")
            lines.append(f"# TYPE qlung_{name} {kind}")
            lines.extend(f"qlung_{name}{labels} {value:g}" for labels, value in samples)

        counts = snap["counts"]
        for key, help_text in (
            ("windows", "Windows cut from the stream."),
            ("windows_accepted", "Windows that passed the quality gate."),
            ("windows_dropped", "Accepted windows dropped because inference fell behind."),
            ("inferences", "Windows classified."),
            ("batches", "Backend calls."),
            ("samples", "Audio samples received from the source, at its rate."),
            ("source_gaps", "Concealed device gaps (blocks of lost frames)."),
            ("source_gap_seconds", "Seconds of concealed device silence."),
            ("events", "Events sent to the sinks."),
            ("reloads", "Bundle reloads (SIGHUP)."),
        ):
            metric(f"{key}_total", "counter", help_text, [("", counts.get(key, 0))])
        metric(
            "windows_gated_total",
            "counter",
            "Windows refused by the quality gate, by reason.",
            [(f'{{reason="{r}"}}', v) for r, v in sorted(snap["gated"].items())] or [('{reason="none"}', 0)],
        )
        with self._lock:
            buckets = list(self._buckets)
            total, count = self._latency_sum, self._latency_count
        cumulative = 0
        samples = []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets):
            cumulative += n
            samples.append((f'_bucket{{le="{bound}"}}', cumulative))
        lines.append("# HELP qlung_window_latency_seconds Window's last sample to its event.")
        lines.append("# TYPE qlung_window_latency_seconds histogram")
        lines.extend(f"qlung_window_latency_seconds{labels} {value:g}" for labels, value in samples)
        lines.append(f"qlung_window_latency_seconds_sum {total:g}")
        lines.append(f"qlung_window_latency_seconds_count {count}")
        metric("cpu_seconds_total", "counter", "CPU time of the daemon process.", [("", snap["cpu_seconds"])])
        metric("resident_memory_bytes", "gauge", "Resident set size.", [("", snap["rss_bytes"])])
        metric("uptime_seconds", "gauge", "Seconds since start.", [("", snap["uptime_seconds"])])
        for name, value in sorted(snap["gauges"].items()):
            metric(name, "gauge", name.replace("_", " ").capitalize() + ".", [("", value)])
        return "\n".join(lines) + "\n"


MAX_BODY = 4096
"""Largest control message accepted (bytes)."""


class StatusServer:
    """`GET /health` (JSON; 503 when unhealthy), `GET /metrics` (Prometheus) and, with a `control` callback,
    `POST /exam/start` and `POST /exam/stop` (a JSON object of identifiers), in a daemon thread."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        control: Callable[..., dict[str, Any]] | None = None,
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
                    body = owner.metrics.prometheus().encode()
                    self._reply(200, "text/plain; version=0.0.4", body)
                elif self.path.split("?")[0] in ("/health", "/healthz", "/"):
                    state = owner.health()
                    code = 200 if state.get("status") == "ok" else 503
                    self._reply(code, "application/json", json.dumps(state).encode())
                else:
                    self._reply(404, "text/plain", b"not found: try /health or /metrics\n")

            def _reply(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: the daemon's stdout may carry events
                pass

        self.metrics = metrics
        self.health = health
        self.control = control
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

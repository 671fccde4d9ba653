"""`qlung-edge bench` in its short mode: every speed figure of ARCHITECTURE.md is produced (not how fast)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

HOPS = (2, 1, 0.5, 0.25)
EXPECTED = [
    "AQS streaming, 1 s blocks",
    "AQS per 1 s hop: streaming vs recomputing 8 s",
    "signal path to the gate, 4 kHz device",
    "signal path to the gate, 16 kHz device",
    "signal path to the gate, 44.1 kHz device",
    "link decoder, clean",
    "front end, torch eager, 1 window",
    "front end, ONNX Runtime, 1 window",
    "front end + model, ORT FP32, 1 window, 1 thread",
    "ORT FP32, batch 4, per window",
    "ORT FP32, batch 16, per window",
    "ORT FP32: 2 threads vs 1, 1 window",
    "INT8 vs FP32 (ORT), 1 window",
    "INT8 Score drop (from export, held-out cycles)",
    "parameters",
    "GFLOPs per 8 s window (front end included)",
    "ORT FP32 achieved, 1 thread",
    "ORT FP32 vs torch eager, 1 window",
    "INT8 per layer: convolutions >= 1.5x faster",
    *(f"front end {variant}, 1 s of new audio" for variant in ("dft", "fft", "pocketfft")),
    *(
        f"{path}: CPU per audio s at {hop} s hop"
        for path in ("full window", "incremental")
        for hop in (2, 1, 0.5, 0.25)
    ),
    *(
        f"{path}, read as fast as possible: CPU per audio s at {hop} s hop"
        for path in ("full window", "incremental")
        for hop in (1, 0.25)
    ),
    "incremental vs full window, CPU at 1 s hop",
    "incremental vs full window, CPU at 1 s hop, read as fast as possible",
    "incremental at 0.25 s hop vs full window at 1 s hop",
    "incremental at 0.25 s hop vs full window at 1 s hop, read as fast as possible",
    "full window: what pacing adds at 1 s hop",
    "incremental: what pacing adds at 1 s hop",
    "full window: window-to-event latency p99, 1 s hop",
    "incremental: window-to-event latency p99, 1 s hop",
    "incremental vs full window, p99 latency",
    "default path: peak RSS",
    "default path: start (spawn to first event)",
    "FLOPs an audio second needs at 1 s hop",
    "FLOPs the full-window path executes per audio s",
    "INT8 (whole model): CPU per audio s at 1 s hop",
    "default path: real-time factor, file as fast as possible",
    "overload: audio samples lost",
]


def test_bench_produces_every_figure_and_the_page(bundle: Path, tmp_path: Path) -> None:
    out, page = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    args = ["bench", "all", "--bundle", str(bundle), "--quick", "--threads", "2", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", *args, "--markdown", str(page)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = {f["name"]: f for f in report["figures"]}
    missing = [name for name in EXPECTED if name not in figures]
    assert not missing, missing
    for name in EXPECTED:
        value = figures[name]["value"]
        assert value is not None and math.isfinite(value), (name, figures[name])
    # Every figure with a design target says whether it meets it.
    assert all(f["meets"] is not None for f in report["figures"] if f["target"])
    assert figures["overload: audio samples lost"]["value"] == 0
    machine = report["machine"]
    assert machine["cores"] >= 1 and "onnxruntime" in machine["versions"]
    text = page.read_text()
    assert text.startswith("# Benchmarks") and "qlung-edge bench all" in text
    assert all(f"| {name} |" in text for name in EXPECTED)


def test_a_daemon_figure_is_the_median_run_of_an_odd_count() -> None:
    from qlung_edge.bench import _by_thread, _median_run

    runs = [{"cpu_per_audio_second_ms": cpu, "threads_ms": {"capture": cpu}, "wakeups_per_second": 10.0}
            for cpu in (5.0, 9.0, 6.0)]  # fmt: skip
    middle = _median_run(runs)
    assert middle["cpu_per_audio_second_ms"] == 6.0 and middle["threads_ms"] == {"capture": 6.0}
    assert middle["runs"] == 3 and "median of 3 runs" in _by_thread(middle) and "10.0 wake-ups" in _by_thread(middle)
    assert _median_run(runs[:1])["runs"] == 1
    with pytest.raises(ValueError):
        _median_run(runs[:2])


def test_latency_counts_every_window_that_went_through_the_model() -> None:
    """A bundle whose learned gate refuses the synthetic stream still has latencies to measure (they were NaN)."""
    from qlung_edge.bench import _through_the_model

    assert _through_the_model({"status": "classified", "reasons": None})
    assert _through_the_model({"status": "gated", "reasons": ["estimated_poor"]})
    assert not _through_the_model({"status": "gated", "reasons": ["too_quiet"]})  # refused before the model
    assert not _through_the_model({"status": "dropped"})

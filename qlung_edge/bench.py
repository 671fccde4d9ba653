"""Speed measurements printed next to the design targets (DESIGN.md section 8).

Figures are medians of repeated runs after a warm-up, on one thread; ratios compare variants measured in the
same run, since absolute times drift on a shared machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np

from qlung_edge.quality import QualityConfig, StreamingQuality, assess

AQS_TARGET_X_REALTIME = 2000.0


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_quality(seconds: float = 60.0, repeats: int = 5) -> list[str]:
    """AQS throughput in x real time: whole signal, and streamed in 1 s and 0.1 s blocks."""
    config = QualityConfig()
    rate = config.sample_rate
    rng = np.random.default_rng(0)
    signal = (0.05 * rng.standard_normal(int(seconds * rate))).astype(np.float32)

    def streamed(block: int) -> Callable[[], object]:
        def run() -> None:
            stream = StreamingQuality(config)
            for i in range(0, len(signal), block):
                stream.push(signal[i : i + block])

        return run

    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"]
    lines.append(f"AQS on {seconds:g} s of 16 kHz audio, median of {repeats}; target >= {AQS_TARGET_X_REALTIME:g}x")
    whole = _median_seconds(lambda: assess(signal, rate, config), repeats)
    for name, elapsed in (
        ("whole signal", whole),
        ("stream, 1 s blocks", _median_seconds(streamed(rate), repeats)),
        ("stream, 0.1 s blocks", _median_seconds(streamed(rate // 10), repeats)),
    ):
        factor = seconds / elapsed
        verdict = "meets" if factor >= AQS_TARGET_X_REALTIME else "misses"
        lines.append(
            f"  {name:<22}{factor:>9.0f}x real time  ({verdict} target; {elapsed / whole:.2f}x the whole-signal time)"
        )
    return lines

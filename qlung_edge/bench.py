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


def machine_line() -> str:
    return f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"


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

    lines = [f"AQS on {seconds:g} s of 16 kHz audio, median of {repeats}; target >= {AQS_TARGET_X_REALTIME:g}x"]
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


def bench_link(megabytes: float = 8.0, repeats: int = 3, chunk: int = 4096) -> list[str]:
    """Link decoder throughput in MB/s: clean stream, 1 % corrupted frames, and bytes to audio blocks."""
    from firmware_bridge.link import LinkReceiver
    from firmware_bridge.protocol import FrameDecoder, SampleFormat, encode_audio

    rate, per_frame = 8000, 256
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(per_frame)).astype(np.float32)
    one = len(encode_audio(samples, 0, 0, rate, SampleFormat.INT16))
    count = int(megabytes * 1e6 / one)
    frames = [encode_audio(samples, i % 65536, i * per_frame * 125, rate, SampleFormat.INT16) for i in range(count)]
    clean = b"".join(frames)
    damaged = bytearray(clean)
    for i in rng.choice(count, size=count // 100, replace=False):
        damaged[i * one + 20] ^= 0x10  # one flipped payload bit: the CRC must catch it
    chunks = [clean[i : i + chunk] for i in range(0, len(clean), chunk)]
    damaged_chunks = [bytes(damaged[i : i + chunk]) for i in range(0, len(damaged), chunk)]

    def decode(parts: list[bytes]) -> Callable[[], object]:
        def run() -> None:
            decoder = FrameDecoder()
            for part in parts:
                decoder.feed(part)

        return run

    def receive() -> None:
        receiver = LinkReceiver()
        for part in chunks:
            receiver.feed(part)

    size = len(clean) / 1e6
    lines = [
        f"link decoder on {size:.1f} MB of {one}-byte int16 frames fed in {chunk}-byte chunks, median of {repeats}"
    ]
    for name, run in (
        ("decode, clean", decode(chunks)),
        ("decode, 1 % bad CRC", decode(damaged_chunks)),
        ("decode + timeline", receive),
    ):
        speed = size / _median_seconds(run, repeats)
        streams = speed * 1e6 / (rate * 2)
        lines.append(f"  {name:<22}{speed:>9.1f} MB/s  ({streams:,.0f}x one 8 kHz int16 stream)")
    return lines

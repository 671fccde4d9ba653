"""`qlung-edge bench`: every speed target of ARCHITECTURE.md, measured on this machine, side by side.

Each figure is a median (and p99 where latency matters) of repeated runs after a warm-up. Comparisons (torch vs
ONNX Runtime FP32 vs INT8, streaming vs recomputing the AQS, 1 vs N threads) are measured in the same run and
reported as ratios, since absolute times drift on a shared machine. `write_markdown` turns one run into
BENCHMARKS.md, so the page is produced by the command, never typed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.blocks import AudioBlock
from firmware_bridge.link import LinkReceiver
from firmware_bridge.protocol import FrameDecoder, SampleFormat, encode_audio
from firmware_bridge.sources import FileSource
from qlung_edge import FRAME_HOP, FRAME_LENGTH, FRAMES_PER_WINDOW, MODEL_SAMPLE_RATE, WINDOW_SAMPLES
from qlung_edge.backends import OnnxBackend
from qlung_edge.bundle import INT8_FILE, MODEL_FILE, load_bundle
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.events import GateReason
from qlung_edge.frontend import open_frontend
from qlung_edge.onnx_sessions import onnx_session
from qlung_edge.quality import QualityConfig, StreamingQuality, assess
from qlung_edge.sinks import CollectSink
from qlung_edge.streaming import SignalPath

AQS_TARGET_X_REALTIME = 2000.0
SECTIONS = ("quality", "link", "frontend", "model", "daemon", "training")


@dataclass
class Figure:
    section: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    meets: bool | None = None
    note: str = ""

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:,.4g}"
        verdict = "" if self.meets is None else ("  meets" if self.meets else "  MISSES")
        target = f"  (target {self.target}{verdict})" if self.target else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"  {self.name:<46}{value:>12} {self.unit:<12}{target}{note}"


@dataclass
class BenchRun:
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    command: str = ""

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "command": self.command, "figures": [asdict(f) for f in self.figures]}


def _timed(run: Callable[[], object], repeats: int, warmup: int = 1) -> np.ndarray:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return np.array(times)


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    return float(np.median(_timed(run, repeats)))


# --------------------------------------------------------------------------- the machine


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def peak_gflops_per_core() -> tuple[float | None, str]:
    """FP32 peak of one core from its vector width and clock: clock x lanes x 2 (FMA) x 2 FMA pipes.

    AMD Zen 4 runs AVX-512 through 256-bit pipes, so it counts 8 lanes there; a rough physical ceiling, not a
    promise (turbo, thermal limits and memory bandwidth decide the rest).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        ghz = float(info.get("cpu MHz", "")) / 1000
    except ValueError:
        return None, "clock unknown"
    amd = "AMD" in info.get("vendor_id", "") + info.get("model name", "")
    if "avx512f" in flags and not amd:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx512f" in flags:
        lanes, isa = 8, "AVX2/256-bit" + (" (AVX-512 on 256-bit pipes)" if "avx512f" in flags else "")
    elif "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    fma_pipes = 2
    return ghz * lanes * 2 * fma_pipes, f"{ghz:.2f} GHz x {lanes} lanes x 2 (FMA) x {fma_pipes} pipes, {isa}"


def machine_info(threads: int) -> dict[str, Any]:
    info = _cpuinfo()
    versions: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("onnxruntime", "scipy", "soxr", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    peak, how = peak_gflops_per_core()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads_compared": threads,
        "platform": platform.platform(),
        "versions": versions,
        "peak_gflops_per_core": peak,
        "peak_how": how,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- sections


def breath_like(seconds: float, rate: int = MODEL_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Band-limited noise with a breathing envelope, made on the spot: audio the AQS gate accepts (a bundle's
    learned gate may still refuse it, after the model pass the benchmarks time)."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    sos = butter(4, [100, min(1800, rate / 2 - 100)], btype="band", fs=rate, output="sos")
    noise = sosfilt(sos, rng.standard_normal(n))
    t = np.arange(n) / rate
    envelope = 0.3 + 0.7 * np.sin(np.pi * t / 2.0) ** 2
    x = noise * envelope
    return (0.05 * x / np.std(x)).astype(np.float32)


def bench_quality(run: BenchRun, seconds: float = 60.0, repeats: int = 5) -> None:
    config = QualityConfig()
    rate = config.sample_rate
    signal = breath_like(seconds, rate)

    def streamed(block: int) -> Callable[[], object]:
        def go() -> None:
            stream = StreamingQuality(config)
            for i in range(0, len(signal), block):
                stream.push(signal[i : i + block])

        return go

    s = "quality"
    stream_1s = seconds / _median_seconds(streamed(rate), repeats)
    run.add(s, "AQS streaming, 1 s blocks", stream_1s, "x realtime", f">= {AQS_TARGET_X_REALTIME:g}x",
            stream_1s >= AQS_TARGET_X_REALTIME)  # fmt: skip
    run.add(s, "AQS streaming, 0.1 s blocks", seconds / _median_seconds(streamed(rate // 10), repeats), "x realtime")
    run.add(s, "AQS whole signal at once", seconds / _median_seconds(lambda: assess(signal, rate, config), repeats),
            "x realtime")  # fmt: skip

    # What the daemon does every hop: the AQS of the last 8 s window. Streaming computes each frame once and
    # summarises; recomputing scores the whole window again.
    window, hop = 8 * rate, rate

    def every_hop_streaming() -> None:
        stream = StreamingQuality(config, history_frames=800)
        for end in range(hop, len(signal) + 1, hop):
            stream.push(signal[end - hop : end])
            if end >= window:
                stream.window(FRAMES_PER_WINDOW)

    def every_hop_recompute() -> None:
        for end in range(window, len(signal) + 1, hop):
            assess(signal[end - window : end], rate, config)

    a = _median_seconds(every_hop_streaming, repeats)
    b = _median_seconds(every_hop_recompute, repeats)
    run.add(s, "AQS per 1 s hop: streaming vs recomputing 8 s", b / a, "x faster",
            note=f"{seconds / a:,.0f}x vs {seconds / b:,.0f}x realtime")  # fmt: skip
    # The daemon's whole signal path before the model (resample the device's rate to 16 kHz, cut 8 s windows
    # at a 1 s hop, AQS, gate): cost per second of device audio.

    for device_rate in (4000, 16_000, 44_100):
        x = breath_like(seconds, device_rate, seed=1)
        blocks = [
            AudioBlock(x[i : i + device_rate], device_rate, i / device_rate) for i in range(0, len(x), device_rate)
        ]

        def device_path(blocks: list[AudioBlock] = blocks) -> None:
            for _ in SignalPath(window, hop, config).feed(blocks):
                pass

        factor = seconds / _median_seconds(device_path, repeats)
        run.add(s, f"signal path to the gate, {device_rate / 1000:g} kHz device", factor,
                "x realtime", f">= {AQS_TARGET_X_REALTIME:g}x", factor >= AQS_TARGET_X_REALTIME)  # fmt: skip


def bench_link(run: BenchRun, megabytes: float = 8.0, repeats: int = 3, chunk: int = 4096) -> None:
    """Link decoder throughput: clean stream, 1 % corrupted frames, and all the way to audio blocks."""

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
        def go() -> None:
            decoder = FrameDecoder()
            for part in parts:
                decoder.feed(part)

        return go

    def receive() -> None:
        receiver = LinkReceiver()
        for part in chunks:
            receiver.feed(part)

    size = len(clean) / 1e6
    for name, go in (
        ("link decoder, clean", decode(chunks)),
        ("link decoder, 1 % bad CRC", decode(damaged_chunks)),
        ("link decoder + timeline", receive),
    ):
        speed = size / _median_seconds(go, repeats)
        run.add("link", name, speed, "MB/s", note=f"{speed * 1e6 / (rate * 2):,.0f}x one 8 kHz int16 stethoscope")


def _torch_model(bundle: Any) -> Any:
    """A model of the bundle's architecture in torch eager (weights do not change its speed); edge-cnn's
    settings come from the manifest when the recipe changed them (`model.edge`)."""
    from training.models import EdgeCNNConfig, QLungModel

    model = bundle.manifest.get("model", {})
    edge = EdgeCNNConfig(**model.get("edge", {}))
    return QLungModel(model.get("backbone", "edge-cnn"), head=model.get("head", "angular"), edge=edge).eval()


def _session(path: Path, threads: int) -> Any:

    return onnx_session(path, threads=threads)


def _latency(session: Any, batch: np.ndarray, repeats: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    return _timed(lambda: session.run(["probabilities"], {name: batch}), repeats, warmup=2)


def bench_frontend(run: BenchRun, bundle: Any, repeats: int = 20) -> None:
    """The log-mel front end alone: torch eager vs ONNX Runtime (exported here), one 8 s window, 1 thread."""
    s = "frontend"
    try:
        import torch

        from training.frontend import KaldiFbank
    except ImportError:
        run.add(s, "front end, torch eager", None, "ms", note="torch not installed (train extra)")
        return
    torch.set_num_threads(1)
    frontend = KaldiFbank().eval()
    window = breath_like(bundle.window_samples / bundle.sample_rate)[None]
    x = torch.from_numpy(window)
    with torch.inference_mode():
        eager = _timed(lambda: frontend(x), repeats, warmup=2)
    run.add(s, "front end, torch eager, 1 window", float(np.median(eager)) * 1000, "ms")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frontend.onnx"

        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)  # its "torchvision is not installed" notes
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(frontend, (x,), str(path), dynamo=True, input_names=["waveform"], verbose=False)
            session = _session(path, 1)
            onnx_times = _timed(lambda: session.run(None, {session.get_inputs()[0].name: window}), repeats, 2)
        except Exception as err:  # the exporter's many failure types; the figure says why it is missing
            run.add(s, "front end, ONNX Runtime, 1 window", None, "ms", note=f"export failed: {err}"[:120])
            return
        finally:
            exporter_log.setLevel(level)
    run.add(s, "front end, ONNX Runtime, 1 window", float(np.median(onnx_times)) * 1000, "ms")
    run.add(s, "front end: ONNX Runtime vs torch eager", float(np.median(eager) / np.median(onnx_times)), "x faster")
    record = bundle.manifest.get("incremental")
    if record is None:
        return
    second = breath_like(1.0 + (FRAME_LENGTH - FRAME_HOP) / bundle.sample_rate)  # 100 new frames
    for variant, entry in record["frontend_variants"].items():
        compute = open_frontend(bundle, variant)
        took = float(np.median(_timed(lambda compute=compute: compute(second), repeats, warmup=2)))
        chosen = " (the bundle's choice)" if variant == record["frontend"] else ""
        run.add(s, f"front end {variant}, 1 s of new audio", took * 1000, "ms",
                note=f"vs float64 filterbank {entry['max_abs_vs_float64']:.1e}{chosen}")  # fmt: skip


def bench_model(run: BenchRun, bundle: Any, threads: int, repeats: int = 30) -> None:

    s = "model"
    window = breath_like(bundle.window_samples / bundle.sample_rate)[None]
    fp32 = _session(bundle.file(MODEL_FILE), 1)
    t32 = _latency(fp32, window, repeats)
    median32 = float(np.median(t32))
    run.add(s, "front end + model, ORT FP32, 1 window, 1 thread", median32 * 1000, "ms", "<= 20 ms",
            median32 <= 0.020, note=f"p99 {np.percentile(t32, 99) * 1000:.2f} ms")  # fmt: skip
    for batch in (4, 16):
        times = _latency(fp32, np.repeat(window, batch, axis=0), max(3, repeats // batch))
        run.add(s, f"ORT FP32, batch {batch}, per window", float(np.median(times)) / batch * 1000, "ms")
    if threads > 1:
        many = _session(bundle.file(MODEL_FILE), threads)
        tn = float(np.median(_latency(many, window, repeats)))
        run.add(s, f"ORT FP32: {threads} threads vs 1, 1 window", median32 / tn, "x faster")
        tb = float(np.median(_latency(many, np.repeat(window, 16, axis=0), max(3, repeats // 16))))
        t1 = float(np.median(_latency(fp32, np.repeat(window, 16, axis=0), max(3, repeats // 16))))
        run.add(s, f"ORT FP32: {threads} threads vs 1, batch 16", t1 / tb, "x faster")
    if bundle.has(INT8_FILE):
        int8 = _session(bundle.file(INT8_FILE), 1)
        t8 = float(np.median(_latency(int8, window, repeats)))
        speedup = median32 / t8
        run.add(s, "ORT INT8, 1 window, 1 thread", t8 * 1000, "ms")
        run.add(s, "INT8 vs FP32 (ORT), 1 window", speedup, "x faster",
                note="every convolution quantized (the TensorRT model), run on this CPU")  # fmt: skip
        record = bundle.manifest.get("int8", {})
        cpu = record.get("cpu")
        if cpu is not None:
            gaining, total = len(cpu["gaining_layers"]), len(cpu["layers"])
            pays = cpu["default"] == "int8" and cpu["network_speedup_with_gaining_layers"] >= cpu["threshold"]
            honest = cpu["default"] == "fp32" and bool(cpu["reason"])
            run.add(s, "INT8 per layer: convolutions >= 1.5x faster", gaining, f"of {total}",
                    ">= 1.5x where applied, or FP32 default with the reason", pays or honest,
                    note=f"CPU default {cpu['default']} (measured at export)")  # fmt: skip
        if "score_drop_points" in record:
            drop = float(record["score_drop_points"])
            run.add(s, "INT8 Score drop (from export, held-out cycles)", drop, "points", "<= 1", drop <= 1.0)
    else:
        run.add(s, "INT8 vs FP32 (ORT), 1 window", None, "x faster", note="bundle has no INT8 model")
    params = bundle.manifest.get("model", {}).get("parameters")
    run.add(s, "parameters", params, "", "<= 1.5 M", None if params is None else params <= 1.5e6)
    try:
        import torch

        from training.models import count_flops
    except ImportError:
        run.add(s, "GFLOPs per window", None, "GFLOPs", "<= 0.5", note="torch not installed (train extra)")
        run.add(s, "ORT FP32 vs torch eager, 1 window", None, "x faster", ">= 2x", note="torch not installed")
        return
    torch.set_num_threads(1)
    model = _torch_model(bundle)
    gflops = count_flops(model, bundle.window_samples) / 1e9
    seconds = bundle.window_samples / bundle.sample_rate
    run.add(s, f"GFLOPs per {seconds:g} s window (front end included)", gflops, "GFLOPs", "<= 0.5", gflops <= 0.5)
    peak = run.machine.get("peak_gflops_per_core")
    achieved = gflops / median32
    note = ""
    if peak:
        note = f"{100 * achieved / peak:.0f} % of the {peak:.0f} GFLOP/s estimated at the listed clock"
        if achieved > peak:
            note += " (above it: the core boosts past its listed clock)"
    run.add(s, "ORT FP32 achieved, 1 thread", achieved, "GFLOP/s", note=note)
    x = torch.from_numpy(window)
    with torch.inference_mode():
        eager = float(np.median(_timed(lambda: model(x), repeats, warmup=2)))
    ratio = eager / median32
    run.add(s, "torch eager, 1 window, 1 thread", eager * 1000, "ms")
    run.add(s, "ORT FP32 vs torch eager, 1 window", ratio, "x faster", ">= 2x", ratio >= 2.0)


def bench_training(run: BenchRun, threads: int, steps: int = 4, batch: int = 32) -> None:
    """Training steps (forward, QLung loss, backward, Adam) through the real dataset and DataLoader path, one
    run: the pipeline as it was (waveforms through the front end every epoch, a 3x3 stride-2 stem, default
    layout), the cache alone on that model, and the pipeline as it is (cached log-mel frames, 4x4 patch stem,
    channels_last), with the new model uncached beside it. Random inputs: the speed does not depend on them."""
    s = "training"
    try:
        import torch

        from training.checkpoint import build_model
        from training.config import load_recipe
        from training.dataset import ExampleDataset, Prepared
        from training.losses import QLungLoss
    except ImportError:
        run.add(
            s, "cached vs uncached, same model", None, "x faster", ">= 4x", note="torch not installed (train extra)"
        )
        return
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    count = batch * (steps + 1)
    labels = rng.integers(0, 4, count)
    aqs = rng.random(count).astype(np.float32)

    def prepared(folder: Path, features: bool) -> Prepared:
        shape = (count, FRAMES_PER_WINDOW, 128) if features else (count, WINDOW_SAMPLES)
        path = folder / ("features.npy" if features else "waves.npy")
        data = np.lib.format.open_memmap(path, "w+", np.float16 if features else np.float32, shape)
        data[:] = rng.standard_normal(shape).astype(data.dtype) * (1.0 if features else 0.05)
        data.flush()
        return Prepared([None] * count, np.load(path, mmap_mode="r"), labels, aqs, features)  # type: ignore[list-item]

    def examples_per_second(data: Prepared, stem: str, channels_last: bool) -> float:
        edge = {"stem_kernel": 3, "stem_stride": 2} if stem == "3x3/2" else {}
        config = load_recipe("qlung-edge-sprsound", [f"model.edge={json.dumps(edge)}"])
        model = build_model(config)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_fn = QLungLoss(config.loss, [100, 30, 10, 5])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(ExampleDataset(data), batch_size=batch, shuffle=True, drop_last=True)
        model.train()
        began = None
        for i, (x, y, a, _) in enumerate(loader):
            if i == 1:
                began = time.perf_counter()  # the first step warms up
            output = model(x)
            loss, _ = loss_fn(output["logits"], output["cosine"], y, a)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert began is not None
        return batch * steps / (time.perf_counter() - began)

    with tempfile.TemporaryDirectory() as tmp:
        waves, features = prepared(Path(tmp), False), prepared(Path(tmp), True)
        before = examples_per_second(waves, "3x3/2", False)
        cache_only = examples_per_second(features, "3x3/2", False)
        now_uncached = examples_per_second(waves, "4x4/4", True)
        now = examples_per_second(features, "4x4/4", True)
    run.add(s, "as it was: waveforms, 3x3/2 stem", before, "examples/s", note=f"batch {batch}, {threads} threads")
    run.add(s, "cached log-mel, 3x3/2 stem", cache_only, "examples/s")
    run.add(s, "as it is: cached log-mel, 4x4 patch stem, channels_last", now, "examples/s")
    run.add(s, "4x4 patch stem, waveforms (uncached)", now_uncached, "examples/s")
    run.add(s, "training: as it is vs as it was", now / before, "x faster", ">= 4x", now / before >= 4.0,
            note="the whole change, same run")  # fmt: skip
    run.add(s, "training: cached vs uncached, same model (patch stem)", now / now_uncached, "x faster",
            note="the front end is a fixed forward GEMM; the network's backward is the rest")  # fmt: skip


AFTER_THE_MODEL = frozenset({GateReason.ESTIMATED_POOR.value, GateReason.QUALITY_UNKNOWN.value})
"""Gate reasons decided on the model's own quality output: such a window went through the model pass too."""


def _through_the_model(event: dict[str, Any]) -> bool:
    """Whether a window event's latency includes a model pass: classified, or refused by the learned gate (a
    bundle whose gate refuses the synthetic stream would otherwise leave no latency to measure)."""
    return event["status"] == "classified" or bool(AFTER_THE_MODEL & set(event.get("reasons") or ()))


def _daemon_once(
    bundle_path: Path, wav: Path, precision: str, hop: float, speed: float, folder: Path, incremental: bool = False
) -> dict[str, Any]:
    """One daemon in its own process (start time and RSS are per process), paced at `speed` x real time, or read
    as fast as possible (`speed` 0: the source never sleeps; processing and inference still wait for each other,
    about once a window)."""
    events = folder / f"events-{precision}-{hop}-{speed}-{incremental}.jsonl"
    config = folder / f"daemon-{precision}-{hop}-{speed}-{incremental}.toml"
    events.unlink(missing_ok=True)
    config.write_text(
        f'bundle = "{bundle_path}"\nsource = "file:{wav}"\nsinks = ["jsonl:{events}"]\nprecision = "{precision}"\n'
        f"hop_seconds = {hop}\nthreads = 1\nincremental = {'true' if incremental else 'false'}\n[source_options]\n"
        + (f"realtime = true\nspeed = {speed}\n" if speed > 0 else "realtime = false\n")
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "qlung_edge.cli", "daemon", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_event = None
    while process.poll() is None and first_event is None:
        if events.exists() and events.stat().st_size > 0:
            first_event = time.perf_counter() - started
        time.sleep(0.005)
    _, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"daemon exited {process.returncode}: {err[-500:]}")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    stop = lines[-1]["counts"]
    latencies = [e["latency_ms"] for e in lines if e["type"] == "window" and _through_the_model(e)]
    frames, rate = sf_frames(wav)
    audio_seconds = frames / rate
    threads = stop.get("thread_cpu_seconds", {})
    cpu, seconds, warmup = stop["stream_cpu_seconds"], audio_seconds, float("nan")
    if speed > 0 and "warm_cpu_seconds" in stop and audio_seconds - stop["warm_audio_seconds"] > 1.0:
        # Steady state: the CPU after the first window's model pass over the audio after it. Before it come one-off
        # costs (lazy imports, the first passes through ONNX Runtime) that a short run would spread over its seconds.
        # Paced only: read as fast as possible, processing runs far ahead of inference and no such cut is clean
        # (that run reads a longer recording instead).
        warmup = stop["warm_cpu_seconds"]
        cpu, seconds = cpu - warmup, audio_seconds - stop["warm_audio_seconds"]
    return {
        "threads_ms": {name: 1000 * spent / audio_seconds for name, spent in threads.items()},
        "wakeups_per_second": sum(stop.get("thread_wakeups", {}).values()) / audio_seconds
        if stop.get("thread_wakeups")
        else None,
        "start_seconds": first_event if first_event is not None else float("nan"),
        "cpu_percent_of_core": 100 * cpu / seconds,
        "cpu_per_audio_second_ms": 1000 * cpu / seconds,
        "warmup_cpu_ms": 1000 * warmup,
        "p50_ms": float(np.median(latencies)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "rss_mb": stop["peak_rss_bytes"] / 1e6,
        "windows": stop.get("windows", 0),
        "classified": stop.get("inferences", 0),
        "latency_windows": len(latencies),
        "classified_windows": sum(e["type"] == "window" and e["status"] == "classified" for e in lines),
        "dropped": stop.get("windows_dropped", 0),
        "realtime_factor": audio_seconds / stop["stream_wall_seconds"],
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose CPU per audio second is the median of `runs` (an odd count): its other figures (threads,
    latency, start) stay those of one run rather than medians of different runs. The daemon's CPU on a shared
    virtual machine moves by tens of percent from run to run; one run per figure is not a measurement."""
    if len(runs) % 2 == 0:
        raise ValueError(f"the median run of {len(runs)} runs is not one run: need an odd count")
    ordered = sorted(runs, key=lambda r: r["cpu_per_audio_second_ms"])
    return {**ordered[len(ordered) // 2], "runs": len(runs)}


def _by_thread(result: dict[str, Any]) -> str:
    """Where a daemon's CPU went, per audio second: the source thread (reading, pacing), the signal path, the
    model with the events (over the whole run, warm-up included); how often its threads slept and woke; how many
    runs the median is of."""
    parts = result["threads_ms"]
    names = (("capture", "source"), ("process", "signal path"), ("infer", "model + events"))
    text = ", ".join(f"{label} {parts[name]:.2f}" for name, label in names if name in parts) + " ms (whole run)"
    warmup = result.get("warmup_cpu_ms")
    if warmup is not None and warmup == warmup:  # not NaN
        text += f"; {warmup:.0f} ms of CPU before the first window's model pass left out"
    if result.get("wakeups_per_second") is not None:
        text += f"; {result['wakeups_per_second']:.1f} wake-ups per audio s"
    if result.get("runs", 1) > 1:
        text += f"; median of {result['runs']} runs"
    return text


def _work_ms(result: dict[str, Any]) -> float:
    parts = result["threads_ms"]
    return parts.get("process", float("nan")) + parts.get("infer", float("nan"))


def sf_frames(path: Path) -> tuple[int, int]:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames, info.samplerate


def _overload(bundle: Any, wav: Path) -> dict[str, int]:
    """An artificially slow backend: windows must be dropped and counted, samples never."""

    class Slow(OnnxBackend):
        def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
            time.sleep(0.1)
            return super().run_all(windows)

    config = DaemonConfig(bundle=bundle.path, source="file", sinks=[], hop_seconds=0.5, max_pending=2, max_batch=1,
                          drop_when_behind=True)  # fmt: skip
    daemon = Daemon(config, source=FileSource(name="f", path=wav), sinks=[CollectSink()],
                    backend_factory=lambda b, c: Slow("slow", b, 1))  # fmt: skip
    daemon.run()
    counts = daemon.counts()
    frames, _ = sf_frames(wav)
    return {"samples_lost": frames - counts["samples"], "windows": counts["windows"],
            "dropped": counts.get("windows_dropped", 0)}  # fmt: skip


def flops_per_audio_second(bundle: Any, hop: float) -> dict[str, float] | None:
    """What each audio second costs in FLOPs at `hop`: the whole model once per window (the full-window path)
    vs one second's new frames through the front end plus the network once per window (the least any
    streaming path can do). None without torch."""
    try:
        import torch

        from training.models import count_flops
    except ImportError:
        return None
    model = _torch_model(bundle)
    rate, window = bundle.sample_rate, bundle.window_samples
    whole = count_flops(model, window)
    front = count_flops(model.frontend, window)  # type: ignore[arg-type]
    frames = model.frontend.config.frames(window)
    per_frame = front / frames
    network = whole - front
    frames_per_second = rate / model.frontend.config.hop_length
    del torch
    return {
        "full_window": whole / hop,
        "needed": per_frame * frames_per_second + network / hop,
        "front_end_per_second": per_frame * frames_per_second,
        "network_per_window": network,
    }


HOPS = (2.0, 1.0, 0.5, 0.25)
"""The daemon's hops side by side: a shorter hop reacts sooner and costs a network pass more often."""


def bench_daemon(
    run: BenchRun,
    bundle: Any,
    seconds: float = 60.0,
    speed: float = 10.0,
    repeats: int = 5,
    log: Callable[[str], None] = lambda _: None,
) -> None:
    """The two paths side by side, each CPU figure the median of `repeats` runs taken in turn (full, incremental,
    full, ...), so that a slow minute of the machine falls on both. Twice: paced like a stethoscope (the deployed
    case: the source sleeps between its blocks; the CPU before the first model pass left out) and read as fast as
    possible (the source never sleeps, so most of what waking threads costs on this machine is left out; a
    recording 5 times as long, the same synthetic breath, so that one-off costs weigh little)."""
    import soundfile as sf

    if repeats < 1 or repeats % 2 == 0:
        raise ValueError(f"repeats must be odd and at least 1 (a median run), got {repeats}")

    s = "daemon"
    folder = Path(tempfile.mkdtemp(prefix="qlung-bench-"))
    paths = (False, True) if bundle.manifest.get("incremental") is not None else (False,)
    try:
        wav = folder / "stream.wav"
        sf.write(str(wav), breath_like(seconds, 8000, seed=2), 8000, subtype="PCM_16")  # a stethoscope's 8 kHz
        long_wav = folder / "long.wav"
        sf.write(str(long_wav), breath_like(seconds * 5, 8000, seed=2), 8000, subtype="PCM_16")
        paced_runs: dict[tuple[float, bool], list[dict[str, Any]]] = {(h, i): [] for h in HOPS for i in paths}
        fast_runs: dict[tuple[float, bool], list[dict[str, Any]]] = {(h, i): [] for h in (1.0, 0.25) for i in paths}
        name = {False: "full window", True: "incremental"}
        for k in range(repeats):
            log(f"  round {k + 1} of {repeats}: {len(paced_runs)} paced daemons, {len(fast_runs)} unpaced")
            for hop, incremental in paced_runs:
                paced_runs[hop, incremental].append(
                    _daemon_once(bundle.path, wav, "fp32", hop, speed, folder, incremental)
                )
            for hop, incremental in fast_runs:
                fast_runs[hop, incremental].append(
                    _daemon_once(bundle.path, long_wav, "fp32", hop, 0.0, folder, incremental)
                )
        paced = {key: _median_run(runs) for key, runs in paced_runs.items()}
        fast = {key: _median_run(runs) for key, runs in fast_runs.items()}
        for hop in HOPS:
            f = paced[hop, False]
            run.add(s, f"full window: CPU per audio s at {hop:g} s hop", f["cpu_per_audio_second_ms"], "ms",
                    *(("<= 100 ms (10 % of a core)", f["cpu_per_audio_second_ms"] <= 100) if hop == 1.0 else ()),
                    note=f"{f['cpu_percent_of_core']:.2f} % of a core; {_by_thread(f)}")  # fmt: skip
            if (hop, True) in paced:
                g = paced[hop, True]
                run.add(s, f"incremental: CPU per audio s at {hop:g} s hop", g["cpu_per_audio_second_ms"], "ms",
                        note=f"{f['cpu_per_audio_second_ms'] / g['cpu_per_audio_second_ms']:.2f}x less than the"
                        f" full window; {_by_thread(g)}")  # fmt: skip
        for (hop, incremental), r in fast.items():
            run.add(s, f"{name[incremental]}, read as fast as possible: CPU per audio s at {hop:g} s hop",
                    r["cpu_per_audio_second_ms"], "ms", note=_by_thread(r))  # fmt: skip
        for incremental in paths:  # what the same stream costs more when its threads sleep and wake
            paced_r, fast_r = paced[1.0, incremental], fast[1.0, incremental]
            extra = paced_r["cpu_per_audio_second_ms"] - fast_r["cpu_per_audio_second_ms"]
            wakeups = (paced_r.get("wakeups_per_second") or 0) - (fast_r.get("wakeups_per_second") or 0)
            each = (f"; {wakeups:.1f} more wake-ups per audio s: {1000 * extra / wakeups:.0f} us per extra wake-up"
                    " if all of it is theirs") if wakeups > 0 else ""  # fmt: skip
            run.add(s, f"{name[incremental]}: what pacing adds at 1 s hop", extra, "ms",
                    note=f"paced (steady state) minus read as fast as possible (5x as long){each}")  # fmt: skip
        if True in paths:
            cpu = {key: r["cpu_per_audio_second_ms"] for key, r in paced.items()}
            fast_cpu = {key: r["cpu_per_audio_second_ms"] for key, r in fast.items()}
            paced_ratio = cpu[1.0, False] / cpu[1.0, True]
            run.add(s, "incremental vs full window, CPU at 1 s hop", paced_ratio, "x less", ">= 3x",
                    paced_ratio >= 3.0, note="the whole daemon process, source included, paced like a stethoscope;"
                    " same stream, same bundle, runs taken in turn")  # fmt: skip
            work = _work_ms(paced[1.0, False]) / _work_ms(paced[1.0, True])
            run.add(s, "incremental vs full window, the daemon's own work at 1 s hop", work, "x less",
                    note="signal path + model + events threads only: the source thread's reading and pacing of"
                    " 0.1 s blocks, the same in both paths, left out")  # fmt: skip
            fast_ratio = fast_cpu[1.0, False] / fast_cpu[1.0, True]
            run.add(s, "incremental vs full window, CPU at 1 s hop, read as fast as possible", fast_ratio, "x less",
                    note="the source never sleeps; processing and inference still wake about once a window (see"
                    " their wake-ups)")  # fmt: skip
            paced_quarter = cpu[0.25, True] / cpu[1.0, False]
            run.add(s, "incremental at 0.25 s hop vs full window at 1 s hop", paced_quarter, "x the CPU", "<= 1",
                    paced_quarter <= 1.0, note="a 4x faster reaction for no more CPU; paced")  # fmt: skip
            fast_quarter = fast_cpu[0.25, True] / fast_cpu[1.0, False]
            run.add(s, "incremental at 0.25 s hop vs full window at 1 s hop, read as fast as possible", fast_quarter,
                    "x the CPU", note="the source never sleeps")  # fmt: skip
        for incremental in paths:
            r = paced[1.0, incremental]
            run.add(s, f"{name[incremental]}: window-to-event latency p50, 1 s hop", r["p50_ms"], "ms",
                    note=f"over the {r['latency_windows']} of {r['windows']} windows that went through the model"
                    f" ({r['classified_windows']} classified, the rest refused by the learned gate)")  # fmt: skip
            run.add(s, f"{name[incremental]}: window-to-event latency p99, 1 s hop", r["p99_ms"], "ms", "<= 100 ms",
                    r["p99_ms"] <= 100)  # fmt: skip
        if True in paths:
            p99, full_p99 = paced[1.0, True]["p99_ms"], paced[1.0, False]["p99_ms"]
            run.add(s, "incremental vs full window, p99 latency", p99 / full_p99, "x", "not worse",
                    p99 <= full_p99 * 1.1 + 0.5, note="within 10 % + 0.5 ms of timer noise")  # fmt: skip
        default = True in paths
        r = paced[1.0, default]
        run.add(s, "default path: peak RSS", r["rss_mb"], "MB", "<= 200 MB", r["rss_mb"] <= 200)
        run.add(s, "default path: start (spawn to first event)", r["start_seconds"], "s", "<= 2 s",
                r["start_seconds"] <= 2.0)  # fmt: skip
        flops = flops_per_audio_second(bundle, 1.0)
        peak = run.machine.get("peak_gflops_per_core")
        if flops is not None:
            needed, executed = flops["needed"] / 1e6, flops["full_window"] / 1e6
            at_peak = f", {needed / peak:.2f} ms at the core's peak" if peak else ""
            run.add(s, "FLOPs an audio second needs at 1 s hop", needed, "MFLOP",
                    note=f"new frames' front end {flops['front_end_per_second'] / 1e6:.1f} + one network pass"
                    f" {flops['network_per_window'] / 1e6:.1f}{at_peak}")  # fmt: skip
            run.add(s, "FLOPs the full-window path executes per audio s", executed, "MFLOP",
                    note=f"{executed / needed:.1f}x what is needed"
                    + (f", {executed / peak:.2f} ms at the core's peak" if peak else ""))  # fmt: skip
        if bundle.has(INT8_FILE):
            r = _daemon_once(bundle.path, wav, "int8", 1.0, speed, folder)
            run.add(s, "INT8 (whole model): CPU per audio s at 1 s hop", r["cpu_per_audio_second_ms"], "ms")
        run.add(s, "default path: real-time factor, file as fast as possible", fast[1.0, default]["realtime_factor"],
                "x realtime")  # fmt: skip
        over = _overload(bundle, wav)
        run.add(s, "overload: audio samples lost", over["samples_lost"], "samples", "0", over["samples_lost"] == 0,
                note=f"{over['dropped']} of {over['windows']} windows dropped and counted")  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- driver


def run_bench(
    what: str = "all",
    bundle_path: Path | None = None,
    threads: int | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> BenchRun:
    sections = SECTIONS if what == "all" else (what,)
    threads = threads or os.cpu_count() or 1
    run = BenchRun(machine_info(threads))
    m = run.machine
    log(f"machine: {m['cpu']}, {m['cores']} cores; peak {m['peak_gflops_per_core'] or 0:.0f} GFLOP/s a core "
        f"({m['peak_how']}); " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))  # fmt: skip
    bundle = None
    if any(s in ("frontend", "model", "daemon") for s in sections):
        if bundle_path is None:
            raise ValueError("the frontend, model and daemon benchmarks need --bundle DIR (a `qlung-edge export`)")
        bundle = load_bundle(bundle_path)
        model = bundle.manifest.get("model", {})
        run.machine["bundle"] = (
            f"{bundle_path} ({bundle.manifest.get('name')}, {model.get('backbone')}, "
            f"manifest {str(bundle.manifest.get('manifest_sha256'))[:12]})"
        )
    repeats = 3 if quick else 10
    for section in sections:
        before = len(run.figures)
        log(f"[{section}]")
        if section == "quality":
            bench_quality(run, seconds=10.0 if quick else 60.0, repeats=repeats)
        elif section == "link":
            bench_link(run, megabytes=1.0 if quick else 8.0, repeats=3)
        elif section == "frontend":
            bench_frontend(run, bundle, repeats=5 if quick else 30)
        elif section == "model":
            bench_model(run, bundle, threads, repeats=5 if quick else 50)
        elif section == "daemon":
            bench_daemon(run, bundle, seconds=12.0 if quick else 60.0, speed=10.0, repeats=1 if quick else 5,
                         log=log)  # fmt: skip
        elif section == "training":
            bench_training(run, threads, steps=1 if quick else 6)
        else:
            raise ValueError(f"unknown benchmark {section!r}; one of {', '.join(SECTIONS)} or all")
        for figure in run.figures[before:]:
            log(figure.line())
    return run


def write_markdown(run: BenchRun, path: Path) -> None:
    m = run.machine
    lines = [
        "# Benchmarks",
        "",
        "Generated by the command below; do not edit by hand. Targets: ARCHITECTURE.md (2-core x86, 1 thread).",
        "",
        f"- command: `{run.command}`",
        f"- date: {m['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"- peak FP32 per core (estimate): {m['peak_gflops_per_core'] or 0:.0f} GFLOP/s ({m['peak_how']})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- bundle: {m.get('bundle', 'none')}",
        "",
        "| section | figure | value | unit | target | verdict | note |",
        "| --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for f in run.figures:
        value = "n/a" if f.value is None else f"{f.value:,.4g}"
        verdict = "" if f.meets is None else ("meets" if f.meets else "**misses**")
        lines.append(f"| {f.section} | {f.name} | {value} | {f.unit} | {f.target} | {verdict} | {f.note} |")
    path.write_text("\n".join(lines) + "\n")

"""INT8 by ONNX Runtime static quantization in QDQ format, calibrated on training data, judged on held-out data.

Only the network's convolutions are quantized. The front end's Conv1d holds the DFT: 8-bit DFT rows would
swamp the quiet bins of the log-mel, so it, the power, mel and log stay in float32. Activations and weights
are symmetric (zero point 0), which is what TensorRT's explicit-quantization path requires of a QDQ model.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.ops import front_end_nodes
from qlung_edge.onnx_sessions import onnx_session, run_onnx


class _AlreadyPrepared(logging.Filter):
    """ONNX Runtime's quantizer asks on the root logger, once per call, for pre-processing even of models that
    `quant_pre_process` prepared: hundreds of identical lines in an export's log, nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, hush = logging.getLogger(), _AlreadyPrepared()
    root.addFilter(hush)
    try:
        yield
    finally:
        root.removeFilter(hush)


class _Windows:
    """onnxruntime's CalibrationDataReader protocol over an array of windows."""

    def __init__(self, input_name: str, windows: np.ndarray) -> None:
        self.input_name, self.windows, self.index = input_name, windows, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.windows):
            return None
        self.index += 1
        return {self.input_name: self.windows[self.index - 1 : self.index]}

    def rewind(self) -> None:
        self.index = 0


def quantize_int8(
    fp32: str | Path, out: str | Path, calibration_windows: np.ndarray, nodes: list[str] | None = None
) -> dict[str, Any]:
    """QDQ INT8 of every convolution outside the front end, or only of `nodes`."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q.CalibrationDataReader.register(_Windows)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference and folding, as ORT recommends
        model = onnx.load(str(prepared))
        excluded = front_end_nodes(model)
        reader = _Windows(model.graph.input[0].name, calibration_windows.astype(np.float32))
        with _quiet_quantizer():
            q.quantize_static(
                str(prepared),
                str(out),
                reader,  # type: ignore[arg-type]
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=excluded,
                nodes_to_quantize=nodes,
                calibrate_method=q.CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    count = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear")
    return {
        "excluded_front_end_nodes": len(excluded),
        "quantize_nodes": count,
        "calibration_windows": len(reader.windows),
    }


def median_latency_ms(session: Any, window: np.ndarray, repeats: int = 20) -> float:
    """Median wall time of one batch-1 inference, after a warm-up run."""
    run_onnx(session, window[None], batch=1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run_onnx(session, window[None], batch=1)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def labelled_windows(scan: Any, loader: Any, split: str, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and class labels of up to `limit` cycles of one split, drawn at random (seeded)."""
    cycles = scan.cycles(split)
    if not cycles:
        raise ValueError(f"{scan.root}: no cycles in the {split!r} split")
    order = np.random.default_rng(seed).permutation(len(cycles))[:limit]
    chosen = [cycles[i] for i in sorted(order)]
    return np.stack([loader(c) for c in chosen]), np.array([c.label for c in chosen])


def quantize_bundle_model(
    fp32: Path,
    out: Path,
    data: str | Path | None = None,
    *,
    calibration_cycles: int = 64,
    held_out_cycles: int = 300,
    seconds: float = 8.0,
    network: tuple[Path, Path, Callable[[np.ndarray], np.ndarray]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Quantize, then compare FP32 and INT8 on held-out cycles: Score and 1-thread latency. With `network`
    (network.onnx, where network.int8.onnx goes, the front end), also quantize the network piece for TensorRT
    and decide from per-layer timings whether INT8 pays on this CPU."""
    from training.cycles import CycleAudioConfig, CycleAudioLoader
    from training.datasets import scan_folder
    from training.metrics import confusion_matrix, icbhi_scores

    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            from training.synth import SynthConfig, synthesize

            log("  no calibration data given: synthesising 80 recordings")
            data = synthesize(Path(tmp) / "data", SynthConfig(recordings=80, seed=11), ("icbhi",), progress=False)[
                "icbhi"
            ]
        scan = scan_folder(data, progress=False)  # one scan and one decode cache serve both splits
        loader = CycleAudioLoader(scan.recordings, CycleAudioConfig(seconds=seconds))
        calibration, _ = labelled_windows(scan, loader, "train", calibration_cycles)
        held_out, labels = labelled_windows(scan, loader, "test", held_out_cycles)
    log(f"  INT8: calibrating on {len(calibration)} training cycles")
    info = quantize_int8(fp32, out, calibration)
    result: dict[str, Any] = {**info, "calibration_data": str(data), "held_out_cycles": len(held_out)}
    for name, path in (("fp32", fp32), ("int8", out)):
        session = onnx_session(path, threads=1)
        predictions = run_onnx(session, held_out, batch=16)["probabilities"].argmax(1)
        scores = icbhi_scores(confusion_matrix(labels, predictions))
        result[name] = {
            "specificity": scores.specificity,
            "sensitivity": scores.sensitivity,
            "score": scores.score,
            "latency_ms_1_thread": median_latency_ms(session, held_out[0]),
            "bytes": Path(path).stat().st_size,
        }
    fp, q = result["fp32"], result["int8"]
    result["speedup"] = fp["latency_ms_1_thread"] / q["latency_ms_1_thread"]
    result["score_drop_points"] = 100 * (fp["score"] - q["score"])
    if network is not None:
        source, target, frontend = network
        features = np.stack([frontend(w) for w in calibration])
        quantize_int8(source, target, features)
        log(f"  INT8: {target.name} (every convolution, for TensorRT); timing each convolution alone on this CPU")
        result["cpu"] = cpu_decision(layer_gains(source, features[:8]), source, features, log)
    log(
        f"  INT8 vs FP32 on {len(held_out)} held-out cycles: Score {100 * q['score']:.2f} vs {100 * fp['score']:.2f}"
        f" (drop {result['score_drop_points']:.2f} points); 1-thread latency {q['latency_ms_1_thread']:.1f} ms"
        f" vs {fp['latency_ms_1_thread']:.1f} ms ({result['speedup']:.2f}x); size {q['bytes'] / 1e6:.2f} MB"
        f" vs {fp['bytes'] / 1e6:.2f} MB"
    )
    return result


# --------------------------------------------------------------------------- which layers gain from INT8


@dataclass(frozen=True)
class LayerGain:
    """One convolution alone, FP32 vs quantized (QDQ, which ONNX Runtime runs as QLinearConv), one thread."""

    node: str
    kind: str
    """pointwise (1x1), depthwise (one filter per channel) or conv."""
    weight_shape: tuple[int, ...]
    fp32_us: float
    int8_us: float

    @property
    def speedup(self) -> float:
        return self.fp32_us / self.int8_us


def _kind(weight_shape: tuple[int, ...], group: int) -> str:
    if group > 1 and group == weight_shape[0] and weight_shape[1] == 1:
        return "depthwise"
    return "pointwise" if tuple(weight_shape[2:]) == (1, 1) else "conv"


def _median_us(session: Any, feed: dict[str, np.ndarray], repeats: int) -> float:
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def layer_gains(fp32: str | Path, calibration: np.ndarray, repeats: int = 200) -> list[LayerGain]:
    """Time every convolution of `fp32` (a network without front end) alone, FP32 and quantized as the bundle
    quantizes it (per-channel symmetric weights, symmetric activations), on its real input activations."""
    import onnx
    from onnx import helper, utils
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q.CalibrationDataReader.register(_Windows)
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepared = folder / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        model = onnx.load(str(prepared))
        weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
        convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights]
        typed = {v.name: v for v in model.graph.value_info}
        probe = onnx.load(str(prepared))
        for node in convs:  # expose each convolution's input, to calibrate and time it on real activations
            if node.input[0] in typed:
                probe.graph.output.append(typed[node.input[0]])
            elif node.input[0] not in {i.name for i in probe.graph.input}:
                raise ValueError(f"no shape for {node.input[0]} (the input of {node.name})")
        probe_path = folder / "probe.onnx"
        onnx.save(probe, str(probe_path))
        session = onnx_session(probe_path)
        input_name = model.graph.input[0].name
        names = [o.name for o in session.get_outputs()]
        rows = [dict(zip(names, session.run(names, {input_name: x[None]}))) for x in calibration.astype(np.float32)]
        rows = [{**row, input_name: x[None]} for row, x in zip(rows, calibration.astype(np.float32))]
        for node in convs:
            alone = folder / f"{node.name}.onnx"
            utils.extract_model(str(prepared), str(alone), [node.input[0]], [node.output[0]])
            activations = np.concatenate([row[node.input[0]] for row in rows])
            quantized = folder / f"{node.name}.int8.onnx"
            with _quiet_quantizer():
                q.quantize_static(
                    str(alone),
                    str(quantized),
                    _Windows(node.input[0], activations),  # type: ignore[arg-type]
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"],
                    per_channel=True,
                    activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=q.CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                )
            feed = {node.input[0]: activations[:1]}
            group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            shape = weights[node.input[1]]
            gains.append(
                LayerGain(
                    node=node.name,
                    kind=_kind(shape, int(group)),
                    weight_shape=shape,
                    fp32_us=_median_us(onnx_session(alone), feed, repeats),
                    int8_us=_median_us(onnx_session(quantized), feed, repeats),
                )
            )
    return gains


def cpu_decision(gains: list[LayerGain], network: Path, features: np.ndarray,
                 log: Callable[[str], None] = print, threshold: float = 1.5) -> dict[str, Any]:  # fmt: skip
    """INT8 on this CPU only where it pays: the convolutions that run >= `threshold`x faster quantized (alone);
    quantizing just those must then speed the whole network up by `threshold`x, or FP32 stays the default."""
    chosen = [g.node for g in gains if g.speedup >= threshold]
    record: dict[str, Any] = {
        "layers": [{**asdict(g), "speedup": g.speedup} for g in gains],
        "threshold": threshold,
        "gaining_layers": chosen,
    }
    speedup = 1.0
    if chosen:
        with tempfile.TemporaryDirectory() as tmp:
            partial = Path(tmp) / "partial.onnx"
            quantize_int8(network, partial, features, nodes=chosen)
            window = features[:1].astype(np.float32)
            speedup = median_latency_ms(onnx_session(network), window[0]) / median_latency_ms(
                onnx_session(partial), window[0]
            )
    record["network_speedup_with_gaining_layers"] = speedup
    kinds = sorted({g.kind for g in gains})
    by_kind = ", ".join(
        f"{kind} {statistics.median(g.speedup for g in gains if g.kind == kind):.2f}x" for kind in kinds
    )
    if chosen and speedup >= threshold:
        record["default"] = "int8"
        record["reason"] = f"{len(chosen)} of {len(gains)} convolutions gain >= {threshold:g}x; network {speedup:.2f}x"
    else:
        record["default"] = "fp32"
        record["reason"] = (
            f"INT8 does not pay on this CPU ({platform.machine()}, ONNX Runtime): {len(chosen)} of {len(gains)}"
            f" convolutions run >= {threshold:g}x faster quantized (median by kind: {by_kind})"
            + (f"; quantizing only those speeds the network {speedup:.2f}x" if chosen else "")
            + ". FP32 is the CPU default; the INT8 models are for TensorRT."
        )
    log(f"  INT8 on this CPU: {record['reason']}")
    return record

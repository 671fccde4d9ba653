"""INT8 by ONNX Runtime static quantization in QDQ format, calibrated on training data, judged on held-out data.

Only the network's convolutions are quantized. The front end's Conv1d holds the DFT: 8-bit DFT rows would
swamp the quiet bins of the log-mel, so it, the power, mel and log stay in float32. Activations and weights
are symmetric (zero point 0), which is what TensorRT's explicit-quantization path requires of a QDQ model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.ops import front_end_nodes
from qlung_edge.onnx_sessions import onnx_session, run_onnx


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


def quantize_int8(fp32: str | Path, out: str | Path, calibration_windows: np.ndarray) -> dict[str, Any]:
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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Quantize, then compare FP32 and INT8 on held-out cycles: Score and 1-thread latency."""
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
    log(
        f"  INT8 vs FP32 on {len(held_out)} held-out cycles: Score {100 * q['score']:.2f} vs {100 * fp['score']:.2f}"
        f" (drop {result['score_drop_points']:.2f} points); 1-thread latency {q['latency_ms_1_thread']:.1f} ms"
        f" vs {fp['latency_ms_1_thread']:.1f} ms ({result['speedup']:.2f}x); size {q['bytes'] / 1e6:.2f} MB"
        f" vs {fp['bytes'] / 1e6:.2f} MB"
    )
    return result

"""Checkpoint to verified bundle: ONNX with the front end inside, parity against torch, op audit, manifest.

The export refuses to write a bundle whose ONNX model does not compute what the checkpoint computed, or that
TensorRT on a Jetson could not read; everything is staged in a temporary folder and renamed at the end.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.ops import MAX_OPSET, audit_file
from qlung_edge import CLASS_NAMES, MODEL_SAMPLE_RATE, WINDOW_SAMPLES, __version__
from qlung_edge.audio import read_audio, resample
from qlung_edge.batches import in_batches
from qlung_edge.bundle import (
    CHECK_FILE,
    FRONTEND_FILE,
    INT8_FILE,
    MODEL_FILE,
    NETWORK_FILE,
    NETWORK_INT8_FILE,
    staged_folder,
    write_manifest,
)
from qlung_edge.errors import QLungError
from qlung_edge.examination import VerdictRule
from qlung_edge.frontend import OnnxFrontEnd
from qlung_edge.onnx_sessions import onnx_session, run_onnx
from qlung_edge.quality import QualityConfig

INPUT_NAME = "waveform"


class ExportError(QLungError):
    """The export would produce a model that does not do what the checkpoint does, or cannot run on the device."""


@dataclass(frozen=True)
class ExportOptions:
    opset: int = MAX_OPSET
    max_batch: int = 32
    tolerance: float = 1e-4
    """Largest allowed |probability difference| between ONNX Runtime and torch."""
    hop_seconds: float | None = None
    """The daemon's default step between windows, stored in the manifest; default: the recipe's."""
    synthetic_check_windows: int = 4


class _Outputs(torch.nn.Module):
    """The model with tuple outputs in manifest order (exporters name outputs by position)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(waveform)
        return tuple(out[name] for name in self.model.output_names)


def _to_opset(model: Any, opset: int) -> Any:
    """Convert the exporter's graph to `opset`, dropping the attribute opset 18 added to reductions."""
    import onnx
    from onnx import version_converter

    current = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    if current > opset:
        model = version_converter.convert_version(model, opset)
        for node in model.graph.node:
            if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
                kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                del node.attribute[:]
                node.attribute.extend(kept)
    model.ir_version = min(model.ir_version, 8)  # what onnx 1.12 (inside TensorRT 8.5) reads
    onnx.checker.check_model(model, full_check=True)
    return model


def export_graph(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
            dynamic: dict[int, Any], path: Path, opset: int) -> None:  # fmt: skip
    """torch.export-based ONNX export, converted to the opset the Jetson reads, checked, saved."""
    import onnx

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # quiet its "torchvision is not installed" notes, for this call only
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = Path(tmp) / "raw.onnx"
            torch.onnx.export(
                module.eval(),
                (example,),
                str(raw),
                dynamo=True,
                input_names=[input_name],
                output_names=output_names,
                dynamic_shapes={input_name: dynamic},
                optimize=True,  # constant folding and graph simplification (onnxscript's optimizer)
                external_data=False,
                verbose=False,
            )
            converted = _to_opset(onnx.load(str(raw)), opset)
    finally:
        exporter_log.setLevel(level)
    onnx.save(converted, str(path))


def export_onnx(
    model: torch.nn.Module, path: Path, options: ExportOptions = ExportOptions(), samples: int = WINDOW_SAMPLES
) -> None:
    """The whole model, waveform [batch, samples] in, with a dynamic batch."""
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    export_graph(_Outputs(model), torch.zeros(2, samples), INPUT_NAME, list(model.output_names), {0: batch}, path,
            options.opset)  # fmt: skip


# --------------------------------------------------------------------------- check windows


def _window(samples: np.ndarray, rate: int, length: int) -> np.ndarray:
    return np.resize(resample(samples, rate, MODEL_SAMPLE_RATE), length)  # the first window, repeated when shorter


def synthetic_windows(count: int, seed: int = 0, length: int = WINDOW_SAMPLES) -> tuple[np.ndarray, list[str]]:
    """Windows of freshly synthesised recordings (with crackles, wheezes, degradations), no files."""
    from training.synth import SynthConfig, draw_specs, render

    specs = draw_specs(SynthConfig(recordings=count, seed=seed), "icbhi")[:count]
    windows = [_window(render(spec), spec.rate, length) for spec in specs]
    return np.stack(windows), [f"synthetic:{spec.name}" for spec in specs]


def recording_windows(
    folder: str | Path, limit: int = 10, length: int = WINDOW_SAMPLES
) -> tuple[np.ndarray, list[str]]:
    """The first window of each WAV in `folder` (sorted), at 16 kHz."""
    paths = sorted(Path(folder).glob("*.wav"))[:limit]
    if not paths:
        raise ExportError("no .wav files to check parity on", path=folder)
    windows = []
    for path in paths:
        audio = read_audio(path)
        windows.append(_window(audio.samples, audio.sample_rate, length))
    return np.stack(windows), [str(p) for p in paths]


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, windows: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    model.eval()

    def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
        out = model(torch.from_numpy(chunk))
        return {name: out[name].float().numpy() for name in model.output_names}

    return in_batches(run, windows, batch)


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max |difference| per output and whether every window gets the same class."""
    result: dict[str, Any] = {
        f"max_abs_{name}": float(np.abs(reference[name] - candidate[name]).max()) for name in reference
    }
    same = reference["probabilities"].argmax(1) == candidate["probabilities"].argmax(1)
    result["argmax_identical"] = bool(same.all())
    result["argmax_disagreements"] = int((~same).sum())
    result["windows"] = len(same)
    return result


# --------------------------------------------------------------------------- the bundle


def _check_subset(total: int, synthetic: int, keep: int = 8) -> np.ndarray:
    """Which check windows the bundle keeps (half synthetic, half real): 0.5 MB each, a few are enough."""
    real = np.arange(synthetic, total)[: keep // 2]
    return np.concatenate([np.arange(min(synthetic, keep - len(real))), real]).astype(int)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "qlung_edge": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def gate_quality(quality: QualityConfig, estimate: dict[str, Any] | None) -> QualityConfig:
    """The recipe's quality config with the "too quiet" level the learned gate was calibrated with, when the
    checkpoint's estimate has one (training.quality_model): the two thresholds share one budget."""
    if not estimate or estimate.get("quiet_dbfs") is None:
        return quality
    return replace(quality, quiet_dbfs=float(estimate["quiet_dbfs"]))


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    real_audio: str | Path | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
    options: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write a verified bundle for `checkpoint` to `out`; returns the manifest."""
    from training.checkpoint import load_model
    from training.models import count_parameters

    model, config, payload = load_model(checkpoint)
    model.step_head = None  # the event-timing detector trains beside the head and is not shipped or counted
    seconds = config.data.window_seconds
    samples = int(round(seconds * MODEL_SAMPLE_RATE))
    hop = options.hop_seconds if options.hop_seconds is not None else config.data.hop_seconds
    out = Path(out)
    with staged_folder(out, force) as stage:
        t = time.perf_counter()
        log(f"exporting {config.model.backbone} ({count_parameters(model):,} parameters) to ONNX opset {options.opset}")
        onnx_path = stage / MODEL_FILE
        export_onnx(model, onnx_path, options, samples)
        audit = audit_file(onnx_path)
        log(f"  op audit: {audit.summary()}")
        if not audit.ok:
            problems = "; ".join(audit.problems)
            raise ExportError(f"the ONNX model would not run under TensorRT: {problems}", path=checkpoint)

        windows, names = synthetic_windows(options.synthetic_check_windows, length=samples)
        if real_audio is not None:
            real, real_names = recording_windows(real_audio, length=samples)
            windows, names = np.concatenate([windows, real]), names + real_names
        reference = torch_outputs(model, windows)
        session = onnx_session(onnx_path, threads=1)
        one_by_one = compare(reference, run_onnx(session, windows, batch=1))
        batched = compare(reference, run_onnx(session, windows, batch=len(windows)))
        worst = max(one_by_one["max_abs_probabilities"], batched["max_abs_probabilities"])
        log(
            f"  parity on {len(windows)} windows ({options.synthetic_check_windows} synthetic"
            f"{', ' + str(len(windows) - options.synthetic_check_windows) + ' real' if real_audio else ''}):"
            f" max |dp| {worst:.2e}, max |dlogit| {one_by_one['max_abs_logits']:.2e},"
            f" argmax identical: {one_by_one['argmax_identical'] and batched['argmax_identical']}"
        )
        if worst > options.tolerance or not (one_by_one["argmax_identical"] and batched["argmax_identical"]):
            raise ExportError(
                f"{checkpoint}: ONNX Runtime differs from torch (max |dp| {worst:.2e} > {options.tolerance:g}"
                f" or argmax changed on {batched['argmax_disagreements']} windows); bundle not written"
            )
        from export.pieces import export_pieces

        incremental = export_pieces(model, stage, windows, reference, options, log)
        keep = _check_subset(len(windows), options.synthetic_check_windows)
        kept = {name: values[keep] for name, values in reference.items()}
        np.savez(stage / CHECK_FILE, waveform=windows[keep], names=np.array(names)[keep], **kept)

        manifest: dict[str, Any] = {
            "name": config.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source_checkpoint": str(checkpoint),
            "classes": list(CLASS_NAMES),
            "sample_rate": MODEL_SAMPLE_RATE,
            "window_seconds": seconds,
            "window_samples": samples,
            "hop_seconds": hop,
            "training_unit": payload.get("geometry", {}).get("unit", config.data.unit),
            "quality": gate_quality(config.quality, payload.get("quality_estimate")).to_dict(),
            "model": {
                "backbone": config.model.backbone,
                "head": config.loss.head,
                "parameters": count_parameters(model),
                **({"edge": dict(config.model.edge)} if config.model.edge else {}),
            },
            "inputs": [{"name": INPUT_NAME, "shape": ["batch", samples], "dtype": "float32"}],
            "outputs": [
                {"name": "logits", "shape": ["batch", len(CLASS_NAMES)], "dtype": "float32"},
                {"name": "probabilities", "shape": ["batch", len(CLASS_NAMES)], "dtype": "float32"},
                {"name": "embedding", "shape": ["batch", int(reference["embedding"].shape[1])], "dtype": "float32"},
                *([{"name": "poor", "shape": ["batch"], "dtype": "float32"}] if "poor" in reference else []),
            ],
            "max_batch": options.max_batch,
            "opset": options.opset,
            "op_audit": audit.to_dict(),
            "parity": {"tolerance": options.tolerance, "one_by_one": one_by_one, "batched": batched},
            "metrics": payload.get("metrics", {}),
            "selection": payload.get("selection"),
            "verdict": payload.get("verdict", VerdictRule().to_dict()),
            "quality_estimate": payload.get("quality_estimate"),
            "incremental": incremental,
            "versions": _versions(),
            "source": payload.get("source"),
        }
        if int8:
            from export.quantize import quantize_bundle_model

            front = OnnxFrontEnd(stage / FRONTEND_FILE)
            manifest["int8"] = quantize_bundle_model(
                onnx_path, stage / INT8_FILE, calibration, seconds=seconds, log=log,
                network=(stage / NETWORK_FILE, stage / NETWORK_INT8_FILE, front),
            )  # fmt: skip
            int8_audit = audit_file(stage / INT8_FILE)
            log(f"  INT8 op audit: {int8_audit.summary()}")
            if not int8_audit.ok:
                problems = "; ".join(int8_audit.problems)
                raise ExportError(f"the INT8 model would not run under TensorRT: {problems}", path=checkpoint)
            manifest["int8"]["op_audit"] = int8_audit.to_dict()
            network_audit = audit_file(stage / NETWORK_INT8_FILE)
            if not network_audit.ok:
                problems = "; ".join(network_audit.problems)
                raise ExportError(f"the INT8 network would not run under TensorRT: {problems}", path=checkpoint)
            manifest["int8"]["network_op_audit"] = network_audit.to_dict()
        written = write_manifest(stage, manifest)
        log(f"  bundle written in {time.perf_counter() - t:.1f} s")
    sizes = ", ".join(f"{name} {record['bytes'] / 1e6:.2f} MB" for name, record in written["files"].items())
    log(f"bundle: {out} ({sizes})")
    return written

"""The model as two graphs for the incremental daemon: a front end (audio in, log-mel frames out) and the
network (a window's frames in, the bundle's outputs out).

The daemon then computes each 10 ms frame once, as its samples arrive, instead of running the front end over
the whole window every hop. The front end runs on the CPU (ONNX Runtime) whatever runs the network, in two
variants of one filterbank: the dense DFT as a MatMul over gathered frames (the whole-window model.onnx keeps
it as a Conv1d for TensorRT 8.x) and a real FFT (ONNX Runtime's DFT op); the export measures both on this
CPU and names the faster. Nothing is written unless every piece agrees with the
checkpoint: front ends with the float64 filterbank, frames computed block by block with frames computed on
the whole window, the network on those frames with torch on the waveform.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.onnx_export import INPUT_NAME, ExportError, ExportOptions, compare, export_graph
from export.ops import audit_file
from qlung_edge.bundle import FRONTEND_FFT_FILE, FRONTEND_FILE, NETWORK_FILE
from qlung_edge.frontend import DFT_AGREEMENT, FRAME_TOLERANCE, OnnxFrontEnd, PocketFFTFrontEnd, frames_block_by_block
from qlung_edge.onnx_sessions import onnx_session, run_onnx
from qlung_edge.streaming import FrontEnd
from training.frontend import FrontEndConfig, KaldiFbankFFT, KaldiFbankFramed, reference_logmel

FRONTEND_OUTPUT = "logmel"
FFT_OPSET = 18
"""The FFT front end runs in ONNX Runtime only (TensorRT 8.x has no DFT), so it keeps the exporter's opset."""
FFT_REFERENCE_TOLERANCE = 1e-5
"""The FFT front end (float64 up to the power spectrum) vs the float64 filterbank."""


class _Network(torch.nn.Module):
    """The model after its front end: log-mel frames [batch, frames, mels] in, the bundle's outputs out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(logmel)
        return tuple(out[name] for name in self.model.output_names)


def ms_per_audio_second(frontend: FrontEnd, config: FrontEndConfig, repeats: int = 30) -> float:
    """Median wall time to compute one second's new frames (one thread), after a warm-up."""
    audio = np.random.default_rng(0).normal(0, 0.1, config.sample_rate + config.frame_length - config.hop_length)
    audio = audio.astype(np.float32)
    frontend(audio)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        frontend(audio)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def export_pieces(
    model: torch.nn.Module,
    folder: Path,
    windows: np.ndarray,
    reference: dict[str, np.ndarray],
    options: ExportOptions,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write frontend.onnx, frontend.fft.onnx and network.onnx into `folder`, check them against the checkpoint
    on `windows` (its outputs are `reference`); returns the manifest's `incremental` record."""
    config = model.frontend.config
    samples = windows.shape[1]
    frames = config.frames(samples)
    audio = torch.export.Dim("samples", min=config.frame_length, max=samples * 4)
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    example = torch.zeros(1, samples)
    for module, name, opset in ((KaldiFbankFramed(config), FRONTEND_FILE, options.opset),
                                (KaldiFbankFFT(config), FRONTEND_FFT_FILE, FFT_OPSET)):  # fmt: skip
        export_graph(module, example, INPUT_NAME, [FRONTEND_OUTPUT], {1: audio}, folder / name, opset)
    export_graph(
        _Network(model),
        torch.zeros(2, frames, config.n_mels),
        FRONTEND_OUTPUT,
        list(model.output_names),
        {0: batch},
        folder / NETWORK_FILE,
        options.opset,
    )
    audit = audit_file(folder / NETWORK_FILE)
    if not audit.ok:
        raise ExportError(f"the network graph would not run under TensorRT: {'; '.join(audit.problems)}")

    variants: dict[str, dict[str, Any]] = {}
    features: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for variant, name, opset, bound in (
        ("dft", FRONTEND_FILE, options.opset, DFT_AGREEMENT),
        ("fft", FRONTEND_FFT_FILE, FFT_OPSET, FFT_REFERENCE_TOLERANCE),
        ("pocketfft", None, None, FFT_REFERENCE_TOLERANCE),
    ):
        frontend: FrontEnd = (
            PocketFFTFrontEnd(config, folder) if name is None else OnnxFrontEnd(folder / name, variant=variant)
        )
        whole = np.stack([frontend(w) for w in windows])
        exact = np.stack([reference_logmel(w, config) for w in windows])
        incremental = np.stack([frames_block_by_block(frontend, w, rng, frames) for w in windows])
        record = {
            "file": name,
            "opset": opset,
            "max_abs_vs_float64": float(np.abs(whole - exact).max()),
            "max_abs_block_by_block_vs_whole": float(np.abs(incremental - whole).max()),
            "ms_per_audio_second": ms_per_audio_second(frontend, config),
        }
        log(
            f"  front end {variant}: vs float64 filterbank {record['max_abs_vs_float64']:.1e}, block by block vs"
            f" whole window {record['max_abs_block_by_block_vs_whole']:.1e}, {record['ms_per_audio_second']:.2f} ms"
            " per audio second (1 thread)"
        )
        if not record["max_abs_vs_float64"] <= bound:
            raise ExportError(
                f"the {variant} front end differs from the float64 filterbank by"
                f" {record['max_abs_vs_float64']:.1e} (> {bound:g})",
                path=folder / (name or ""),
            )
        if not record["max_abs_block_by_block_vs_whole"] <= FRAME_TOLERANCE:
            raise ExportError(
                f"the {variant} front end's frames computed block by block differ from the whole"
                f" window's by {record['max_abs_block_by_block_vs_whole']:.1e}",
                path=folder / (name or ""),
            )
        variants[variant], features[variant] = record, whole
    variants["dft"]["max_abs_vs_fft"] = float(np.abs(features["dft"] - features["fft"]).max())

    network = onnx_session(folder / NETWORK_FILE, threads=1)
    parity = {variant: compare(reference, run_onnx(network, features[variant], batch=1)) for variant in variants}
    worst = max(p["max_abs_probabilities"] for p in parity.values())
    log(
        f"  network on the front ends' frames vs torch on the waveform: max |dp| {worst:.2e}, argmax identical:"
        f" {all(p['argmax_identical'] for p in parity.values())}"
    )
    if worst > options.tolerance or not all(p["argmax_identical"] for p in parity.values()):
        raise ExportError(
            f"the network graph on exported frames differs from torch (max |dp| {worst:.2e})",
            path=folder / NETWORK_FILE,
        )
    fastest = min(variants, key=lambda v: variants[v]["ms_per_audio_second"])
    others = ", ".join(f"{v} {variants[v]['ms_per_audio_second']:.2f}" for v in variants if v != fastest)
    return {
        "frontend": fastest,
        "frontend_choice": (
            f"{fastest}: {variants[fastest]['ms_per_audio_second']:.2f} ms per audio second ({others}), measured"
            f" at export on {platform.machine()}, one thread"
        ),
        "frontend_config": asdict(config),
        "frontend_variants": variants,
        "network": {
            "file": NETWORK_FILE,
            "inputs": [{"name": FRONTEND_OUTPUT, "shape": ["batch", frames, config.n_mels], "dtype": "float32"}],
            "op_audit": audit.to_dict(),
            "parity": parity,
        },
        "frame_length": config.frame_length,
        "frame_hop": config.hop_length,
        "frames_per_window": frames,
        "mels": config.n_mels,
    }

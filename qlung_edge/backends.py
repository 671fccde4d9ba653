"""Inference backends behind one call: windows [N, samples] at 16 kHz in, class probabilities out.

`open_backend` picks from what the bundle holds and the machine has: a TensorRT engine on a Jetson, else ONNX
Runtime (CUDA provider when present, else CPU), FP32 or the bundle's INT8 model. Torch is a development
option only (it needs the training checkpoint and is never imported on the device path otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.batches import in_batches
from qlung_edge.bundle import ENGINE_FILE, INT8_FILE, MODEL_FILE, Bundle, BundleError
from qlung_edge.errors import QLungError
from qlung_edge.onnx_sessions import onnx_session
from qlung_edge.tensorrt_runner import EngineRunner

BACKENDS = ("auto", "onnx", "tensorrt", "torch")
log = logging.getLogger("qlung_edge.backends")
PRECISIONS = ("fp32", "int8")


class BackendError(QLungError):
    pass


@dataclass
class Backend:
    """A loaded model; `run` is called from one inference thread."""

    name: str
    bundle: Bundle
    max_batch: int = 16
    details: dict[str, Any] = field(default_factory=dict)

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes]."""
        return self.run_all(windows)["probabilities"]

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` [N, classes] and, when the bundle's model has a quality estimate, `poor` [N]."""
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class OnnxBackend(Backend):
    threads: int = 1
    model_file: str = MODEL_FILE
    providers: list[str] | None = None

    def __post_init__(self) -> None:
        self._session = onnx_session(self.bundle.file(self.model_file), threads=self.threads, providers=self.providers)
        self._input = self._session.get_inputs()[0].name
        self._outputs = {o.name for o in self._session.get_outputs()}
        self.details = {"file": self.model_file, "providers": self._session.get_providers(), "threads": self.threads}

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        wanted = [n for n in ("probabilities", "poor") if n in self._outputs]

        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(wanted, self._session.run(wanted, {self._input: chunk})))

        return in_batches(run, windows, self.max_batch)


@dataclass
class TensorRTBackend(Backend):
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        self._runner = EngineRunner(self.bundle, start_timeout=self.start_timeout)
        self.max_batch = self._runner.maximum
        record = self.bundle.manifest["engine"]
        self.details = {
            "file": ENGINE_FILE,
            "precision": record.get("precision"),
            "tolerance": record.get("tolerance"),
            "gpu": record.get("gpu"),
        }

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            out = self._runner.run(chunk)
            return {k: out[k] for k in ("probabilities", "poor") if k in out}

        return in_batches(run, windows, self.max_batch)

    def close(self) -> None:
        self._runner.close()


@dataclass
class TorchBackend(Backend):
    """Development only: the checkpoint the bundle was exported from, in torch eager."""

    checkpoint: Path | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        import torch

        from training.checkpoint import load_model

        path = self.checkpoint or Path(self.bundle.manifest.get("source_checkpoint", ""))
        if not path.is_file():
            raise BackendError("checkpoint for the torch backend not found (give --checkpoint)", path=path)
        torch.set_num_threads(self.threads)
        self._torch = torch
        self._model, _, _ = load_model(path)
        self.details = {"file": str(path), "threads": self.threads}

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            with self._torch.inference_mode():
                out = self._model(self._torch.from_numpy(chunk))
            return {k: out[k].float().numpy() for k in ("probabilities", "poor") if k in out}

        return in_batches(run, windows, self.max_batch)


def open_backend(
    bundle: Bundle,
    kind: str = "auto",
    precision: str = "fp32",
    threads: int = 1,
    max_batch: int = 16,
    checkpoint: Path | None = None,
) -> Backend:
    """The backend to run `bundle` with. `auto` runs the bundle's TensorRT engine when there is one and it
    starts here, else ONNX Runtime: the reason for falling back is logged and kept in `details["fallback"]`
    (the daemon's /health and start event show it). An explicit `tensorrt` fails instead."""
    if kind not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    fallback = None
    if kind in ("auto", "tensorrt") and (kind == "tensorrt" or bundle.has(ENGINE_FILE)):
        try:
            return TensorRTBackend("tensorrt", bundle)
        except QLungError as err:
            if kind == "tensorrt":
                raise
            fallback = f"TensorRT engine not used: {err}"
            log.warning("%s; running ONNX Runtime instead", fallback)
    if kind == "torch":
        return TorchBackend("torch", bundle, max_batch, checkpoint=checkpoint, threads=threads)
    model_file = INT8_FILE if precision == "int8" else MODEL_FILE
    if not bundle.has(model_file):
        raise BundleError("not in this bundle (export it with --int8)", path=bundle.path / model_file)
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and precision == "fp32":
        providers.insert(0, "CUDAExecutionProvider")
    backend = OnnxBackend(
        f"onnx-{precision}", bundle, max_batch, threads=threads, model_file=model_file, providers=providers
    )
    if fallback:
        backend.details["fallback"] = fallback
    return backend

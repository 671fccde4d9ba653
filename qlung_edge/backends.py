"""Inference backends behind one call: model inputs in, class probabilities out.

`open_backend` picks from what the bundle holds and the machine has: a TensorRT engine on a Jetson, else ONNX
Runtime (CUDA provider when present, else CPU), FP32 or the bundle's INT8 model. Torch is a development
option only (it needs the training checkpoint and is never imported on the device path otherwise).

A backend runs either the whole model (windows [N, samples] at 16 kHz in) or, on the incremental path, the
network alone on log-mel frames [N, frames, mels] that the stream computed once each (`frontend` is then the
bundle's front-end graph). `input_of` gives a window's input either way; `run_all` also takes whole windows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.batches import in_batches
from qlung_edge.bundle import ENGINE_FILE, INT8_FILE, MODEL_FILE, NETWORK_FILE, Bundle, BundleError
from qlung_edge.errors import QLungError
from qlung_edge.frontend import AnyFrontEnd, incremental_record, open_frontend
from qlung_edge.onnx_sessions import onnx_session
from qlung_edge.streaming import Window
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
    frontend: AnyFrontEnd | None = None
    """Set when the backend runs the network alone: the front end that makes its input from audio."""

    def input_of(self, window: Window) -> np.ndarray:
        """What `run_all` takes for this window: its frames (computed once, or now) or its samples."""
        if self.frontend is None:
            return window.samples
        return window.features if window.features is not None else self.frontend(window.samples)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes]."""
        return self.run_all(inputs)["probabilities"]

    def run_all(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` [N, classes] and, when the bundle's model has a quality estimate, `poor` [N], for
        windows [N, samples] or, on the incremental path, their frames [N, frames, mels] (`input_of`)."""
        if self.frontend is not None and inputs.ndim == 2:  # whole windows: their frames first
            inputs = np.stack([self.frontend(w) for w in inputs])
        return self._run(inputs)

    def _run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
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

    def _run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        wanted = [n for n in ("probabilities", "poor") if n in self._outputs]

        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(wanted, self._session.run(wanted, {self._input: chunk})))

        return in_batches(run, inputs, self.max_batch)


@dataclass
class TensorRTBackend(Backend):
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        record = self.bundle.manifest["engine"]
        if record.get("input") == "logmel" and self.frontend is None:  # built from network.onnx
            self.frontend = open_frontend(self.bundle)
        self._runner = EngineRunner(self.bundle, start_timeout=self.start_timeout)
        self.max_batch = self._runner.maximum
        self.details = {
            "file": ENGINE_FILE,
            "input": record.get("input", "waveform"),
            "precision": record.get("precision"),
            "tolerance": record.get("tolerance"),
            "gpu": record.get("gpu"),
        }

    def _run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            out = self._runner.run(chunk)
            return {k: out[k] for k in ("probabilities", "poor") if k in out}

        return in_batches(run, inputs, self.max_batch)

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

    def _run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
            with self._torch.inference_mode():
                out = self._model(self._torch.from_numpy(chunk))
            return {k: out[k].float().numpy() for k in ("probabilities", "poor") if k in out}

        return in_batches(run, inputs, self.max_batch)


def open_backend(
    bundle: Bundle,
    kind: str = "auto",
    precision: str = "fp32",
    threads: int = 1,
    max_batch: int = 16,
    checkpoint: Path | None = None,
    incremental: bool | None = None,
    frontend: str | None = None,
) -> Backend:
    """The backend to run `bundle` with. `auto` runs the bundle's TensorRT engine when there is one and it
    starts here, else ONNX Runtime: the reason for falling back is logged and kept in `details["fallback"]`
    (the daemon's /health and start event show it). An explicit `tensorrt` fails instead.

    `incremental` (ONNX Runtime FP32): run network.onnx on frames the stream computes once each, with the
    bundle's front end (`frontend` names a variant, None the one the export measured faster); None: whenever
    the bundle has the pieces. INT8 and torch run the whole model."""
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
    has_pieces = incremental_record(bundle) is not None
    if incremental and precision != "fp32":
        raise BackendError(f"the incremental path runs FP32 (network.onnx), not {precision}")
    if incremental and not has_pieces:
        raise BundleError("has no front-end and network graphs for the incremental path (re-export it)",
                          path=bundle.path)  # fmt: skip
    split = has_pieces and precision == "fp32" and incremental is not False
    model_file = NETWORK_FILE if split else INT8_FILE if precision == "int8" else MODEL_FILE
    if not bundle.has(model_file):
        raise BundleError("not in this bundle (export it with --int8)", path=bundle.path / model_file)
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and precision == "fp32":
        providers.insert(0, "CUDAExecutionProvider")
    backend = OnnxBackend(
        f"onnx-{precision}",
        bundle,
        max_batch,
        frontend=open_frontend(bundle, frontend) if split else None,
        threads=threads,
        model_file=model_file,
        providers=providers,
    )
    if split:
        assert backend.frontend is not None
        backend.details["frontend"] = backend.frontend.variant
    if fallback:
        backend.details["fallback"] = fallback
    return backend

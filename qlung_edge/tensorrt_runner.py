"""Running a bundle's TensorRT engine on the device, and refusing an engine built for another one.

Engines are tied to one TensorRT version and one GPU. `engine_refusal` is the pure check; `EngineRunner` does
every CUDA call in one thread that owns its own pycuda context. `tensorrt` and `pycuda` come from JetPack and
are imported inside that thread: an import or start-up failure reaches the caller as an `EngineError` within
`start_timeout` seconds, never a hang. Teardown runs in the order TensorRT and pycuda need (execution context,
engine and runtime freed while the CUDA context is current, then buffers, then the context popped), and every
TensorRT call that reports failure by its return value is checked.
"""

from __future__ import annotations

import importlib
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlung_edge.bundle import ENGINE_FILE, Bundle, BundleError
from qlung_edge.errors import QLungError

ENGINE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
"""Largest |probability difference| from ONNX Runtime FP32 an engine of each precision may show on the bundle's
check windows (`export --trt --check`, `daemon --check`)."""


class EngineError(QLungError):
    """An engine that cannot be built, or must not run on this device."""


@dataclass(frozen=True)
class DeviceFacts:
    tensorrt: str
    gpu: str
    compute_capability: str
    sm_count: int
    memory_mb: int
    """Total device memory: tells an 8 GB Orin Nano from a 4 GB one, as the SM count tells Orin AGX from Nano."""


def engine_refusal(record: dict[str, Any], facts: DeviceFacts) -> str | None:
    """Why an engine must not run here, or None. Engines are not portable across versions or GPUs."""
    if record.get("tensorrt") != facts.tensorrt:
        return f"built with TensorRT {record.get('tensorrt')}, this device has {facts.tensorrt}: rebuild it here"
    built = (record.get("gpu"), record.get("compute_capability"), record.get("sm_count"))
    here = (facts.gpu, facts.compute_capability, facts.sm_count)
    if any(b is not None and b != h for b, h in zip(built, here)):
        return (
            f"built for {built[0]} (sm {built[1]}, {built[2]} SMs), this device has {here[0]} (sm {here[1]},"
            f" {here[2]} SMs): rebuild it here"
        )
    memory = record.get("memory_mb")
    if memory and abs(memory - facts.memory_mb) > 0.1 * max(memory, facts.memory_mb):
        return f"built on a {memory} MB device, this one has {facts.memory_mb} MB: rebuild it here"
    return None


def import_tensorrt() -> tuple[Any, Any]:
    """(pycuda.driver, tensorrt), or an EngineError that says what to install."""
    modules = []
    for name in ("tensorrt", "pycuda.driver"):  # TensorRT first: without it, pycuda alone is no help
        try:
            modules.append(importlib.import_module(name))
        except ImportError as err:  # JetPack's python3-libnvinfer, and pycuda built against its CUDA
            raise EngineError(
                f"cannot import {name} ({err}): install JetPack's python3-libnvinfer and pycuda"
                " (see qlung_edge/deploy/JETSON.md)"
            ) from err
    trt, cuda = modules
    return cuda, trt


def device_facts(cuda: Any, trt: Any, device: Any) -> DeviceFacts:
    major, minor = device.compute_capability()
    return DeviceFacts(
        tensorrt=str(trt.__version__),
        gpu=str(device.name()),
        compute_capability=f"{major}.{minor}",
        sm_count=int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        memory_mb=int(device.total_memory() // (1 << 20)),
    )


class _Resources:
    """What the runner's thread holds, released in the order TensorRT and pycuda need."""

    def __init__(self) -> None:
        self.cuda_context: Any = None
        self.runtime: Any = None
        self.engine: Any = None
        self.execution: Any = None
        self.stream: Any = None
        self.device_buffers: dict[str, Any] = {}
        self.host_buffers: dict[str, Any] = {}

    def close(self) -> None:
        """Stream drained; execution context, engine, runtime freed while the CUDA context is current; then the
        device buffers; the context popped last (freeing TensorRT objects after the pop segfaults on reload)."""
        try:
            if self.stream is not None:
                self.stream.synchronize()
        finally:
            self.execution = None
            self.engine = None
            self.runtime = None
            for buffer in self.device_buffers.values():
                buffer.free()
            self.device_buffers.clear()
            self.host_buffers.clear()
            self.stream = None
            if self.cuda_context is not None:
                context, self.cuda_context = self.cuda_context, None
                context.pop()


class EngineRunner:
    """Runs a bundle's engine; every CUDA call happens in one thread that owns its own context.

    pycuda.autoinit binds a context to the importing thread only, so the runner creates the context in its
    worker thread and callers hand it arrays through a queue.
    """

    def __init__(self, bundle: Bundle, start_timeout: float = 60.0) -> None:
        record = bundle.manifest.get("engine")
        if not record or not bundle.has(ENGINE_FILE):
            raise BundleError("has no TensorRT engine: build one on this device with `export --trt`", path=bundle.path)
        self.bundle = bundle
        self.record = record
        self.maximum = int(record["batch_profile"]["max"])
        self.facts: DeviceFacts | None = None
        self._jobs: queue.Queue[tuple[np.ndarray, Future[dict[str, np.ndarray]]] | None] = queue.Queue()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, name="tensorrt", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=start_timeout)
        except FutureTimeout:
            self._jobs.put(None)
            raise EngineError(
                f"TensorRT did not start within {start_timeout:g} s", path=bundle.path / ENGINE_FILE
            ) from None

    def _start(self, held: _Resources) -> tuple[Any, list[str], list[str]]:
        cuda, trt = import_tensorrt()
        cuda.init()
        device = cuda.Device(0)
        held.cuda_context = device.make_context()
        self.facts = device_facts(cuda, trt, device)
        plan = self.bundle.file(ENGINE_FILE)
        why = engine_refusal(self.record, self.facts)
        if why:
            raise EngineError(why, path=plan)
        held.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        held.engine = held.runtime.deserialize_cuda_engine(plan.read_bytes())
        if held.engine is None:
            raise EngineError("TensorRT could not deserialize the engine", path=plan)
        held.execution = held.engine.create_execution_context()
        if held.execution is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)", path=plan)
        held.stream = cuda.Stream()
        names = [held.engine.get_tensor_name(i) for i in range(held.engine.num_io_tensors)]
        inputs = [n for n in names if held.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        for name in names:
            shape = list(held.engine.get_tensor_shape(name))
            shape[0] = self.maximum
            held.host_buffers[name] = cuda.pagelocked_empty(
                tuple(shape), trt.nptype(held.engine.get_tensor_dtype(name))
            )
            held.device_buffers[name] = cuda.mem_alloc(held.host_buffers[name].nbytes)
            if not held.execution.set_tensor_address(name, int(held.device_buffers[name])):
                raise EngineError(f"TensorRT refused the address of tensor {name!r}", path=plan)
        return cuda, inputs, outputs

    def _serve(self) -> None:
        held = _Resources()
        try:
            cuda, inputs, outputs = self._start(held)
        except BaseException as err:  # import, device, refusal, deserialisation: all reach the constructor
            try:
                held.close()
            finally:
                self._ready.set_exception(err if isinstance(err, Exception) else EngineError(repr(err)))
            return
        self._ready.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                windows, future = job
                try:
                    future.set_result(self._infer(cuda, held, inputs, outputs, windows))
                except BaseException as err:
                    future.set_exception(err)
        finally:
            held.close()

    def _infer(
        self, cuda: Any, held: _Resources, inputs: list[str], outputs: list[str], windows: np.ndarray
    ) -> dict[str, np.ndarray]:
        n = len(windows)
        if not 1 <= n <= self.maximum:
            raise EngineError(f"batch of {n} windows; the engine's profile allows 1 to {self.maximum}")
        name = inputs[0]
        host = held.host_buffers[name][:n]  # only the rows in use travel to the GPU and back
        host[...] = windows
        if not held.execution.set_input_shape(name, tuple(windows.shape)):
            raise EngineError(f"the engine refused input shape {tuple(windows.shape)} for {name!r}")
        cuda.memcpy_htod_async(held.device_buffers[name], host, held.stream)
        if not held.execution.execute_async_v3(held.stream.handle):
            raise EngineError("TensorRT could not enqueue the batch (execute_async_v3 returned False)")
        for out in outputs:
            cuda.memcpy_dtoh_async(held.host_buffers[out][:n], held.device_buffers[out], held.stream)
        held.stream.synchronize()
        return {out: np.array(held.host_buffers[out][:n]) for out in outputs}

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        if not self._thread.is_alive():
            raise EngineError("the TensorRT runner has stopped")
        future: Future[dict[str, np.ndarray]] = Future()
        self._jobs.put((np.ascontiguousarray(windows, dtype=np.float32), future))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

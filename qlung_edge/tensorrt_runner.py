"""Running a bundle's TensorRT engine on the device, and refusing an engine built for another one.

Engines are tied to one TensorRT version and one GPU. `engine_refusal` is the pure check; `EngineRunner`
does every CUDA call in one thread that owns its own context. `tensorrt` and `pycuda` come from JetPack and
are imported only inside the functions that use them.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from qlung_edge.bundle import ENGINE_FILE, Bundle, BundleError
from qlung_edge.errors import QLungError


class EngineError(QLungError):
    """An engine that cannot be built, or must not run on this device."""


def engine_refusal(record: dict[str, Any], *, tensorrt_version: str, gpu: str, compute_capability: str) -> str | None:
    """Why an engine must not run here, or None. Engines are not portable across versions or GPUs."""
    if record.get("tensorrt") != tensorrt_version:
        return f"built with TensorRT {record.get('tensorrt')}, this device has {tensorrt_version}: rebuild it here"
    if record.get("compute_capability") != compute_capability or record.get("gpu") != gpu:
        return (
            f"built for {record.get('gpu')} (sm {record.get('compute_capability')}), this device has {gpu}"
            f" (sm {compute_capability}): rebuild it here"
        )
    return None


def device_facts() -> tuple[str, str, str]:
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return trt.__version__, device.name(), f"{major}.{minor}"


class EngineRunner:
    """Runs a bundle's engine; every CUDA call happens in one thread that owns its own context.

    pycuda.autoinit binds a context to the importing thread only, so the runner creates the context in its
    worker thread and callers hand it arrays through a queue.
    """

    def __init__(self, bundle: Bundle) -> None:
        record = bundle.manifest.get("engine")
        if not record or not bundle.has(ENGINE_FILE):
            raise BundleError("has no TensorRT engine: build one on this device with `export --trt`", path=bundle.path)
        self.bundle = bundle
        self._jobs: queue.Queue[tuple[np.ndarray, Future[dict[str, np.ndarray]]] | None] = queue.Queue()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, name="tensorrt", daemon=True)
        self._thread.start()
        self._ready.result()

    def _serve(self) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        context = None
        try:
            cuda.init()
            context = cuda.Device(0).make_context()
            version, gpu, capability = device_facts()
            why = engine_refusal(
                self.bundle.manifest["engine"], tensorrt_version=version, gpu=gpu, compute_capability=capability
            )
            if why:
                raise EngineError(f"{self.bundle.file(ENGINE_FILE)}: {why}")
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(self.bundle.file(ENGINE_FILE).read_bytes())
            if engine is None:
                raise EngineError(f"{self.bundle.file(ENGINE_FILE)}: TensorRT could not deserialize the engine")
            execution = engine.create_execution_context()
            stream = cuda.Stream()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            maximum = int(self.bundle.manifest["engine"]["batch_profile"]["max"])
            host: dict[str, Any] = {}
            device: dict[str, Any] = {}
            for name in names:
                shape = list(engine.get_tensor_shape(name))
                shape[0] = maximum
                dtype = trt.nptype(engine.get_tensor_dtype(name))
                host[name] = cuda.pagelocked_empty(tuple(shape), dtype)
                device[name] = cuda.mem_alloc(host[name].nbytes)
                execution.set_tensor_address(name, int(device[name]))
            self._ready.set_result(None)
        except BaseException as err:  # report start-up failures to the constructor
            if context is not None:
                context.pop()
            self._ready.set_exception(err)
            return
        try:
            while (job := self._jobs.get()) is not None:
                windows, future = job
                try:
                    n = len(windows)
                    if not 1 <= n <= maximum:
                        raise EngineError(f"batch of {n} windows; the engine's profile allows 1 to {maximum}")
                    name = inputs[0]
                    host[name][:n] = windows
                    execution.set_input_shape(name, (n, windows.shape[1]))
                    cuda.memcpy_htod_async(device[name], host[name], stream)
                    execution.execute_async_v3(stream.handle)
                    outputs = [k for k in names if k not in inputs]
                    for k in outputs:
                        cuda.memcpy_dtoh_async(host[k], device[k], stream)
                    stream.synchronize()
                    future.set_result({k: np.array(host[k][:n]) for k in outputs})
                except BaseException as err:
                    future.set_exception(err)
        finally:
            context.pop()

    def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        future: Future[dict[str, np.ndarray]] = Future()
        self._jobs.put((np.ascontiguousarray(windows, dtype=np.float32), future))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

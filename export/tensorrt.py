"""TensorRT engines for a bundle, built on the device (engines are tied to one TensorRT version and one GPU).

Written against TensorRT 8.5/8.6 (JetPack 5, 6.0) and 10.x (JetPack 6.1+). The parts that do not touch a GPU
(version dispatch, batch profile, which layers stay float32, the engine record and when to refuse an engine)
are plain functions so they are tested everywhere; building and running need `tensorrt` and `pycuda`, which
are imported only inside the functions that use them. No torch here: the daemon imports the runner.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.bundle import CHECK_FILE, ENGINE_FILE, INT8_FILE, MODEL_FILE, Bundle, BundleError
from qlung_edge.errors import QLungError

TIMING_CACHE = "timing.cache"


class EngineError(QLungError):
    """An engine that cannot be built, or must not run on this device."""


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a version: {version!r}")
    return tuple(parts)


def network_flags(tensorrt_version: str, explicit_batch_bit: int | None) -> int:
    """8.x needs EXPLICIT_BATCH for ONNX; 10.x is always explicit and deprecates the flag."""
    if version_tuple(tensorrt_version)[0] >= 10:
        return 0
    if explicit_batch_bit is None:
        raise EngineError(f"TensorRT {tensorrt_version} lacks NetworkDefinitionCreationFlag.EXPLICIT_BATCH")
    return 1 << explicit_batch_bit


@dataclass(frozen=True)
class BatchProfile:
    minimum: int = 1
    optimum: int = 1
    maximum: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.minimum}/{self.optimum}/{self.maximum}")

    def shapes(self, samples: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.minimum, samples), (self.optimum, samples), (self.maximum, samples)


def float32_layers(layer_names: Iterable[str], front_end_nodes: Iterable[str]) -> list[str]:
    """TensorRT layers that come from the front end's ONNX nodes.

    They must stay float32: a DFT bin's power reaches 1.6e5 for a full-scale tone, past float16's 65504.
    The parser names a layer after its ONNX node, sometimes with a suffix.
    """
    nodes = [n for n in front_end_nodes if n]
    return [name for name in layer_names if any(name == n or name.startswith(n + "_") for n in nodes)]


def engine_record(
    *, tensorrt_version: str, gpu: str, compute_capability: str, precision: str, profile: BatchProfile, plan: Path
) -> dict[str, Any]:
    return {
        "file": plan.name,
        "tensorrt": tensorrt_version,
        "gpu": gpu,
        "compute_capability": compute_capability,
        "precision": precision,
        "batch_profile": {"min": profile.minimum, "opt": profile.optimum, "max": profile.maximum},
    }


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


# --------------------------------------------------------------------------- on the device


def _device_facts() -> tuple[str, str, str]:
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return trt.__version__, device.name(), f"{major}.{minor}"


def build_engine(
    bundle: Bundle,
    *,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
    workspace_mb: int = 1024,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build `model.plan` into the bundle folder; returns the engine record for the manifest."""
    import onnx
    import tensorrt as trt

    from export.quantize import front_end_nodes

    if precision not in ("fp16", "int8", "fp32"):
        raise EngineError(f"precision must be fp16, int8 or fp32, got {precision!r}")
    onnx_path = bundle.file(INT8_FILE if precision == "int8" else MODEL_FILE)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(network_flags(trt.__version__, None if explicit is None else int(explicit)))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8") and getattr(builder, "platform_has_fast_fp16", True):  # deprecated in 10.x
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    keep = set(
        float32_layers(
            (network.get_layer(i).name for i in range(network.num_layers)),
            front_end_nodes(onnx.load(str(onnx_path), load_external_data=False)),
        )
    )
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in keep:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    input_name = network.get_input(0).name
    optimisation = builder.create_optimization_profile()
    optimisation.set_shape(input_name, *profile.shapes(bundle.window_samples))
    config.add_optimization_profile(optimisation)
    cache_path = bundle.path / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building a {precision} engine with TensorRT {trt.__version__} ({len(keep)} front-end layers kept float32)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine (see its log above)")
    plan = bundle.path / ENGINE_FILE
    plan.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    version, gpu, capability = _device_facts()
    return engine_record(
        tensorrt_version=version,
        gpu=gpu,
        compute_capability=capability,
        precision=precision,
        profile=profile,
        plan=plan,
    )


class EngineRunner:
    """Runs a bundle's engine; every CUDA call happens in one thread that owns its own context.

    pycuda.autoinit binds a context to the importing thread only, so the runner creates the context in its
    worker thread and callers hand it arrays through a queue.
    """

    def __init__(self, bundle: Bundle) -> None:
        record = bundle.manifest.get("engine")
        if not record or not bundle.has(ENGINE_FILE):
            raise BundleError(bundle.path, "has no TensorRT engine: build one on this device with `export --trt`")
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
            version, gpu, capability = _device_facts()
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


def check_engine(bundle: Bundle, log: Callable[[str], None] = print) -> dict[str, float]:
    """Engine vs ONNX Runtime on the bundle's check windows: max |difference| per output."""
    from qlung_edge.runtime import onnx_session, run_onnx

    checks = np.load(bundle.file(CHECK_FILE))
    windows = checks["waveform"]
    reference = run_onnx(onnx_session(bundle.file(MODEL_FILE)), windows, batch=1)
    runner = EngineRunner(bundle)
    try:
        maximum = int(bundle.manifest["engine"]["batch_profile"]["max"])
        parts = [runner.run(windows[i : i + maximum]) for i in range(0, len(windows), maximum)]
    finally:
        runner.close()
    result = {
        name: float(np.abs(np.concatenate([p[name] for p in parts]) - reference[name]).max()) for name in reference
    }
    differences = ", ".join(f"max |d{k}| {v:.2e}" for k, v in result.items())
    log(f"engine vs ONNX Runtime on {len(windows)} check windows: {differences}")
    return result


def add_engine(
    folder: str | Path,
    *,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
    workspace_mb: int = 1024,
    check: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the engine into a verified bundle and record it in the manifest (then optionally check it)."""
    from qlung_edge.bundle import load_bundle, write_manifest

    bundle = load_bundle(folder)
    record = build_engine(bundle, precision=precision, profile=profile, workspace_mb=workspace_mb, log=log)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "manifest_sha256")}
    write_manifest(bundle.path, {**manifest, "engine": record})
    bundle = load_bundle(folder)
    if check:
        record["check"] = check_engine(bundle, log)
        write_manifest(bundle.path, {**manifest, "engine": record})
    return record

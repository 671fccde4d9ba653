"""Building TensorRT engines for a bundle, on the device (engines are tied to one TensorRT version and one GPU).

Written against TensorRT 8.5/8.6 (JetPack 5, 6.0) and 10.x (JetPack 6.1+). The parts that do not touch a GPU
(version dispatch, batch profile, which layers stay float32, the engine record) are plain functions so they
are tested everywhere; building needs `tensorrt` and `pycuda`, imported only inside the functions that use
them. Running an engine is device code and lives in `qlung_edge.tensorrt_runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.quantize import front_end_nodes
from qlung_edge.batches import in_batches
from qlung_edge.bundle import CHECK_FILE, ENGINE_FILE, INT8_FILE, MODEL_FILE, Bundle, load_bundle, write_manifest
from qlung_edge.onnx_sessions import onnx_session, run_onnx
from qlung_edge.tensorrt_runner import EngineError, EngineRunner, device_facts

TIMING_CACHE = "timing.cache"


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


# --------------------------------------------------------------------------- on the device


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
        raise EngineError(f"TensorRT {trt.__version__} cannot parse it: {errors}", path=onnx_path)
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
        raise EngineError(f"TensorRT {trt.__version__} failed to build an engine (see its log above)", path=onnx_path)
    plan = bundle.path / ENGINE_FILE
    plan.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    version, gpu, capability = device_facts()
    return engine_record(
        tensorrt_version=version,
        gpu=gpu,
        compute_capability=capability,
        precision=precision,
        profile=profile,
        plan=plan,
    )


def check_engine(bundle: Bundle, log: Callable[[str], None] = print) -> dict[str, float]:
    """Engine vs ONNX Runtime on the bundle's check windows: max |difference| per output."""
    checks = np.load(bundle.file(CHECK_FILE))
    windows = checks["waveform"]
    reference = run_onnx(onnx_session(bundle.file(MODEL_FILE)), windows, batch=1)
    runner = EngineRunner(bundle)
    try:
        outputs = in_batches(runner.run, windows, int(bundle.manifest["engine"]["batch_profile"]["max"]))
    finally:
        runner.close()
    result = {name: float(np.abs(outputs[name] - reference[name]).max()) for name in reference}
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
    bundle = load_bundle(folder)
    record = build_engine(bundle, precision=precision, profile=profile, workspace_mb=workspace_mb, log=log)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "manifest_sha256")}
    write_manifest(bundle.path, {**manifest, "engine": record})
    bundle = load_bundle(folder)
    if check:
        record["check"] = check_engine(bundle, log)
        write_manifest(bundle.path, {**manifest, "engine": record})
    return record

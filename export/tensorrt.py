"""Building TensorRT engines for a bundle, on the device (engines are tied to one TensorRT version and one GPU).

Written against TensorRT 8.5/8.6 (JetPack 5, 6.0) and 10.x (JetPack 6.1+). The parts that do not touch a GPU
(version dispatch, batch profile, which layers stay float32, the timing cache's name and fallback, the engine
record, the staged bundle update) are plain functions, tested everywhere; building needs `tensorrt` and
`pycuda`, imported only inside the functions that use them. Running an engine is device code and lives in
`qlung_edge.tensorrt_runner`.

A build never damages the bundle: the engine, its timing cache and the new manifest are written into a staged
copy of the bundle, verified (and with `--check` compared with ONNX Runtime) there, and only then does the copy
take the bundle's place. A failure anywhere leaves the old bundle as it was, still verifying.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.ops import front_end_output
from qlung_edge.batches import in_batches
from qlung_edge.bundle import (
    CHECK_FILE,
    ENGINE_FILE,
    INT8_FILE,
    MODEL_FILE,
    NETWORK_FILE,
    NETWORK_INT8_FILE,
    Bundle,
    load_bundle,
    staged_folder,
    write_manifest,
)
from qlung_edge.frontend import incremental_record, open_frontend
from qlung_edge.onnx_sessions import onnx_session, run_onnx
from qlung_edge.tensorrt_runner import (
    ENGINE_TOLERANCE,
    DeviceFacts,
    EngineError,
    EngineRunner,
    device_facts,
    import_tensorrt,
)

PRECISIONS = ("fp16", "int8", "fp32")


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

    def shapes(self, *dims: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Min/opt/max input shapes: the batch, then the input's fixed dimensions."""
        return (self.minimum, *dims), (self.optimum, *dims), (self.maximum, *dims)


@dataclass(frozen=True)
class EngineSource:
    """What an engine is built from: the network alone on log-mel frames when the bundle has it (the front
    end then runs on the CPU, each frame once, as the incremental daemon needs), else the whole model."""

    file: str
    input: str
    """`logmel` or `waveform`."""
    dims: tuple[int, ...]
    """The input's dimensions after the batch."""


def engine_source(bundle: Bundle, precision: str) -> EngineSource:
    record = incremental_record(bundle)
    if record is not None:
        name = NETWORK_INT8_FILE if precision == "int8" else NETWORK_FILE
        if bundle.has(name):
            return EngineSource(name, "logmel", (int(record["frames_per_window"]), int(record["mels"])))
    return EngineSource(INT8_FILE if precision == "int8" else MODEL_FILE, "waveform", (bundle.window_samples,))


def upstream_layers(network: Any, tensor: str) -> list[int]:
    """Indices of the layers that `tensor` depends on, itself's producer included, by walking the network.

    The front end must stay float32 (a DFT bin's power reaches 1.6e5 for a full-scale tone, past float16's
    65504), and its layers are found by position in the graph, not by name: TensorRT 8.x leaves the parser's
    helper layers (the Conv1d's unsqueeze and squeeze, broadcasts) unnamed, and a name prefix would also catch
    unrelated layers.
    """
    producer: dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for k in range(layer.num_outputs):
            producer[layer.get_output(k).name] = i
    if tensor not in producer:
        raise EngineError(f"the network has no tensor {tensor!r} (the front end's output) to pin to float32")
    seen: set[int] = set()
    stack = [producer[tensor]]
    while stack:
        index = stack.pop()
        if index in seen:
            continue
        seen.add(index)
        layer = network.get_layer(index)
        for j in range(layer.num_inputs):
            source = layer.get_input(j)
            if source is not None and source.name in producer:
                stack.append(producer[source.name])
    return sorted(seen)


def timing_cache_name(facts: DeviceFacts) -> str:
    """A timing cache per TensorRT version and GPU: one from elsewhere is never offered to the builder."""
    return f"timing-trt{facts.tensorrt}-sm{facts.compute_capability.replace('.', '')}.cache"


def load_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> Any:
    """The builder's timing cache: the saved one if TensorRT takes it, else a fresh one (never None)."""
    cache = None
    if path.exists():
        try:
            cache = config.create_timing_cache(path.read_bytes())
        except Exception as err:  # TensorRT raises for a damaged blob on some versions
            log(f"  timing cache {path.name} unreadable ({err}): starting a fresh one")
        if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
            log(f"  timing cache {path.name} does not fit this device or TensorRT: starting a fresh one")
            cache = None
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineError("TensorRT could not create an empty timing cache", path=path)
    return cache


def engine_record(*, facts: DeviceFacts, precision: str, profile: BatchProfile, plan: Path,
                  source: EngineSource | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "file": plan.name,
        "source": None if source is None else source.file,
        "input": "waveform" if source is None else source.input,
        "tensorrt": facts.tensorrt,
        "gpu": facts.gpu,
        "compute_capability": facts.compute_capability,
        "sm_count": facts.sm_count,
        "memory_mb": facts.memory_mb,
        "precision": precision,
        "tolerance": ENGINE_TOLERANCE[precision],
        "batch_profile": {"min": profile.minimum, "opt": profile.optimum, "max": profile.maximum},
    }


def float32_tensor(onnx_path: Path) -> str:
    import onnx

    name = front_end_output(onnx.load(str(onnx_path), load_external_data=False))
    if name is None:
        raise EngineError("no Log node: cannot tell where the float32 front end ends", path=onnx_path)
    return name


# --------------------------------------------------------------------------- on the device


def build_engine(
    bundle: Bundle,
    folder: Path,
    *,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
    workspace_mb: int = 1024,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the engine of `bundle` into `folder` (a staged copy of it); returns the engine record."""
    cuda, trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be fp16, int8 or fp32, got {precision!r}")
    source = engine_source(bundle, precision)
    onnx_path = bundle.file(source.file)
    cuda.init()
    device = cuda.Device(0)
    context = device.make_context()
    try:
        facts = device_facts(cuda, trt, device)
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
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
        pinned = upstream_layers(network, float32_tensor(onnx_path)) if source.input == "waveform" else []
        for index in pinned:
            layer = network.get_layer(index)
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        optimisation = builder.create_optimization_profile()
        optimisation.set_shape(network.get_input(0).name, *profile.shapes(*source.dims))
        config.add_optimization_profile(optimisation)
        cache_path = folder / timing_cache_name(facts)
        load_timing_cache(config, cache_path, log)
        log(
            f"building a {precision} engine of {source.file} with TensorRT {trt.__version__} on {facts.gpu}"
            f" ({facts.sm_count} SMs): {len(pinned)} of {network.num_layers} layers (the front end) kept float32"
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(
                f"TensorRT {trt.__version__} failed to build an engine (see its log above)", path=onnx_path
            )
        plan = folder / ENGINE_FILE
        plan.write_bytes(bytes(serialized))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        return engine_record(facts=facts, precision=precision, profile=profile, plan=plan, source=source)
    finally:
        context.pop()


def check_engine(bundle: Bundle, log: Callable[[str], None] = print) -> dict[str, float]:
    """Engine vs ONNX Runtime on the bundle's check windows: max |difference| per output; an EngineError when
    the probabilities differ by more than the engine's precision allows."""
    checks = np.load(bundle.file(CHECK_FILE))
    windows = checks["waveform"]
    record = bundle.manifest["engine"]
    if record.get("input") == "logmel":  # the network alone: both run on the bundle's front-end frames
        frontend = open_frontend(bundle)
        windows = np.stack([frontend(w) for w in windows])
        reference = run_onnx(onnx_session(bundle.file(NETWORK_FILE)), windows, batch=1)
    else:
        reference = run_onnx(onnx_session(bundle.file(MODEL_FILE)), windows, batch=1)
    runner = EngineRunner(bundle)
    try:
        outputs = in_batches(runner.run, windows, runner.maximum)
    finally:
        runner.close()
    result = {name: float(np.abs(outputs[name] - reference[name]).max()) for name in reference}
    differences = ", ".join(f"max |d{k}| {v:.2e}" for k, v in result.items())
    tolerance = float(record.get("tolerance", ENGINE_TOLERANCE[record["precision"]]))
    log(f"engine vs ONNX Runtime on {len(windows)} check windows: {differences} (tolerance {tolerance:g})")
    if not result["probabilities"] <= tolerance:
        raise EngineError(
            f"the {record['precision']} engine differs from ONNX Runtime by {result['probabilities']:.2e} in"
            f" probability (more than {tolerance:g}): not installed",
            path=bundle.path / ENGINE_FILE,
        )
    return result


def staged_update(
    folder: str | Path,
    change: Callable[[Bundle, Path], dict[str, Any]],
    check: Callable[[Bundle], dict[str, Any]] | None = None,
) -> Bundle:
    """Apply `change` to a staged copy of the bundle at `folder` and swap it in only once it verifies.

    `change(bundle, stage)` writes new files into `stage` and returns manifest entries to add; the manifest is
    rewritten there and the copy verified; `check(staged)` may refuse it (raise) or add more entries. Then the
    copy replaces the bundle. A failure at any step leaves the bundle untouched.
    """
    folder = Path(folder).resolve()  # a symlinked bundle (bundles/current) stays a symlink to its new folder
    bundle = load_bundle(folder)
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "manifest_sha256", "format")}
    with staged_folder(folder, force=True) as stage:
        for name in bundle.manifest["files"]:
            shutil.copy2(bundle.path / name, stage / name)
        manifest.update(change(bundle, stage))
        write_manifest(stage, manifest)
        staged = load_bundle(stage)
        if check is not None:
            manifest.update(check(staged))
            write_manifest(stage, manifest)
            load_bundle(stage)
    return load_bundle(folder)


def add_engine(
    folder: str | Path,
    *,
    precision: str = "fp16",
    profile: BatchProfile = BatchProfile(),
    workspace_mb: int = 1024,
    check: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the engine into a verified bundle and record it in the manifest; with `check`, install it only if
    it agrees with ONNX Runtime on the bundle's check windows (an EngineError otherwise)."""

    def change(bundle: Bundle, stage: Path) -> dict[str, Any]:
        record = build_engine(bundle, stage, precision=precision, profile=profile, workspace_mb=workspace_mb, log=log)
        return {"engine": record}

    def compare(staged: Bundle) -> dict[str, Any]:
        return {"engine": {**staged.manifest["engine"], "check": check_engine(staged, log)}}

    bundle = staged_update(folder, change, compare if check else None)
    record = bundle.manifest["engine"]
    log(f"engine installed in {bundle.path} ({record['precision']}, TensorRT {record['tensorrt']}, {record['gpu']})")
    return record

"""The Jetson path without a Jetson: the graph as TensorRT 8.x reads it, the runner's failure modes through fake
`tensorrt`/`pycuda` modules, the engine build's pure logic and its staged bundle update. GPU-marked tests at the
end build and run real engines where TensorRT exists."""

from __future__ import annotations

import shutil
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import ExportOptions, _to_opset, export_onnx
from export.ops import as_tensorrt8_reads_it, audit_model
from export.tensorrt import (
    BatchProfile,
    EngineSource,
    check_engine,
    engine_record,
    engine_source,
    load_timing_cache,
    network_flags,
    staged_update,
    timing_cache_name,
    upstream_layers,
    version_tuple,
)
from qlung_edge.backends import open_backend
from qlung_edge.bundle import (
    CHECK_FILE,
    ENGINE_FILE,
    INT8_FILE,
    MODEL_FILE,
    NETWORK_FILE,
    NETWORK_INT8_FILE,
    BundleError,
    load_bundle,
)
from qlung_edge.daemon import Daemon, DaemonConfig, DaemonError, check_setup
from qlung_edge.frontend import open_frontend
from qlung_edge.sinks import CollectSink
from qlung_edge.tensorrt_runner import DeviceFacts, EngineError, EngineRunner, engine_refusal
from training.models import ASTConfig, QLungModel

# --------------------------------------------------------------------------- the graph every TensorRT parses


def test_both_bundle_models_parse_on_every_jetpack_line(bundle: Path) -> None:
    for name in (MODEL_FILE, INT8_FILE, NETWORK_FILE, NETWORK_INT8_FILE):
        audit = audit_model(onnx.load(str(bundle / name)))
        assert set(audit.by_target) == {"8.5", "8.6", "10.3"}
        assert audit.ok, audit.problems
    manifest = load_bundle(bundle).manifest
    assert manifest["op_audit"]["ok"] and manifest["int8"]["op_audit"]["ok"]


@pytest.mark.parametrize("name", [MODEL_FILE, INT8_FILE, NETWORK_FILE, NETWORK_INT8_FILE])
def test_tensorrt_8_reads_the_bundle_as_onnx_runtime_does(bundle: Path, name: str) -> None:
    """Rewritten the way the 8.5/8.6 importers read it, each model computes exactly what it computed."""
    model = onnx.load(str(bundle / name))
    windows = np.load(bundle / CHECK_FILE)["waveform"]
    if name.startswith("network"):  # the pieces the engine is built from take the front end's frames
        frontend = open_frontend(load_bundle(bundle))
        feed = {"logmel": np.stack([frontend(w) for w in windows])}
    else:
        feed = {"waveform": windows}
    ours = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    theirs = ort.InferenceSession(as_tensorrt8_reads_it(model).SerializeToString()).run(None, feed)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


class NormalizeHead(torch.nn.Module):
    """The head as it was: F.normalize exports Shape(start, end) -> Expand, which 8.x misreads."""

    def __init__(self) -> None:
        super().__init__()
        self.project = torch.nn.Linear(16, 8)
        self.classes = torch.nn.Parameter(torch.randn(4, 8))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embedding = self.project(waveform[:, :16])
        cosine = torch.nn.functional.linear(
            torch.nn.functional.normalize(embedding, dim=1), torch.nn.functional.normalize(self.classes, dim=1)
        )
        return (cosine,)


def _export_plain(module: torch.nn.Module, path: Path) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=8)
    torch.onnx.export(
        module.eval(),
        (torch.randn(2, 128000),),
        str(path),
        dynamo=True,
        input_names=["waveform"],
        dynamic_shapes={"waveform": {0: batch}},
        optimize=True,
        external_data=False,
        verbose=False,
    )
    return _to_opset(onnx.load(str(path)), 17)


def test_the_f_normalize_graph_is_refused_for_8x_and_fails_as_8x_reads_it(tmp_path: Path) -> None:
    model = _export_plain(NormalizeHead(), tmp_path / "head.onnx")
    audit = audit_model(model)
    for target in ("8.5", "8.6"):
        problems = " ".join(audit.by_target[target])
        assert "start/end are ignored" in problems and "GEMM needs 2-D inputs" in problems
    assert audit.by_target["10.3"] == []
    x = np.random.default_rng(0).standard_normal((2, 128000)).astype(np.float32)
    ort.InferenceSession(model.SerializeToString()).run(None, {"waveform": x})  # fine as written
    with pytest.raises(Exception, match="rank"):
        ort.InferenceSession(as_tensorrt8_reads_it(model).SerializeToString()).run(None, {"waveform": x})


def test_the_ast_backbone_exports_for_every_jetpack_line(tmp_path: Path) -> None:
    """Gelu (opset 20) and LayerNormalization (no 8.5 importer) are written out; nothing reads x.shape."""
    torch.manual_seed(0)
    model = QLungModel("ast", ast=ASTConfig(embed_dim=64, depth=2, heads=4)).eval()
    path = tmp_path / "ast.onnx"
    export_onnx(model, path, ExportOptions(max_batch=4))
    graph = onnx.load(str(path))
    audit = audit_model(graph)
    assert audit.ok, audit.problems
    assert not {"Gelu", "LayerNormalization"} & set(audit.ops)
    x = (0.05 * np.random.default_rng(1).standard_normal((3, 128000))).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))["probabilities"].numpy()
    got = ort.InferenceSession(graph.SerializeToString()).run(["probabilities"], {"waveform": x})[0]
    emulated = ort.InferenceSession(as_tensorrt8_reads_it(graph).SerializeToString()).run(
        ["probabilities"], {"waveform": x}
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(emulated, got)


def _model(nodes: list[Any], inputs: list[Any], inits: list[Any], opset: int = 17) -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])


def _i64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _f32(name: str, values: Any) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


CASES = {
    "unsqueeze axes computed": (
        _model(
            [
                helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Slice", ["s", "zero", "one"], ["axes"]),
                helper.make_node("Unsqueeze", ["x", "axes"], ["y"]),
            ],
            [X],
            [_i64("zero", [0]), _i64("one", [1])],
        ),
        {"8.5", "8.6", "10.3"},
        "axes must be a constant",
    ),
    "reduce axes input, opset 18": (
        _model([helper.make_node("ReduceMean", ["x", "ax"], ["y"])], [X], [_i64("ax", [1])], opset=18),
        {"8.5", "8.6"},
        "reduces over every axis",
    ),
    "layer normalization": (
        _model(
            [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"])],
            [X],
            [_f32("g", np.ones(8)), _f32("b", np.zeros(8))],
        ),
        {"8.5"},
        "no importer before TensorRT 8.6",
    ),
    "dequantize without zero point": (
        _model(
            [helper.make_node("DequantizeLinear", ["q", "scale"], ["y"])],
            [helper.make_tensor_value_info("q", TensorProto.INT8, [2, 8])],
            [numpy_helper.from_array(np.array(0.1, np.float32), "scale")],
        ),
        {"8.5", "8.6"},
        "needs the zero point",
    ),
    "asymmetric quantization": (
        _model(
            [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"])],
            [X],
            [
                numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
                numpy_helper.from_array(np.array(3, np.int8), "zp"),
            ],
        ),
        {"8.5", "8.6", "10.3"},
        "zero points must be 0",
    ),
    "gemm of rank 3": (
        _model(
            [helper.make_node("Gemm", ["x3", "w"], ["y"])],
            [helper.make_tensor_value_info("x3", TensorProto.FLOAT, [2, 3, 8])],
            [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")],
        ),
        {"8.5", "8.6", "10.3"},
        "GEMM needs 2-D inputs",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_audit_knows_each_importer(case: str) -> None:
    model, failing, message = CASES[case]
    audit = audit_model(model)
    for target, problems in audit.by_target.items():
        if target in failing:
            assert any(message in p for p in problems), (target, problems)
        else:
            assert not any(message in p for p in problems), (target, problems)


def test_opset_and_foreign_ops_are_refused_per_release() -> None:
    relu18 = _model([helper.make_node("Relu", ["x"], ["y"])], [X], [], opset=18)
    audit = audit_model(relu18)
    assert audit.by_target["10.3"] == [] and all("opset 18" in p[0] for p in (audit.by_target["8.5"],))
    stft = audit_model(_model([helper.make_node("STFT", ["x", "step"], ["y"])], [X], [_i64("step", [160])]))
    assert all(any("STFT" in p and "Conv1d" in p for p in problems) for problems in stft.by_target.values())


# --------------------------------------------------------------------------- engine build logic


def test_network_flags_follow_the_tensorrt_version() -> None:
    assert version_tuple("8.5.2.2") == (8, 5, 2, 2) and version_tuple("10.3.0") == (10, 3, 0)
    assert network_flags("8.5.2.2", 0) == 1 and network_flags("8.6.1", 0) == 1
    assert network_flags("10.3.0", None) == 0 and network_flags("10.0.1", 0) == 0
    with pytest.raises(EngineError):
        network_flags("8.6.1", None)
    assert BatchProfile(1, 2, 8).shapes(128000) == ((1, 128000), (2, 128000), (8, 128000))
    assert BatchProfile(1, 1, 4).shapes(398, 128) == ((1, 398, 128), (1, 398, 128), (4, 398, 128))
    with pytest.raises(ValueError):
        BatchProfile(2, 1, 8)


def test_engines_are_built_from_the_network_piece_when_the_bundle_has_it(bundle: Path, tmp_path: Path) -> None:
    """The front end then runs on the CPU (each frame once) and the engine takes a window's frames."""
    loaded = load_bundle(bundle)
    frames = loaded.manifest["incremental"]["frames_per_window"]
    assert engine_source(loaded, "fp16") == EngineSource(NETWORK_FILE, "logmel", (frames, 128))
    assert engine_source(loaded, "int8") == EngineSource(NETWORK_INT8_FILE, "logmel", (frames, 128))
    record = engine_record(facts=FACTS, precision="fp16", profile=BatchProfile(), plan=tmp_path / ENGINE_FILE,
                           source=engine_source(loaded, "fp16"))  # fmt: skip
    assert (record["source"], record["input"]) == (NETWORK_FILE, "logmel")
    old = {**loaded.manifest}
    old.pop("incremental")
    whole = type(loaded)(loaded.path, old)
    assert engine_source(whole, "fp16") == EngineSource(MODEL_FILE, "waveform", (loaded.window_samples,))
    assert engine_source(whole, "int8").file == INT8_FILE


class FakeTensor:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeLayer:
    def __init__(self, name: str, inputs: list[str], outputs: list[str]) -> None:
        self.name = name
        self._in = [FakeTensor(n) if n else None for n in inputs]
        self._out = [FakeTensor(n) for n in outputs]
        self.num_inputs, self.num_outputs = len(self._in), len(self._out)

    def get_input(self, i: int) -> FakeTensor | None:
        return self._in[i]

    def get_output(self, i: int) -> FakeTensor:
        return self._out[i]


class FakeNetwork:
    def __init__(self, layers: list[FakeLayer]) -> None:
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]


def test_float32_layers_are_found_by_position_not_by_name() -> None:
    """As TensorRT 8.5 names them: the Conv1d's helper shuffles are unnamed, and a later layer shares a prefix."""
    network = FakeNetwork(
        [
            FakeLayer("(Unnamed Layer* 0) [Shuffle]", ["waveform"], ["t0"]),  # the Conv1d's unsqueeze
            FakeLayer("node_conv1d", ["t0", "kernel"], ["t1"]),
            FakeLayer("(Unnamed Layer* 2) [Shuffle]", ["t1"], ["conv1d"]),  # and its squeeze
            FakeLayer("node_slice_1", ["conv1d", ""], ["slice_1"]),  # an optional input left out
            FakeLayer("node_mul", ["slice_1", "slice_1"], ["power"]),
            FakeLayer("node_matmul", ["mel", "power"], ["matmul"]),
            FakeLayer("node_log", ["matmul"], ["log"]),
            FakeLayer("node_conv1d_1", ["log"], ["features"]),  # network, though its name starts like the DFT's
            FakeLayer("node_linear", ["features"], ["logits"]),
        ]
    )
    assert upstream_layers(network, "log") == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(EngineError, match="no tensor 'logmel'"):
        upstream_layers(network, "logmel")


FACTS = DeviceFacts("8.5.2.2", "Orin", "8.7", 16, 30_536)


def test_the_timing_cache_is_per_device_and_a_bad_one_is_replaced() -> None:
    assert timing_cache_name(FACTS) == "timing-trt8.5.2.2-sm87.cache"
    assert timing_cache_name(DeviceFacts("10.3.0", "Orin", "8.7", 8, 7_620)) != timing_cache_name(FACTS)

    class Config:
        def __init__(self, accept: bool, none_for_bytes: bool) -> None:
            self.accept, self.none_for_bytes = accept, none_for_bytes
            self.set: list[bytes] = []

        def create_timing_cache(self, blob: bytes) -> Any:
            return None if blob and self.none_for_bytes else types.SimpleNamespace(blob=blob)

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            assert ignore_mismatch is False
            self.set.append(cache.blob)
            return self.accept or not cache.blob

    notes: list[str] = []
    path = Path(__file__)  # any existing file stands in for a cache from elsewhere
    for accept, none_for_bytes, note in ((False, False, "does not fit"), (True, True, "")):
        config = Config(accept, none_for_bytes)
        cache = load_timing_cache(config, path, notes.append)
        assert cache.blob == b"", "a fresh cache, never None"
        assert config.set[-1] == b""
        if note:
            assert note in notes[-1]


def test_an_engine_built_elsewhere_is_refused() -> None:
    record = engine_record(facts=FACTS, precision="fp16", profile=BatchProfile(), plan=Path("model.plan"))
    assert record["sm_count"] == 16 and record["memory_mb"] == 30_536 and record["tolerance"] == 2e-2
    assert engine_refusal(record, FACTS) is None
    assert "TensorRT 8.5.2.2" in str(engine_refusal(record, DeviceFacts("10.3.0", "Orin", "8.7", 16, 30_536)))
    nano = DeviceFacts("8.5.2.2", "Orin", "8.7", 8, 7_620)  # same name and compute capability as an AGX
    assert "16 SMs" in str(engine_refusal(record, nano)) and "rebuild it here" in str(engine_refusal(record, nano))
    assert "MB" in str(engine_refusal(record, DeviceFacts("8.5.2.2", "Orin", "8.7", 16, 15_000)))


def _with_engine(bundle: Path, folder: Path, precision: str = "fp16", facts: DeviceFacts = FACTS) -> Path:
    """A copy of the bundle with a (fake) engine file and its record, as `export --trt` leaves it."""

    def change(b: Any, stage: Path) -> dict[str, Any]:
        (stage / ENGINE_FILE).write_bytes(b"not a real plan")
        return {"engine": engine_record(facts=facts, precision=precision, profile=BatchProfile(1, 1, 4),
                                        plan=stage / ENGINE_FILE)}  # fmt: skip

    shutil.copytree(bundle, folder)
    staged_update(folder, change)
    return folder


def test_a_failed_build_leaves_the_bundle_as_it_was(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def half_written(b: Any, stage: Path) -> dict[str, Any]:
        (stage / ENGINE_FILE).write_bytes(b"half a plan")
        (stage / "timing-trt8.5.2.2-sm87.cache").write_bytes(b"cache")
        raise EngineError("the GPU went away")

    with pytest.raises(EngineError, match="GPU went away"):
        staged_update(copy, half_written)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert not list(tmp_path.glob(".*partial")), "no staged folder left behind"
    load_bundle(copy)

    def refuse(staged: Any) -> dict[str, Any]:
        raise EngineError("differs from ONNX Runtime")

    with pytest.raises(EngineError, match="differs"):
        staged_update(copy, lambda b, s: {"engine": {"precision": "fp16"}}, refuse)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    # Through a symlink (bundles/current), the folder it points to is updated and the link stays a link.
    link = tmp_path / "current"
    link.symlink_to(copy)
    updated = staged_update(link, lambda b, s: {"note": "x"})
    assert link.is_symlink() and updated.manifest["note"] == "x" and load_bundle(link).manifest["note"] == "x"


# --------------------------------------------------------------------------- the runner, through fakes


class Recorder(list):  # type: ignore[type-arg]
    """What the fake driver saw, in order."""


def _fake_modules(events: Recorder, *, facts: DeviceFacts = FACTS, enqueue: bool = True, shape: bool = True,
                  start_delay: float = 0.0) -> dict[str, types.ModuleType]:  # fmt: skip
    """`tensorrt`, `pycuda` and `pycuda.driver` as the runner uses them, recording what happens."""

    class Tracked:
        def __init__(self, name: str) -> None:
            self.name = name

        def __del__(self) -> None:
            events.append(f"free {self.name}")

    class Execution(Tracked):
        def set_tensor_address(self, name: str, address: int) -> bool:
            return True

        def set_input_shape(self, name: str, dims: tuple[int, ...]) -> bool:
            events.append(f"shape {dims}")
            return shape

        def execute_async_v3(self, handle: int) -> bool:
            events.append("enqueue")
            return enqueue

    class Engine(Tracked):
        num_io_tensors = 2

        def create_execution_context(self) -> Execution:
            return Execution("execution context")

        def get_tensor_name(self, i: int) -> str:
            return ["waveform", "probabilities"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "input" if name == "waveform" else "output"

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 128000) if name == "waveform" else (-1, 4)

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Runtime(Tracked):
        def __init__(self, logger: Any) -> None:
            super().__init__("runtime")

        def deserialize_cuda_engine(self, plan: bytes) -> Engine:
            return Engine("engine")

    trt = types.ModuleType("tensorrt")
    trt.__version__ = facts.tensorrt  # type: ignore[attr-defined]
    trt.Runtime = Runtime  # type: ignore[attr-defined]
    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.float32  # type: ignore[attr-defined]

    class Context:
        def pop(self) -> None:
            events.append("pop context")

    class Device:
        def __init__(self, index: int) -> None:
            pass

        def make_context(self) -> Context:
            time.sleep(start_delay)
            return Context()

        def compute_capability(self) -> tuple[int, int]:
            major, minor = facts.compute_capability.split(".")
            return int(major), int(minor)

        def name(self) -> str:
            return facts.gpu

        def get_attribute(self, attribute: str) -> int:
            return facts.sm_count

        def total_memory(self) -> int:
            return facts.memory_mb << 20

    class Allocation:
        def __init__(self, nbytes: int) -> None:
            self.nbytes = nbytes

        def __int__(self) -> int:
            return id(self)

        def free(self) -> None:
            events.append("free device buffer")

    class Stream:
        handle = 0

        def synchronize(self) -> None:
            events.append("synchronize")

    device_memory: dict[int, np.ndarray] = {}

    def htod(dest: Allocation, src: np.ndarray, stream: Stream) -> None:
        events.append(f"htod {src.nbytes}")
        device_memory[id(dest)] = np.array(src)

    def dtoh(dest: np.ndarray, src: Allocation, stream: Stream) -> None:
        events.append(f"dtoh {dest.nbytes}")
        n = dest.shape[0]
        windows = next(v for v in device_memory.values() if v.shape[1] == 128000)
        dest[...] = np.tile(windows[:n, :1], (1, dest.shape[1]))  # "probabilities": the first sample, 4 times

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None  # type: ignore[attr-defined]
    driver.Device = Device  # type: ignore[attr-defined]
    driver.Stream = Stream  # type: ignore[attr-defined]
    driver.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="sm")  # type: ignore[attr-defined]
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)  # type: ignore[attr-defined]
    driver.mem_alloc = Allocation  # type: ignore[attr-defined]
    driver.memcpy_htod_async = htod  # type: ignore[attr-defined]
    driver.memcpy_dtoh_async = dtoh  # type: ignore[attr-defined]
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": driver}


@pytest.fixture()
def engine_bundle(bundle: Path, tmp_path: Path) -> Path:
    return _with_engine(bundle, tmp_path / "with-engine")


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def install(**options: Any) -> Recorder:
        events = Recorder()
        for name, module in _fake_modules(events, **options).items():
            monkeypatch.setitem(sys.modules, name, module)
        return events

    yield install


def test_runner_runs_only_the_rows_in_use_and_tears_down_in_order(engine_bundle: Path, fakes: Any) -> None:
    events = fakes()
    runner = EngineRunner(load_bundle(engine_bundle), start_timeout=5)
    windows = np.random.default_rng(0).standard_normal((3, 128000)).astype(np.float32)
    out = runner.run(windows)["probabilities"]
    np.testing.assert_array_equal(out[:, 0], windows[:, 0])
    assert "shape (3, 128000)" in events and f"htod {3 * 128000 * 4}" in events and f"dtoh {3 * 4 * 4}" in events
    runner.close()
    teardown = events[events.index("pop context") - 6 :]
    assert teardown == [
        "synchronize",  # the stream drained first
        "free execution context",  # then TensorRT's objects, while the CUDA context is still current
        "free engine",
        "free runtime",
        "free device buffer",
        "free device buffer",
        "pop context",  # the context last
    ]


def test_a_failed_enqueue_or_shape_is_an_error_not_stale_outputs(engine_bundle: Path, fakes: Any) -> None:
    fakes(enqueue=False)
    runner = EngineRunner(load_bundle(engine_bundle), start_timeout=5)
    with pytest.raises(EngineError, match="could not enqueue"):
        runner.run(np.zeros((1, 128000), np.float32))
    runner.close()
    fakes(shape=False)
    runner = EngineRunner(load_bundle(engine_bundle), start_timeout=5)
    with pytest.raises(EngineError, match="refused input shape"):
        runner.run(np.zeros((2, 128000), np.float32))
    with pytest.raises(EngineError, match="allows 1 to 4"):
        runner.run(np.zeros((5, 128000), np.float32))
    runner.close()


def test_import_failures_and_refusals_reach_the_caller_in_bounded_time(
    engine_bundle: Path, fakes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what `import tensorrt` does where JetPack's is missing
    began = time.monotonic()
    with pytest.raises(EngineError, match=r"cannot import tensorrt.*JETSON\.md"):
        EngineRunner(load_bundle(engine_bundle), start_timeout=5)
    assert time.monotonic() - began < 5
    events = fakes(facts=DeviceFacts("8.5.2.2", "Orin", "8.7", 8, 7_620))
    with pytest.raises(EngineError, match="rebuild it here"):
        EngineRunner(load_bundle(engine_bundle), start_timeout=5)
    assert events[-1] == "pop context", "the context made for the refused engine is released"
    fakes(start_delay=2.0)
    with pytest.raises(EngineError, match=r"did not start within 0\.2 s"):
        EngineRunner(load_bundle(engine_bundle), start_timeout=0.2)


def test_auto_falls_back_to_onnx_runtime_and_says_why(engine_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backend = open_backend(load_bundle(engine_bundle), "auto")
    assert backend.name == "onnx-fp32" and "cannot import tensorrt" in backend.details["fallback"]
    with pytest.raises(EngineError):
        open_backend(load_bundle(engine_bundle), "tensorrt")
    wav = engine_bundle.parent / "quiet.wav"
    sf.write(wav, np.zeros(16000 * 9, np.float32), 16000)
    sink = CollectSink()
    daemon = Daemon(DaemonConfig(bundle=engine_bundle, source=f"file:{wav}", sinks=[]), sinks=[sink])
    health = daemon.health()
    assert "cannot import tensorrt" in health["backend_details"]["fallback"]
    daemon.run()
    assert "cannot import tensorrt" in sink.events[0]["backend_details"]["fallback"]


def test_engine_checks_hold_each_precision_to_its_own_tolerance(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --trt --check` and `daemon --check` fail on a mismatch; an FP16 engine is held to FP16's tolerance."""
    checks = np.load(bundle / CHECK_FILE)

    class Off:
        """An engine whose probabilities are off by `error` from the export's."""

        error = 0.0
        maximum = 4

        def __init__(self, b: Any, start_timeout: float = 60.0) -> None:
            pass

        def run(self, windows: np.ndarray) -> dict[str, np.ndarray]:
            index = [int(np.argmin(np.abs(checks["waveform"][:, :64] - w[:64]).sum(1))) for w in windows]
            return {k: checks[k][index] + self.error for k in ("logits", "probabilities", "embedding")}

        def close(self) -> None:
            pass

    monkeypatch.setattr("export.tensorrt.EngineRunner", Off)
    monkeypatch.setattr("qlung_edge.backends.EngineRunner", Off)
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    for precision, error, ok in (("fp16", 0.01, True), ("fp32", 0.01, False), ("int8", 0.04, True)):
        folder = _with_engine(bundle, tmp_path / f"{precision}-{error}", precision=precision)
        Off.error = error
        config = DaemonConfig(bundle=folder, source=f"file:{wav}", backend="tensorrt")
        if ok:
            check_engine(load_bundle(folder), log=lambda line: None)
            assert any("<= " in line for line in check_setup(config))
        else:
            with pytest.raises(EngineError, match="not installed"):
                check_engine(load_bundle(folder), log=lambda line: None)
            with pytest.raises(DaemonError, match="differs from the export"):
                check_setup(config)


def test_export_trt_check_exits_non_zero_on_a_mismatch(bundle: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from qlung_edge.cli import cli

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)

    def fake_build(b: Any, folder: Path, **kwargs: Any) -> dict[str, Any]:
        (folder / ENGINE_FILE).write_bytes(b"plan")
        return engine_record(facts=FACTS, precision="fp16", profile=BatchProfile(1, 1, 4), plan=folder / ENGINE_FILE)

    def mismatch(b: Any, log: Any) -> dict[str, float]:
        raise EngineError("the fp16 engine differs from ONNX Runtime by 3.1e-01", path=b.path / ENGINE_FILE)

    monkeypatch.setattr("export.tensorrt.build_engine", fake_build)
    monkeypatch.setattr("export.tensorrt.check_engine", mismatch)
    before = load_bundle(copy).manifest
    result = CliRunner().invoke(cli, ["export", str(copy), "--trt", "--check"])
    assert result.exit_code != 0 and isinstance(result.exception, EngineError)
    assert load_bundle(copy).manifest == before and not (copy / ENGINE_FILE).exists()
    result = CliRunner().invoke(cli, ["export", str(copy), "--trt"])
    assert result.exit_code == 0, result.output
    assert load_bundle(copy).manifest["engine"]["sm_count"] == 16


# --------------------------------------------------------------------------- on a GPU with TensorRT


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_build_check_and_reload(bundle: Path, tmp_path: Path, precision: str) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    from export.tensorrt import add_engine

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    record = add_engine(copy, precision=precision, profile=BatchProfile(1, 1, 4), check=True, log=print)
    assert record["check"]["probabilities"] <= record["tolerance"]
    assert load_bundle(copy).manifest["engine"]["tensorrt"] == record["tensorrt"]
    for _ in range(3):  # reloads: each runner starts and tears down cleanly
        backend = open_backend(load_bundle(copy), "tensorrt")
        backend.run(np.load(copy / CHECK_FILE)["waveform"][:2])
        backend.close()
    with pytest.raises(BundleError):
        EngineRunner(load_bundle(bundle))


def test_a_network_engine_is_checked_on_the_front_end_frames(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine built from network.onnx takes frames: `--check` feeds it the bundle front end's frames and
    holds it to ONNX Runtime's network on the same frames; the daemon's backend computes them itself."""
    loaded = load_bundle(bundle)
    network = ort.InferenceSession(str(bundle / NETWORK_FILE))
    seen: list[tuple[int, ...]] = []

    class NetworkEngine:
        error = 0.0
        maximum = 4

        def __init__(self, b: Any, start_timeout: float = 60.0) -> None:
            pass

        def run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
            seen.append(frames.shape)
            names = [o.name for o in network.get_outputs()]
            out = dict(zip(names, network.run(names, {"logmel": frames})))
            return {k: v + self.error for k, v in out.items()}

        def close(self) -> None:
            pass

    monkeypatch.setattr("export.tensorrt.EngineRunner", NetworkEngine)
    monkeypatch.setattr("qlung_edge.backends.EngineRunner", NetworkEngine)
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)

    def change(b: Any, stage: Path) -> dict[str, Any]:
        (stage / ENGINE_FILE).write_bytes(b"not a real plan")
        return {"engine": engine_record(facts=FACTS, precision="fp16", profile=BatchProfile(1, 1, 4),
                                        plan=stage / ENGINE_FILE, source=engine_source(b, "fp16"))}  # fmt: skip

    staged_update(folder, change)
    check_engine(load_bundle(folder), log=lambda line: None)
    frames = loaded.manifest["incremental"]["frames_per_window"]
    assert seen and all(shape[1:] == (frames, 128) for shape in seen)
    backend = open_backend(load_bundle(folder), "tensorrt")
    assert backend.frontend is not None and backend.details["input"] == "logmel"
    windows = np.load(bundle / CHECK_FILE)["waveform"]
    np.testing.assert_allclose(backend.run(windows), np.load(bundle / CHECK_FILE)["probabilities"], atol=1e-4)
    NetworkEngine.error = 0.05
    with pytest.raises(EngineError, match="not installed"):
        check_engine(load_bundle(folder), log=lambda line: None)

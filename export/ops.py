"""Will the Jetson's TensorRT parse this ONNX graph? An audit per TensorRT release, and 8.x's reading of it.

The ONNX parser (onnx-tensorrt) differs between the releases JetPack ships: 8.5.2 (JetPack 5.1.x), 8.6.1
(JetPack 6.0) and 10.3 (JetPack 6.1/6.2). Checking op names is not enough. 8.x ignores Shape's `start`/`end`
(the whole shape comes back), ignores a Reduce op's `axes` input (opset 18: it reduces over every axis),
needs some inputs to be constants, a zero point on every Q/DQ node and 2-D Gemm inputs. So the audit checks,
per release, op names and the attributes and input kinds each importer needs, and it infers shapes on the
graph *as 8.x reads it* (`as_tensorrt8_reads_it`) to see the ranks Gemm gets there. The same rewrite runs in
ONNX Runtime in the tests: a graph whose 8.x reading computes something else must not ship.

Facts from the importers at onnx-tensorrt 7583da4c (TensorRT 8.5.2), 6ba67d34 (8.6.1) and 96e78110 (10.1,
standing in for 10.3 with its changelog): builtin_op_importers.cpp / onnxOpImporters.cpp.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_OPSET = 17
"""TensorRT 8.5 and 8.6 (JetPack 5, JetPack 6.0) document operators up to opset 17."""

TARGETS: dict[str, str] = {"8.5": "JetPack 5.1.x", "8.6": "JetPack 6.0", "10.3": "JetPack 6.1/6.2"}
"""The TensorRT releases a bundle must parse on, and the JetPack line that ships each."""

MAX_OPSET_BY_TARGET = {"8.5": 17, "8.6": 17, "10.3": 20}

COMMON_OPS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "Identity",
        "InstanceNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "LpNormalization",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pad",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Range",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "Round",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Where",
    ]
)
"""Ops every one of the three parsers imports (the intersection of their operator tables)."""

ADDED_IN = {"LayerNormalization": "8.6", "Gelu": "10.3"}
"""Ops a newer parser imports that an older one does not (8.5 has no LayerNormalization; 8.x no Gelu)."""

NOT_ON_JETSON = {
    "STFT": "no STFT in TensorRT: the front end must stay a Conv1d",
    "DFT": "no DFT in TensorRT 8.x: the front end must stay a Conv1d",
    "MelWeightMatrix": "compute the mel matrix as a constant instead",
    "HannWindow": "fold the window into the Conv1d kernel",
    "Reciprocal": "not in TensorRT 8.5's parser; use Div",
}

REDUCE_AXES_IGNORED_BY_8X = {"ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                             "ReduceProd", "ReduceSumSquare"}  # fmt: skip
"""8.x never passes these ops' `axes` input (opset 18) through: they reduce over every axis."""

COMPLEX_TYPES = {14, 15}
"""onnx.TensorProto.COMPLEX64 and COMPLEX128."""
INT8, UINT8 = 3, 2
"""onnx.TensorProto.INT8 and UINT8."""


def _version(target: str) -> tuple[int, ...]:
    return tuple(int(p) for p in target.split("."))


@dataclass
class OpAudit:
    ops: dict[str, int] = field(default_factory=dict)
    opset: int = 0
    by_target: dict[str, list[str]] = field(default_factory=dict)
    """Problems per TensorRT release (an empty list: it parses there)."""

    @property
    def problems(self) -> list[str]:
        return [f"TensorRT {t}: {p}" for t, problems in self.by_target.items() for p in problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ops = ", ".join(f"{name} {count}" for name, count in sorted(self.ops.items()))
        verdict = ("parses on TensorRT " + ", ".join(self.by_target)) if self.ok else "; ".join(self.problems)
        return f"opset {self.opset}; {sum(self.ops.values())} nodes: {ops} -> {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "opset": self.opset, "ops": self.ops, "targets": self.by_target}


# --------------------------------------------------------------------------- graph helpers


def _nodes(model: Any) -> list[Any]:
    """Every node, those of subgraphs (If/Loop bodies) included."""
    nodes = list(model.graph.node)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                nodes += list(attribute.g.node)
    return nodes


def _constants(model: Any) -> set[str]:
    """Names of tensors TensorRT sees as weights: initializers and Constant outputs."""
    names = {t.name for t in model.graph.initializer}
    names |= {out for node in _nodes(model) if node.op_type == "Constant" for out in node.output}
    return names


def _constant_values(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in _nodes(model):
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _attribute(node: Any, name: str) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def _opset(model: Any) -> int:
    return next((int(e.version) for e in model.opset_import if e.domain in ("", "ai.onnx")), 0)


def _input(node: Any, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def front_end_nodes(model: Any) -> list[str]:
    """Names of the nodes that compute the log-mel: the first Log node and everything it depends on."""
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    log = next((n for n in nodes if n.op_type == "Log"), None)
    if log is None:
        return []
    seen: dict[str, Any] = {}
    stack = [log]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        stack += [producer[i] for i in node.input if i in producer]
    return sorted(seen)


def front_end_output(model: Any) -> str | None:
    """The tensor the front end ends in (the Log node's output): everything upstream of it stays float32."""
    log = next((n for n in model.graph.node if n.op_type == "Log"), None)
    return None if log is None else str(log.output[0])


# --------------------------------------------------------------------------- 8.x's reading of a graph


def as_tensorrt8_reads_it(model: Any) -> Any:
    """A copy of `model` rewritten the way the 8.5/8.6 importers read it.

    Shape loses `start`/`end` (8.x returns the whole shape); Reduce ops other than ReduceSum lose their `axes`
    input (8.x reduces over every axis) and `noop_with_empty_axes`. Everything else 8.x reads as written.
    """
    out = copy.deepcopy(model)
    for node in _nodes(out):
        if node.op_type == "Shape":
            kept = [a for a in node.attribute if a.name not in ("start", "end")]
            del node.attribute[:]
            node.attribute.extend(kept)
        elif node.op_type in REDUCE_AXES_IGNORED_BY_8X:
            if len(node.input) > 1:
                del node.input[1:]
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    del out.graph.value_info[:]  # shapes stored by the exporter describe the original reading
    return out


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor, by ONNX shape inference with data propagation (shape tensors followed)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}
    ranks.update({t.name: len(t.dims) for t in inferred.graph.initializer})
    return ranks


# --------------------------------------------------------------------------- the audit


def _target_problems(model: Any, target: str, ranks: dict[str, int]) -> list[str]:
    version = _version(target)
    eight = version < (10,)
    constants = _constants(model)
    values = _constant_values(model)
    problems: list[str] = []
    opset = _opset(model)
    if opset > MAX_OPSET_BY_TARGET[target]:
        problems.append(f"opset {opset} is newer than this parser documents (at most {MAX_OPSET_BY_TARGET[target]})")
    for node in _nodes(model):
        op, name = node.op_type, node.name or node.output[0]
        where = f"{op} ({name})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where} is from custom domain {node.domain!r}")
            continue
        if op in ADDED_IN and version < _version(ADDED_IN[op]):
            problems.append(f"{where}: no importer before TensorRT {ADDED_IN[op]}")
        elif op not in COMMON_OPS and op not in ADDED_IN:
            problems.append(f"{where}: {NOT_ON_JETSON.get(op, 'not in the TensorRT parser operator list')}")
        if (
            op == "Shape"
            and eight
            and (_attribute(node, "start") not in (None, 0) or _attribute(node, "end") is not None)
        ):
            problems.append(f"{where}: start/end are ignored by the 8.x Shape importer (it returns the whole shape)")
        if op in REDUCE_AXES_IGNORED_BY_8X and _input(node, 1):
            if eight:
                problems.append(f"{where}: 8.x ignores the axes input and reduces over every axis")
            elif _input(node, 1) not in constants:
                problems.append(f"{where}: axes must be a constant")
        if op == "ReduceSum" and _input(node, 1) and _input(node, 1) not in constants:
            problems.append(f"{where}: axes must be a constant")
        if op in ("Unsqueeze", "Squeeze") and _input(node, 1) and _input(node, 1) not in constants:
            problems.append(f"{where}: axes must be a constant")
        if op == "Slice" and _input(node, 3) and _input(node, 3) not in constants and version < (10, 3):
            problems.append(f"{where}: axes must be a constant before TensorRT 10.3")
        if op == "Pad" and _input(node, 3):
            if eight:
                problems.append(f"{where}: 8.x rejects Pad's axes input")
            elif _input(node, 3) not in constants:
                problems.append(f"{where}: axes must be a constant")
        if op in ("QuantizeLinear", "DequantizeLinear"):
            problems += _qdq_problems(node, where, eight, constants, values)
        if op == "Conv" and _input(node, 1) not in constants and _attribute(node, "kernel_shape") is None:
            problems.append(f"{where}: a computed weight needs the kernel_shape attribute")
        if op == "Gemm":
            for tensor in node.input[:2]:
                rank = ranks.get(tensor)
                if rank is not None and rank != 2:
                    problems.append(f"{where}: input {tensor} has rank {rank}; GEMM needs 2-D inputs")
    return problems


def _qdq_problems(node: Any, where: str, eight: bool, constants: set[str], values: dict[str, Any]) -> list[str]:
    import numpy as np

    problems = []
    scale, zero = _input(node, 1), _input(node, 2)
    if scale not in constants:
        problems.append(f"{where}: the scale must be a constant")
    elif np.any(np.asarray(values.get(scale, 1.0)) <= 0):
        problems.append(f"{where}: scales must be positive")
    if not zero:
        if eight:
            problems.append(f"{where}: 8.x needs the zero point input")
    elif zero not in constants:
        problems.append(f"{where}: the zero point must be a constant")
    elif zero in values:
        point = np.asarray(values[zero])
        if point.dtype == np.uint8:
            problems.append(f"{where}: unsigned 8-bit quantization; TensorRT needs INT8")
        if np.any(point != 0):
            problems.append(f"{where}: zero points must be 0 (symmetric quantization)")
    return problems


def audit_model(model: Any, targets: tuple[str, ...] = tuple(TARGETS)) -> OpAudit:
    """Every node against each TensorRT release's importer: op names, attributes, constant inputs, Gemm ranks."""
    audit = OpAudit(opset=_opset(model))
    for node in _nodes(model):
        audit.ops[node.op_type] = audit.ops.get(node.op_type, 0) + 1
    types = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    complex_tensors = [v.name for v in types if v.type.tensor_type.elem_type in COMPLEX_TYPES]
    complex_tensors += [t.name for t in model.graph.initializer if t.data_type in COMPLEX_TYPES]
    try:
        ranks_8x = _ranks(as_tensorrt8_reads_it(model))
        ranks_10 = _ranks(copy.deepcopy(model))
        shapes_note = ""
    except Exception as err:  # shape inference refuses malformed graphs: say so instead of guessing
        ranks_8x, ranks_10, shapes_note = {}, {}, f"shape inference failed ({err})"
    for target in targets:
        problems = _target_problems(model, target, ranks_8x if _version(target) < (10,) else ranks_10)
        problems += [f"tensor {name} is complex: TensorRT has no complex types" for name in complex_tensors]
        if shapes_note:
            problems.append(shapes_note)
        audit.by_target[target] = problems
    return audit


def audit_file(path: str | Path) -> OpAudit:
    import onnx

    return audit_model(onnx.load(str(path), load_external_data=False))

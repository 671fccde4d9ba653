"""What the TensorRT ONNX parser of JetPack 5 and 6 (TensorRT 8.5 to 10.3) accepts, and an audit against it.

The list is the intersection of the parser's operator tables for those releases, limited to ops a classifier
like ours can produce; anything else (STFT, DFT, complex tensors, custom domains) would only fail on the
Jetson, long after export, so the export refuses it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_OPSET = 17
"""TensorRT 8.5 and 8.6 (JetPack 5, JetPack 6.0) parse opsets up to 17."""

TENSORRT_OPS = frozenset(
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

NOT_ON_JETSON = {
    "STFT": "no STFT in TensorRT: the front end must stay a Conv1d",
    "DFT": "no DFT in TensorRT: the front end must stay a Conv1d",
    "MelWeightMatrix": "compute the mel matrix as a constant instead",
    "HannWindow": "fold the window into the Conv1d kernel",
    "Reciprocal": "not in TensorRT 8.5's parser; use Div",
    "LayerNormalization": "TensorRT 8.5 lacks it (8.6 and later have it)",
}

COMPLEX_TYPES = {14, 15}
"""onnx.TensorProto.COMPLEX64 and COMPLEX128."""


@dataclass
class OpAudit:
    ops: dict[str, int] = field(default_factory=dict)
    opset: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ops = ", ".join(f"{name} {count}" for name, count in sorted(self.ops.items()))
        verdict = "all supported by TensorRT 8.5-10.3" if self.ok else "; ".join(self.problems)
        return f"opset {self.opset}; {sum(self.ops.values())} nodes: {ops} -> {verdict}"


def _value_types(model: Any) -> list[tuple[str, int]]:
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    found = [(v.name, v.type.tensor_type.elem_type) for v in values if v.type.HasField("tensor_type")]
    found += [(t.name, t.data_type) for t in graph.initializer]
    return found


def audit_model(model: Any) -> OpAudit:
    """Every node's op and domain, the opset and the tensor types, checked against TensorRT 8.5-10.3."""
    audit = OpAudit()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            audit.opset = int(entry.version)
    if audit.opset > MAX_OPSET:
        audit.problems.append(f"opset {audit.opset} is newer than TensorRT 8.5/8.6 read (at most {MAX_OPSET})")
    nodes = list(model.graph.node)
    for node in model.graph.node:  # subgraphs of If/Loop would be audited too
        for attribute in node.attribute:
            if attribute.HasField("g"):
                nodes += list(attribute.g.node)
    for node in nodes:
        audit.ops[node.op_type] = audit.ops.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            audit.problems.append(f"{node.op_type} ({node.name}) is from custom domain {node.domain!r}")
        elif node.op_type not in TENSORRT_OPS:
            why = NOT_ON_JETSON.get(node.op_type, "not in the TensorRT 8.5 parser's operator list")
            audit.problems.append(f"{node.op_type} ({node.name}): {why}")
    for name, elem_type in _value_types(model):
        if elem_type in COMPLEX_TYPES:
            audit.problems.append(f"tensor {name} is complex: TensorRT has no complex types")
    return audit


def audit_file(path: str | Path) -> OpAudit:
    import onnx

    return audit_model(onnx.load(str(path), load_external_data=False))

"""What the daemon tells the world: one frozen dataclass per event type, and the JSON Schema they define.

Every sink receives the same JSON object: a header (`schema`, `type`, `stream`, `run_id`, `seq`, `time`)
followed by the fields of the event's dataclass; optional fields that are empty are left out. The JSON Schema
shipped in `qlung_edge/schema/` is generated from these classes (`event_schema()`, `qlung-edge schema`), so
the two cannot drift apart: a test regenerates it and compares.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from qlung_edge.config import field_types

SCHEMA_VERSION = 3
"""2 added run_id, model_id and UTC capture times; 3 examinations (exam and verdict events, exam_id on windows).
Bump it with every change a consumer could notice."""
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / f"events.v{SCHEMA_VERSION}.json"


class WindowStatus(str, enum.Enum):
    """What became of a window: the model's answer, refused by the quality gate, or skipped under overload."""

    CLASSIFIED = "classified"
    GATED = "gated"
    DROPPED = "dropped"


class GateReason(str, enum.Enum):
    """Why the gate refused a window; 'settling' passes the thresholds but follows refused windows."""

    DEVICE_GAP = "device_gap"
    TOO_QUIET = "too_quiet"
    CLIPPED = "clipped"
    NOISE_LIKE = "noise_like"
    DROPOUT = "dropout"
    LOW_QUALITY = "low_quality"
    SETTLING = "settling"
    ESTIMATED_POOR = "estimated_poor"
    """The bundle's learned quality estimate judges the window poor (P(poor) at or above its threshold)."""
    QUALITY_UNKNOWN = "quality_unknown"
    """The learned quality estimate gave no number (NaN)."""


ADVICE: dict[str, str] = {
    GateReason.DEVICE_GAP.value: "the stethoscope link lost audio: check the cable or connection",
    GateReason.TOO_QUIET.value: "signal too quiet: press the chest piece flat on bare skin",
    GateReason.CLIPPED.value: "signal clipping: lower the gain or ease the pressure",
    GateReason.NOISE_LIKE.value: "noise, not breath sounds: check contact, stop rubbing, quiet the room",
    GateReason.DROPOUT.value: "audio dropped out: check the chest piece and cable",
    GateReason.LOW_QUALITY.value: "poor recording quality: reposition the chest piece",
    GateReason.SETTLING.value: "signal recovering: hold the chest piece still",
    GateReason.ESTIMATED_POOR.value: "sounds like a poor recording: reposition, keep still, quiet the room",
    GateReason.QUALITY_UNKNOWN.value: "the quality check gave no answer: restart the device if this persists",
}
"""What the clinician is told to do about each reason (the first reason of a window is shown)."""


def advice_for(reasons: tuple[str, ...]) -> str:
    return ADVICE.get(reasons[0], ADVICE[GateReason.LOW_QUALITY.value]) if reasons else ""


# --------------------------------------------------------------------------- parts of events


@dataclass(frozen=True)
class WindowSpan:
    index: int
    """0, 1, 2, ... per run: one window per hop."""
    start: float
    """Seconds on the stream's timeline (concealed device gaps included)."""
    end: float
    start_utc: str
    """When the window's first sample was captured (ISO-8601 UTC, from the wall clock at the first block)."""
    end_utc: str


@dataclass(frozen=True)
class QualityFields:
    aqs: float
    rms_dbfs: float
    entropy: float
    clipped_fraction: float
    dropout_seconds: float
    gap_seconds: float
    """Concealed device silence inside the window."""


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class ExamState:
    """The examination's running answer after this window."""

    label: str | None
    probabilities: dict[str, float] | None
    windows: int
    """Accepted windows the running answer rests on."""
    accepted_total: int


# --------------------------------------------------------------------------- the events


@dataclass(frozen=True)
class StartEvent:
    type: ClassVar[str] = "start"
    bundle: str
    model: str | None
    model_id: str
    """The bundle's manifest hash: which model produced the events that follow."""
    backend: str
    backend_details: dict[str, Any]
    source: str
    hop_seconds: float
    window_seconds: float
    start_seconds: float
    """From the daemon's start to ready."""
    http: str | None = None


@dataclass(frozen=True)
class WindowEvent:
    type: ClassVar[str] = "window"
    model_id: str
    window: WindowSpan
    status: WindowStatus
    quality: QualityFields
    latency_ms: float
    """From the window's last sample reaching the daemon to this event."""
    exam_id: str | None = None
    """The examination the window belongs to (none between examinations)."""
    poor: float | None = None
    """The learned quality estimate, P(poor recording), where the bundle has one and the model ran: averaged
    over the examination's latest windows (the bundle's `smoothing_windows`), the value the gate judged."""
    reasons: tuple[GateReason, ...] | None = None
    """Gated windows: why, most important first."""
    advice: str | None = None
    prediction: Prediction | None = None
    """Classified windows: the model's answer."""
    exam: ExamState | None = None


@dataclass(frozen=True)
class ExamIdentity:
    """Who and where, as the control message that started the examination named them (all optional)."""

    patient: str | None = None
    encounter: str | None = None
    site: str | None = None
    """Chest site, e.g. 'left-posterior-base' or SPRSound's p1..p4."""


@dataclass(frozen=True)
class ExamEvent:
    """An examination starts: the examination's running answer (`exam` in window events) starts afresh."""

    type: ClassVar[str] = "exam"
    exam_id: str
    start: float
    """Seconds on the stream timeline."""
    start_utc: str
    reason: str
    """What started it: the first breath sounds, a control message, ..."""
    identity: ExamIdentity


@dataclass(frozen=True)
class VerdictEvidence:
    windows_accepted: int
    windows_gated: int
    gated_by_reason: dict[str, int]
    das: float
    """Pooled crackle (discontinuous adventitious) evidence of the accepted windows."""
    cas: float
    """Pooled wheeze (continuous adventitious) evidence."""
    class_fractions: dict[str, float]
    """Share of the accepted windows whose most probable class is each class."""


@dataclass(frozen=True)
class VerdictEvent:
    """An examination ends with SPRSound's record-level answer to both tasks, and the evidence behind it."""

    type: ClassVar[str] = "verdict"
    exam_id: str
    model_id: str
    identity: ExamIdentity
    start: float
    end: float
    start_utc: str
    end_utc: str
    ended_by: str
    """What ended it: the source ended, the chest piece was lifted, a control message, ..."""
    task_2_1: str
    """Normal, Adventitious or Poor Quality."""
    task_2_2: str
    """Normal, CAS, DAS, CAS & DAS or Poor Quality."""
    reason: str
    """Why this answer: which evidence crossed which threshold, or why the audio did not suffice."""
    evidence: VerdictEvidence
    rule: dict[str, Any]
    """The verdict rule of the bundle (pooling, thresholds, where it was calibrated)."""


@dataclass(frozen=True)
class SourceEvent:
    """Something the user should know about the audio source (downmixed, reconnected, NaN samples, ...)."""

    type: ClassVar[str] = "source"
    note: str


@dataclass(frozen=True)
class ReloadEvent:
    type: ClassVar[str] = "reload"
    ok: bool
    bundle: str
    model: str | None = None
    model_id: str | None = None
    backend: str | None = None
    message: str | None = None
    """Why a reload was refused (the old model keeps running)."""


@dataclass(frozen=True)
class ErrorEvent:
    type: ClassVar[str] = "error"
    where: str
    """source, processing or inference."""
    message: str


@dataclass(frozen=True)
class StopEvent:
    type: ClassVar[str] = "stop"
    counts: dict[str, Any]
    source_stats: dict[str, Any]
    errors: list[str] = field(default_factory=list)


EVENT_TYPES: tuple[type, ...] = (
    StartEvent,
    WindowEvent,
    ExamEvent,
    VerdictEvent,
    SourceEvent,
    ReloadEvent,
    ErrorEvent,
    StopEvent,
)


@dataclass(frozen=True)
class Header:
    """Fields every event starts with."""

    schema: int
    type: str
    stream: str
    """The daemon's stream name (the host name unless configured)."""
    run_id: str
    """New at every daemon start: events of two runs never share one, so duplicates and restarts show."""
    seq: int
    """0, 1, 2, ... per run."""
    time: str
    """When the event was emitted (ISO-8601 UTC)."""


def _json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.default is None:
                continue  # an optional part this event does not have
            out[f.name] = _json(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def event_dict(header: Header, event: Any) -> dict[str, Any]:
    """The JSON object of one event: header first, then the event's fields, empty optional fields left out."""
    return {**_json(header), **_json(event)}


# --------------------------------------------------------------------------- the JSON Schema


def _schema_of(kind: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return {}
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        return _schema_of(options[0], defs) if len(options) == 1 else {"anyOf": [_schema_of(a, defs) for a in options]}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"type": "string", "enum": [m.value for m in kind]}
    if dataclasses.is_dataclass(kind):
        name = kind.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = _object_schema(kind, defs)
        return {"$ref": f"#/$defs/{name}"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if kind in simple:
        return {"type": simple[kind]}
    if origin in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": _schema_of(item, defs)}
    if origin is dict:
        value = args[1] if args else Any
        return {"type": "object", "additionalProperties": _schema_of(value, defs)}
    raise TypeError(f"no JSON Schema for {kind!r}")


def _object_schema(cls: type, defs: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    types = field_types(cls)
    properties = dict(extra or {})
    required = list(properties)
    for f in dataclasses.fields(cls):
        optional = typing.get_origin(types[f.name]) is typing.Union and type(None) in typing.get_args(types[f.name])
        prop = _schema_of(types[f.name], defs)
        if optional and f.default is None:
            properties[f.name] = prop  # left out when empty
        else:
            properties[f.name] = {"anyOf": [prop, {"type": "null"}]} if optional else prop
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    schema["additionalProperties"] = False
    return schema


def event_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of every event the daemon emits, generated from the dataclasses above."""
    defs: dict[str, Any] = {}
    header = _object_schema(Header, defs)["properties"]
    header["schema"] = {"const": SCHEMA_VERSION}
    variants = []
    for cls in EVENT_TYPES:
        name = cls.__name__
        defs[name] = _object_schema(cls, defs, {**header, "type": {"const": cls.type}})
        variants.append({"$ref": f"#/$defs/{name}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://qlung-edge.invalid/schema/events.v{SCHEMA_VERSION}.json",
        "title": f"qlung-edge daemon events, schema {SCHEMA_VERSION}",
        "description": "One JSON object per event, the same for every sink (JSON lines, MQTT).",
        "oneOf": variants,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    return json.dumps(event_schema(), indent=1, sort_keys=False) + "\n"


def shipped_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(shipped_schema())


def validate(event: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` if `event` does not fit the shipped schema (needs `jsonschema`)."""
    _validator().validate(event)

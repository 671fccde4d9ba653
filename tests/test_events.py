"""The event types, their generated JSON Schema, and the strict dataclass loader they and every config share."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from qlung_edge.config import check_value, field_types, from_dict
from qlung_edge.errors import ConfigError
from qlung_edge.events import (
    ADVICE,
    EVENT_TYPES,
    SCHEMA_FILE,
    SCHEMA_VERSION,
    ErrorEvent,
    ExamEvent,
    ExamIdentity,
    ExamState,
    GateReason,
    Header,
    Prediction,
    QualityFields,
    ReloadEvent,
    SourceEvent,
    StartEvent,
    StopEvent,
    VerdictEvent,
    VerdictEvidence,
    WindowEvent,
    WindowSpan,
    WindowStatus,
    event_dict,
    event_schema,
    schema_text,
    validate,
)


def test_the_shipped_schema_is_the_generated_one() -> None:
    """The schema in the package is regenerated from the dataclasses; a changed event must bump and reship it."""
    assert json.loads(SCHEMA_FILE.read_text()) == event_schema(), "run: qlung-edge schema > " + str(SCHEMA_FILE)
    assert SCHEMA_FILE.read_text() == schema_text()
    jsonschema.Draft202012Validator.check_schema(event_schema())


def _header(kind: str, seq: int = 0) -> Header:
    return Header(SCHEMA_VERSION, kind, "bed12", "0123abcd", seq, "2026-11-24T10:00:00.000+00:00")


def _examples() -> list[Any]:
    span = WindowSpan(3, 3.0, 11.0, "2026-11-24T10:00:03.000+00:00", "2026-11-24T10:00:11.000+00:00")
    quality = QualityFields(0.9, -30.0, 0.3, 0.0, 0.0, 0.0)
    probabilities = {"normal": 0.7, "crackle": 0.1, "wheeze": 0.1, "both": 0.1}
    return [
        StartEvent("b", "m", "abc", "onnx-fp32", {"threads": 1}, "file:x.wav", 1.0, 8.0, 0.4),
        WindowEvent(
            "abc",
            span,
            WindowStatus.CLASSIFIED,
            quality,
            5.0,
            prediction=Prediction("normal", probabilities),
            exam=ExamState("normal", probabilities, 1, 1),
        ),
        WindowEvent("abc", span, WindowStatus.GATED, quality, 1.0, reasons=(GateReason.TOO_QUIET,), advice="x"),
        WindowEvent("abc", span, WindowStatus.DROPPED, quality, 1.0),
        ExamEvent("a1-1", 0.0, "2026-11-24T10:00:00.000+00:00", "breath sounds", ExamIdentity(patient="P1")),
        VerdictEvent(
            "a1-1",
            "abc",
            ExamIdentity(),
            0.0,
            20.0,
            "2026-11-24T10:00:00.000+00:00",
            "2026-11-24T10:00:20.000+00:00",
            "the source ended",
            "Adventitious",
            "DAS",
            "mean crackle evidence 0.61 >= 0.40",
            VerdictEvidence(
                10, 2, {"too_quiet": 2}, 0.61, 0.1, {"normal": 0.4, "crackle": 0.6, "wheeze": 0, "both": 0}
            ),
            {"statistic": "mean"},
        ),
        SourceEvent("downmixed"),
        ReloadEvent(ok=False, bundle="b", message="altered"),
        ErrorEvent("source", "unplugged"),
        StopEvent({"windows": 3}, {"frames_read": 10}, []),
    ]


def test_every_event_type_validates_and_leaves_out_what_it_does_not_have() -> None:
    examples = _examples()
    assert {type(e) for e in examples} == set(EVENT_TYPES)
    for seq, event in enumerate(examples):
        body = event_dict(_header(event.type, seq), event)
        validate(body)
        assert list(body)[:6] == ["schema", "type", "stream", "run_id", "seq", "time"]
    classified = event_dict(_header("window"), examples[1])
    assert "reasons" not in classified and "advice" not in classified and classified["status"] == "classified"
    gated = event_dict(_header("window"), examples[2])
    assert gated["reasons"] == ["too_quiet"] and "prediction" not in gated


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda e: e.update(status="maybe"), "an unknown status"),
        (lambda e: e.pop("run_id"), "no run id"),
        (lambda e: e.update(colour="red"), "a key the schema does not know"),
        (lambda e: e.update(schema=1), "an older schema version"),
        (lambda e: e["quality"].pop("aqs"), "a quality figure missing"),
        (lambda e: e.update(reasons=["bored"]), "a gate reason that does not exist"),
        (lambda e: e["window"].update(index="3"), "an index that is not a number"),
    ],
)
def test_the_schema_refuses_malformed_events(change: Any, why: str) -> None:
    body = event_dict(_header("window"), _examples()[2])
    change(body)
    with pytest.raises(jsonschema.ValidationError):
        validate(body)


def test_every_gate_reason_has_advice() -> None:
    assert set(ADVICE) == {r.value for r in GateReason}
    assert all(text and text[0].islower() for text in ADVICE.values())


# --------------------------------------------------------------------------- the strict loader


@dataclasses.dataclass(frozen=True)
class Inner:
    level: float = 1.0
    name: str | None = None


@dataclasses.dataclass
class Outer:
    count: int = 1
    path: Path | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    pairs: tuple[tuple[int, int], ...] = ()
    table: dict[str, int | None] = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)
    status: WindowStatus = WindowStatus.GATED
    flag: bool = False

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


def test_annotations_resolve_without_evaluating_them() -> None:
    """`int | None` and `list[str]` come from the source text, so Python 3.8 reads them too."""
    import typing

    types = field_types(Outer)
    assert types["path"] == typing.Optional[Path]
    assert typing.get_origin(types["table"]) is dict and typing.get_args(types["table"])[1] == typing.Optional[int]
    assert typing.get_args(types["pairs"]) == (typing.Tuple[int, int], ...)


def test_from_dict_builds_nested_dataclasses_and_converts_what_is_safe() -> None:
    out = from_dict(
        Outer,
        {
            "count": 2,
            "path": "/tmp/x",
            "names": ["a"],
            "pairs": [[1, 2]],
            "table": {"a": None, "b": 3},
            "inner": {"level": 2},
            "status": "dropped",
            "flag": True,
        },
    )
    assert out == Outer(
        2, Path("/tmp/x"), ["a"], ((1, 2),), {"a": None, "b": 3}, Inner(2.0), WindowStatus.DROPPED, True
    )
    assert isinstance(out.inner.level, float)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": "2"}, r"count: expected an integer, got str '2'"),
        ({"count": True}, r"count: expected an integer, got bool True"),
        ({"flag": "no"}, r"flag: expected true or false, got str 'no'"),
        ({"flag": 1}, r"flag: expected true or false"),
        ({"inner": {"level": "loud"}}, r"inner\.level: expected a number"),
        ({"inner": {"volume": 1}}, r"unknown key inner\.volume \(known: level, name\)"),
        ({"names": "a"}, r"names: expected a list"),
        ({"names": [1]}, r"names\[0\]: expected a string"),
        ({"table": {"a": "x"}}, r"table\.a: expected an integer"),
        ({"pairs": [[1, 2, 3]]}, r"pairs\[0\]: expected 2 items"),
        ({"status": "maybe"}, r"status: 'maybe' is not one of classified, gated, dropped"),
        ({"colour": 1}, r"unknown key colour"),
        ({"count": -1}, r"count must not be negative"),
        ([1, 2], r"expected a mapping"),
    ],
)
def test_from_dict_names_the_key_of_every_mistake(values: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, values)


def test_a_float_is_never_an_integer_and_none_only_where_allowed() -> None:
    import typing

    with pytest.raises(ConfigError, match=r"n: expected an integer, got float 1\.5"):
        check_value(1.5, int, "n")
    with pytest.raises(ConfigError, match=r"x: expected a number, got NoneType"):
        check_value(None, float, "x")
    assert check_value(None, typing.Optional[str], "x") is None

"""What `qlung-edge demo` prints for each daemon event: the README's example events, one of each type."""

from __future__ import annotations

import json
from pathlib import Path

from qlung_edge.demo import event_line

REPO = Path(__file__).resolve().parents[1]


def test_each_event_prints_what_a_person_watching_the_demo_needs() -> None:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith('{"schema":')]
    events = {}
    for line in lines:
        event = json.loads(line)
        events.setdefault((event["type"], event.get("status")), event)
    verdict = events[("verdict", None)]
    printed = event_line(verdict)
    # The examination's answer, both tasks, how it ended and why: what the demo's stream is for.
    for part in (verdict["task_2_1"], verdict["task_2_2"], verdict["ended_by"], verdict["reason"]):
        assert part in printed
    classified = events[("window", "classified")]
    printed = event_line(classified)
    assert classified["prediction"]["label"] in printed and f"{classified['quality']['aqs']:.2f}" in printed
    gated = events[("window", "gated")]
    assert all(reason in event_line(gated) for reason in gated["reasons"])
    exam = events[("exam", None)]
    assert exam["exam_id"] in event_line(exam) and exam["reason"] in event_line(exam)
    with_identity = {**exam, "identity": {"patient": "P-17", "encounter": None, "site": "left base"}}
    assert event_line(with_identity).endswith("; patient P-17, site left base)")
    start = next(e for (kind, _), e in events.items() if kind == "start")
    assert event_line(start).startswith("   [start]")

"""The model card states what the gate costs: the share of good records' windows it refuses, with its spread."""

from __future__ import annotations

import copy
from typing import Any

from export.model_card import evaluation_record, render_card
from qlung_edge.bundle import load_bundle
from qlung_edge.classifier import SHIPPED_BUNDLE


def _report(other: dict[str, Any] | None, poor: dict[str, Any] | None) -> dict[str, Any]:
    scores = {"specificity": 0.9, "sensitivity": 0.4, "score": 0.65}
    report: dict[str, Any] = {
        "split": "test", "recordings": 3, "window_seconds": 4.0, "hop_seconds": 1.0,
        "windows": {"windows": 30, "classified": 27, "gated": 3, "dropped": 0}, "coverage": 0.9,
        "accepted": scores, "ungated": scores,
    }  # fmt: skip
    if other is not None:
        report["other_records"] = other
    if poor is not None:
        report["poor_quality_records"] = poor
    return report


def test_the_card_gives_the_good_records_windows_the_gate_refused_with_their_interval() -> None:
    manifest = copy.deepcopy(load_bundle(SHIPPED_BUNDLE).manifest)
    other = {"windows": 20, "gated": 1, "gated_fraction": 0.05, "gated_fraction_patients_95": [0.012, 0.0875]}
    manifest["evaluation"] = evaluation_record(_report(other, {"windows": 10, "gated": 2, "gated_fraction": 0.2}), "c")
    card = render_card(manifest)
    assert (
        "The gate refused 5.0 % of the 20 windows of records not labelled Poor Quality (95 % interval over resamples"
        " of the patients 1.2-8.8 %) and 20.0 % of the 10 windows of Poor Quality records." in card
    )
    manifest["evaluation"] = evaluation_record(_report(None, None), "c")  # an older report: no such line
    assert "The gate refused" not in render_card(manifest)

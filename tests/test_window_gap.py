"""scripts/window_gap.py's pure parts, and the per-class recall it shares with the other report scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_class_recalls_are_each_present_class_s_share_called_itself(scripts_importable: Path) -> None:
    from run_reports import class_recalls

    truth = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    recalls = class_recalls(truth, predicted)
    assert recalls == pytest.approx({"normal": 0.5, "crackle": 1.0, "wheeze": 2 / 3})
    assert "both" not in recalls  # absent from the truth: no recall, not a zero


def test_abnormal_coverage_counts_overlapping_events_once_and_ignores_normal_ones(scripts_importable: Path) -> None:
    from window_gap import abnormal_coverage

    from training.records import Cycle

    def event(start: float, end: float, label: int) -> Cycle:
        return Cycle("r", "p", "d", start, end, label, "test", "r")

    # Window 10-14 s: a wheeze 9-10.5 s (0.5 s inside), a crackle 11-12 s and a wheeze 11.5-12.5 s (1.5 s together),
    # a normal cycle 12.5-14 s (not counted), a crackle 13.5-20 s (0.5 s inside): 2.5 s of 4.
    events = [event(9, 10.5, 2), event(11, 12, 1), event(11.5, 12.5, 2), event(12.5, 14, 0), event(13.5, 20, 1)]
    assert abnormal_coverage(events, 10.0, 14.0) == pytest.approx(2.5 / 4)
    assert abnormal_coverage(events, 0.0, 4.0) == 0.0
    assert abnormal_coverage([event(0, 9, 3)], 1.0, 5.0) == 1.0


def test_recall_by_coverage_bins_only_the_abnormal_windows(scripts_importable: Path) -> None:
    from window_gap import COVERAGE_BINS, recall_by_coverage

    truth = np.array([0, 1, 1, 2, 2, 3])
    predicted = np.array([1, 1, 0, 2, 2, 0])
    coverage = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 1.0])
    bins = recall_by_coverage(truth, predicted, coverage)
    assert list(bins) == [f"{b:g}" for b in COVERAGE_BINS] == ["0.125", "0.25", "0.5", "1"]
    assert [b["windows"] for b in bins.values()] == [1, 1, 2, 1]  # the normal window is in none
    assert [b["own_class"] for b in bins.values()] == [1.0, 0.0, 1.0, 0.0]
    assert recall_by_coverage(truth[:1], predicted[:1], coverage[:1])["0.125"]["own_class"] is None


def test_composed_calls_apply_the_window_rule_to_the_cycle_level_calls(scripts_importable: Path) -> None:
    from window_gap import composed_calls

    from training.records import Cycle, Recording

    def cycle(recording: str, start: float, end: float, label: int) -> Cycle:
        return Cycle(recording, "p", "d", start, end, label, "test", recording)

    # Recording a: normal 0-2 s, crackle 2-3 s, wheeze 3-3.5 s, normal 3.5-6 s; recording b: one normal 0-4 s and a
    # rhonchus 5-6 s the classes leave out. Truth labels of the cycles do not matter: only their calls do.
    cycles = [cycle("a", 0, 2, 0), cycle("a", 2, 3, 1), cycle("a", 3, 3.5, 2), cycle("a", 3.5, 6, 0),
              cycle("b", 0, 4, 0)]  # fmt: skip
    # The wheeze called normal, the last normal cycle of a called wheeze, b's called crackle.
    calls = np.array([0, 1, 0, 2, 1])
    recordings = [Recording("a", "sprsound", "p", "d", "pl", Path("a.json")),
                  Recording("b", "sprsound", "p", "d", "pl", Path("b.json"), unlabelled=[(5.0, 6.0)])]  # fmt: skip
    windows = [cycle("a", 0, 1.9, 0), cycle("a", 1, 3.2, 3), cycle("a", 3.2, 6, 2), cycle("b", 0, 2, 0),
               cycle("b", 3.5, 5.5, 0), cycle("c", 0, 2, 0)]  # fmt: skip
    composed = composed_calls(windows, cycles, calls, recordings)
    # a 0-1.9: only the first cycle, called normal; a 1-3.2: crackle called crackle, wheeze 0.2 s in called normal,
    # so crackle; a 3.2-6: the wheeze called normal and the next cycle called wheeze, so wheeze; b 0-2: its cycle's
    # call; b 3.5-5.5: over the left-out rhonchus too, no label; c: no cycles at all.
    assert composed.tolist() == [0, 1, 2, 1, -1, -1]
    # The same cycles called as labelled: each window gets the label the window rule gives it from the annotations.
    truth = composed_calls(windows[:3], cycles[:4], np.array([c.label for c in cycles[:4]]), recordings)
    assert truth.tolist() == [0, 3, 2]
    with pytest.raises(ValueError):
        composed_calls(windows, cycles, calls[:-1], recordings)

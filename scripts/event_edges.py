"""How much of the cycle level comes from the annotators' edges?

A cycle-level input is an annotated event cut where the annotator drew its edges and repeated to fill the input: the
network hears the stretch the annotator heard the sound in, and its length as the period of the repetition. On
SPRSound the annotator draws a crackle or a wheeze over the stretch where it is heard and a normal event over a whole
breath phase: abnormal events are shorter. A device has no annotator. This measures, per run, with its best.pt and
no gate:

- the ICBHI Score of a rule that reads nothing but each event's annotated length (a class-balanced logistic
  regression on log length, fitted on the training patients' events);
- the cycle level with every event cut at a fixed length centred on the annotated event (`LENGTHS`), so the cut says
  where the event is but not how long: the cycle level a device would reach that knew where events are and not
  their extent;
- the window level composed from those calls by the window rule (as `window_gap.composed_calls`);
- the cycle level with every event cut to the window's own length, centred on it (a window placed on the event,
  repeated only where the recording is shorter), against the run's own window calls: the gap left when the cycle
  level hears as much breathing about an event as a window does.

Writes RUN/event_edges.json, prints a line per group of patients.
Usage: python scripts/event_edges.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from run_reports import report_runs, scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from training.records import Cycle

LENGTHS = (0.5, 1.0, 2.0)
"""Fixed cut lengths (s): SPRSound's median wheeze, crackle and normal events last about 0.5, 0.9 and 1.3 s."""


def centred_cuts(cycles: Sequence[Cycle], durations: dict[str, float], seconds: float) -> list[Cycle]:
    """Each event as a cut of `seconds` centred on it, moved to lie inside its recording (the whole recording
    when shorter): where the event is, without how long it is."""
    out = []
    for c in cycles:
        duration = durations[c.recording]
        length = min(seconds, duration)
        start = min(max((c.start + c.end - length) / 2, 0.0), duration - length)
        out.append(replace(c, start=round(start, 4), end=round(start + length, 4)))
    return out


def length_rule_calls(train: Sequence[Cycle], cycles: Sequence[Cycle]) -> np.ndarray:
    """Classes called from nothing but each event's annotated length: a class-balanced multinomial logistic
    regression on log length, fitted on `train`."""
    from sklearn.linear_model import LogisticRegression

    def features(items: Sequence[Cycle]) -> np.ndarray:
        return np.log(np.array([[max(c.duration, 1e-3)] for c in items]))

    rule = LogisticRegression(class_weight="balanced", max_iter=1000)
    rule.fit(features(train), np.array([c.label for c in train]))
    return rule.predict(features(cycles))


def measure(run: Path) -> dict[str, Any]:
    from window_gap import composed_calls

    from training.engine import examples_of, geometry_of, load_trained
    from training.verdicts import preparer
    from training.window_decision import window_score

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    probabilities = scorer(model, preparer(config, splits, progress=True))
    window_geometry, cycle_geometry = geometry_of(config, "window"), geometry_of(config, "cycle")
    train_cycles = examples_of(splits.recordings["train"], cycle_geometry)
    result: dict[str, Any] = {"run": str(run), "lengths": list(LENGTHS), "window_seconds": window_geometry.seconds}
    for split in ("validation", "test"):
        recordings = splits.recordings[split]
        durations = {r.id: r.duration or 0.0 for r in recordings}
        windows = examples_of(recordings, window_geometry)
        cycles = examples_of(recordings, cycle_geometry)
        truth = np.array([c.label for c in cycles])
        window_truth = np.array([w.label for w in windows])

        def calls(examples: list[Any], name: str) -> np.ndarray:
            return probabilities(examples, cycle_geometry, name).argmax(axis=1)

        annotated = calls(cycles, f"{split} cycles")
        own = probabilities(windows, window_geometry, f"{split} windows").argmax(axis=1)
        by_length = {}
        for seconds in sorted({*LENGTHS, window_geometry.seconds}):
            called = calls(centred_cuts(cycles, durations, seconds), f"{split} {seconds:g} s cuts")
            composed = composed_calls(windows, cycles, called, recordings)
            by_length[f"{seconds:g}"] = {
                "cycle_score": window_score(truth, called),
                "composed_window_score": window_score(window_truth, composed),
            }
        length_only = length_rule_calls(train_cycles, cycles)
        window_length = by_length[f"{window_geometry.seconds:g}"]["cycle_score"]
        result[split] = {
            "cycles": len(cycles), "windows": len(windows),
            "cycle_score": window_score(truth, annotated),
            "window_score": window_score(window_truth, own),
            "window_length_cut_score": window_length,
            "window_minus_window_length_cut": window_score(window_truth, own) - window_length,
            "composed_window_score": window_score(window_truth, composed_calls(windows, cycles, annotated, recordings)),
            "length_rule_score": window_score(truth, length_only),
            "length_rule_composed_window_score": window_score(window_truth, composed_calls(windows, cycles,
                                                                                          length_only, recordings)),
            "centred_cuts": by_length,
        }  # fmt: skip
    return result


def describe(result: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        r = result[split]
        cuts = ", ".join(f"{k} s {100 * v['cycle_score']:.2f} (windows {100 * v['composed_window_score']:.2f})"
                         for k, v in r["centred_cuts"].items())  # fmt: skip
        lines.append(
            f"{split}: cycle level {100 * r['cycle_score']:.2f} "
            f"(windows composed {100 * r['composed_window_score']:.2f}); "
            f"length alone {100 * r['length_rule_score']:.2f}; fixed centred cuts: {cuts}; window "
            f"{100 * r['window_score']:.2f}, minus the window-long cuts "
            f"{100 * r['window_minus_window_length_cut']:+.2f}"
        )
    return lines


if __name__ == "__main__":
    report_runs(__doc__, "event_edges.json", measure, describe)

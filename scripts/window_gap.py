"""How sure is the gap between the window level and the cycle level, over resamples of the patients?

Issue 16 asks the window-level Score to come within 2 points of the cycle-level Score of the same checkpoint. The
inter-patient test set's abnormal windows come from few patients (on SPRSound's 2022 test set, 13 patients hold
all the wheeze windows), so the gap measured there is one draw of patients. This scores every labelled window
and every annotated cycle of the validation and of the test patients offline with the run's best.pt (no gate:
the window figure is the run's offline window level) and gives the gap's central 95 % over resamples of the
patients (`training.metrics.patient_score_gaps`), and the gap without each of the patients holding the most
abnormal windows. The same for the training patients, without augmentation or mixing: whether the network fits
windows as well as cycles on the recordings it learnt from tells underfitting from a failure to carry to new
patients. And the abnormal windows' recall by how much of the window their annotated events fill, since a cycle
is an event filling all of its input. And the window level composed from the cycle-level calls of the events each
window overlaps (`composed_calls`): the part of the gap the window rule makes by itself. Where the run kept its
last epoch (last.pt), the three groups' window and cycle levels at that epoch too. Writes RUN/window_gap.json,
prints a line per group of patients.
Usage: python scripts/window_gap.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from run_reports import class_recalls, report_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from qlung_edge.windows import Span
    from training.records import Cycle, Recording

Part = tuple[np.ndarray, np.ndarray, list[str]]
"""Truth, predicted class and patient of each item (window or cycle)."""
LEFT_OUT = 5
"""Patients, by abnormal windows held, whose leaving out is reported one by one."""
SPLITS = ("train", "validation", "test")
"""The training patients too: a gap there is one the network leaves on what it learnt from."""
COVERAGE_BINS = (0.125, 0.25, 0.5, 1.0)
"""Upper ends of the shares of a window its crackles and wheezes fill, by which its recall is broken down."""


def _finite(value: float) -> float | None:
    """None for a figure the patients leave undefined (no normal or no abnormal item): JSON has no NaN."""
    return float(value) if np.isfinite(value) else None


def abnormal_coverage(events: Sequence[Span], start: float, end: float) -> float:
    """Share of [start, end) that the crackle and wheeze events fill (overlapping events counted once)."""
    spans = sorted(
        (max(e.start, start), min(e.end, end)) for e in events if e.label > 0 and e.end > start and e.start < end
    )
    covered, reach = 0.0, start
    for first, last in spans:
        covered += max(0.0, last - max(first, reach))
        reach = max(reach, last)
    return min(1.0, covered / (end - start))  # float rounding must not push a full window past the last bin


def recall_by_coverage(truth: np.ndarray, predicted: np.ndarray, coverage: np.ndarray) -> dict[str, dict[str, Any]]:
    """Abnormal windows' share called their own class, per bin of `coverage`, keyed by the bin's upper end
    (COVERAGE_BINS; None where the bin is empty)."""
    bins, low = {}, 0.0
    for high in COVERAGE_BINS:
        held = (truth > 0) & (coverage > low) & (coverage <= high)
        own = float(np.mean(predicted[held] == truth[held])) if held.any() else None
        bins[f"{high:g}"] = {"above": low, "windows": int(held.sum()), "own_class": own}
        low = high
    return bins


def composed_calls(
    windows: Sequence[Span], cycles: Sequence[Cycle], cycle_calls: np.ndarray, recordings: Sequence[Recording]
) -> np.ndarray:
    """Each window's class composed from the cycle-level calls of the annotated events it overlaps, by the rule
    that labels windows from those events (`window_label`): what the window level would be if the network heard
    every event in a window as it hears the event alone, repeated to fill the input. Its gap to the cycle level
    is the part of the window-cycle gap the window rule makes by itself (several events to get right at once, a
    crackle and a wheeze making 'both'), before anything the network hears in continuous breathing.
    -1 where no called event overlaps the window (cannot happen for a labelled window)."""
    from qlung_edge.windows import window_label

    called: dict[str, list[Cycle]] = {}
    for cycle, call in zip(cycles, cycle_calls, strict=True):
        called.setdefault(cycle.recording, []).append(replace(cycle, label=int(call)))
    unlabelled = {r.id: r.unlabelled for r in recordings}
    out = []
    for w in windows:
        label = window_label(called.get(w.recording, []), w.start, w.end, unlabelled=unlabelled.get(w.recording, ()))
        out.append(-1 if label is None else label)
    return np.array(out, dtype=int)


def measure(run: Path) -> dict[str, Any]:
    import torch

    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.dataset import ExampleDataset
    from training.engine import examples_of, geometry_of, load_trained, predict
    from training.metrics import patient_score_gaps
    from training.verdicts import preparer
    from training.window_decision import window_score

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    # The last epoch's weights (same recipe, same patients), where training kept them: does fitting longer close
    # the training patients' gap, and do the others follow?
    last = model_from_checkpoint(load_checkpoint(run / "last.pt"))[0] if (run / "last.pt").is_file() else None
    prepare = preparer(config, splits, progress=True)
    result: dict[str, Any] = {"run": str(run)}
    for split in SPLITS:
        items, at_last, examples_by_unit = {}, {}, {}
        for unit in ("window", "cycle"):
            geometry = geometry_of(config, unit)
            examples = examples_by_unit[unit] = examples_of(splits.recordings[split], geometry)
            data = ExampleDataset(prepare(examples, geometry, f"{split} {unit}s"))
            p = predict(model, data, torch.device("cpu"), 64)
            items[unit] = (np.array([e.label for e in examples]), p.argmax(axis=1), [e.patient for e in examples])
            if last is not None:
                at_last[unit] = window_score(
                    items[unit][0], predict(last, data, torch.device("cpu"), 64).argmax(axis=1)
                )
            if unit == "window":
                events = {r.id: r.cycles for r in splits.recordings[split]}
                coverage = np.array([abnormal_coverage(events[w.recording], w.start, w.end) for w in examples])
        windows, cycles = items["window"], items["cycle"]
        window_level, cycle_level = window_score(windows[0], windows[1]), window_score(cycles[0], cycles[1])
        composed = composed_calls(examples_by_unit["window"], examples_by_unit["cycle"], cycles[1],
                                  splits.recordings[split])  # fmt: skip
        composed_level = window_score(windows[0], composed)
        gaps = patient_score_gaps(windows, cycles)
        finite = gaps[np.isfinite(gaps)]  # none where the patients hold no normal or no abnormal item
        low, high = (float(v) for v in np.quantile(finite, [0.025, 0.975])) if finite.size else (None, None)
        held = Counter(p for t, p in zip(windows[0], windows[2]) if t > 0)

        def without(patient: str, windows: Part = windows, cycles: Part = cycles) -> float:
            def keep(part: Part) -> tuple[np.ndarray, np.ndarray]:
                mask = np.array([p != patient for p in part[2]])
                return part[0][mask], part[1][mask]

            return window_score(*keep(windows)) - window_score(*keep(cycles))

        result[split] = {
            "windows": len(windows[0]),
            "cycles": len(cycles[0]),
            "patients": len(set(windows[2]) | set(cycles[2])),
            "window_score": _finite(window_level),
            "cycle_score": _finite(cycle_level),
            "gap": _finite(window_level - cycle_level),
            "composed_score": _finite(composed_level),
            "composed_gap": _finite(composed_level - cycle_level),
            "window_recall": class_recalls(windows[0], windows[1]),
            "cycle_recall": class_recalls(cycles[0], cycles[1]),
            "window_recall_by_coverage": recall_by_coverage(windows[0], windows[1], coverage),
            "low": low,
            "high": high,
            "resamples": int(finite.size),
            "without": [
                {"patient": p, "abnormal_windows": n, "gap": _finite(without(p))} for p, n in held.most_common(LEFT_OUT)
            ],
        }
        if at_last:
            result[split]["last_epoch"] = {
                "window_score": _finite(at_last["window"]),
                "cycle_score": _finite(at_last["cycle"]),
                "gap": _finite(at_last["window"] - at_last["cycle"]),
            }
    return result


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in (s for s in SPLITS if s in r):  # reports written before the training patients were added
        g = r[split]
        left = ", ".join(f"{w['patient']} ({w['abnormal_windows']}) {_points(w['gap'])}" for w in g["without"])
        lines.append(f"{split}: window {_points(g['window_score'])} - cycle {_points(g['cycle_score'])} = "
                     f"{_points(g['gap'])} (95 % over patient resamples {_points(g['low'])} to "
                     f"{_points(g['high'])}); without one patient: {left}")  # fmt: skip
        if "composed_score" in g:  # reports written before the composed calls were added have none
            lines.append(f"  windows composed from their events' cycle-level calls: {_points(g['composed_score'])}"
                         f" - cycle = {_points(g['composed_gap'])}")  # fmt: skip
        if "last_epoch" in g:
            e = g["last_epoch"]
            lines.append(f"  at the last epoch: window {_points(e['window_score'])} - cycle {_points(e['cycle_score'])}"
                         f" = {_points(e['gap'])}")  # fmt: skip
    return lines


def main() -> None:
    report_runs(__doc__, "window_gap.json", measure, _describe)


if __name__ == "__main__":
    main()

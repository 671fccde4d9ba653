"""How sure is the gap between the window level and the cycle level, over resamples of the patients?

Issue 16 asks the window-level Score to come within 2 points of the cycle-level Score of the same checkpoint. The
inter-patient test set's abnormal windows come from few patients (on SPRSound's 2022 test set, 13 patients hold
all the wheeze windows), so the gap measured there is one draw of patients. This scores every labelled window
and every annotated cycle of the validation and of the test patients offline with the run's best.pt (no gate:
the window figure is the run's offline window level) and gives the gap's central 95 % over resamples of the
patients (`training.metrics.patient_score_gaps`), and the gap without each of the patients holding the most
abnormal windows. Writes RUN/window_gap.json, prints a line per run.
Usage: python scripts/window_gap.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import report_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

Part = tuple[np.ndarray, np.ndarray, list[str]]
"""Truth, predicted class and patient of each item (window or cycle)."""
LEFT_OUT = 5
"""Patients, by abnormal windows held, whose leaving out is reported one by one."""


def _finite(value: float) -> float | None:
    """None for a figure the patients leave undefined (no normal or no abnormal item): JSON has no NaN."""
    return float(value) if np.isfinite(value) else None


def measure(run: Path) -> dict[str, Any]:
    import torch

    from training.dataset import ExampleDataset
    from training.engine import examples_of, geometry_of, load_trained, predict
    from training.metrics import patient_score_gaps
    from training.verdicts import preparer
    from training.window_decision import window_score

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    prepare = preparer(config, splits, progress=True)
    result: dict[str, Any] = {"run": str(run)}
    for split in ("validation", "test"):
        items = {}
        for unit in ("window", "cycle"):
            geometry = geometry_of(config, unit)
            examples = examples_of(splits.recordings[split], geometry)
            data = ExampleDataset(prepare(examples, geometry, f"{split} {unit}s"))
            p = predict(model, data, torch.device("cpu"), 64)
            items[unit] = (np.array([e.label for e in examples]), p.argmax(axis=1), [e.patient for e in examples])
        windows, cycles = items["window"], items["cycle"]
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
            "window_score": _finite(window_score(windows[0], windows[1])),
            "cycle_score": _finite(window_score(cycles[0], cycles[1])),
            "gap": _finite(window_score(windows[0], windows[1]) - window_score(cycles[0], cycles[1])),
            "low": low,
            "high": high,
            "resamples": int(finite.size),
            "without": [
                {"patient": p, "abnormal_windows": n, "gap": _finite(without(p))} for p, n in held.most_common(LEFT_OUT)
            ],
        }
    return result


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f}"


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        g = r[split]
        left = ", ".join(f"{w['patient']} ({w['abnormal_windows']}) {_points(w['gap'])}" for w in g["without"])
        lines.append(f"{split}: window {_points(g['window_score'])} - cycle {_points(g['cycle_score'])} = "
                     f"{_points(g['gap'])} (95 % over patient resamples {_points(g['low'])} to "
                     f"{_points(g['high'])}); without one patient: {left}")  # fmt: skip
    return lines


def main() -> None:
    report_runs(__doc__, "window_gap.json", measure, _describe)


if __name__ == "__main__":
    main()

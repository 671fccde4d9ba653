"""Would scanning each window with short crops, each heard as the cycle level hears an event, close the gap?

`scripts/event_edges.py` finds that the cycle level needs to know where an event is, not how long it is: each
annotated event cut to a fixed 0.5 s centred on it and repeated to fill the input scores as well as cut at its
annotated edges, while 2 s centred cuts score as the windows do. A device does not know where the events are, but
it can try everywhere: every labelled window of the validation and of the test patients is tiled with crops of
`CROP` seconds every `CROP_HOP` seconds (some crop's centre lies within a quarter crop of any point at least half a
crop inside the window), each scored as a cycle by the run's best.pt (cut, faded, repeated to fill the input), and
the window called by the window rule from its crops:
- argmax: each crop's own class, composed by the window rule (nothing fitted);
- thresholds: a crackle where some crop's P(crackle) + P(both) reaches t_crackle, a wheeze where some crop's
  P(wheeze) + P(both) reaches t_wheeze, the two thresholds chosen for the best window Score on the validation
  patients (`THRESHOLDS`), the test patients scored with the ones chosen there.
Next to them the run's own window calls and the cycle level. Writes RUN/crop_scan.json, prints a line per run.
Usage: python scripts/crop_scan.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import report_runs, scorer, window_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CROP = 0.5
"""Seconds per crop: about a wheeze (SPRSound's median annotated wheeze lasts 0.56 s)."""
CROP_HOP = 0.25
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.3, 1.0, 0.05))


def crop_spans(start: float, end: float, seconds: float = CROP, hop: float = CROP_HOP) -> list[tuple[float, float]]:
    """Crops of `seconds` every `hop` from `start`, the last one ending at `end` (a window shorter than a crop is
    one crop, itself)."""
    length = end - start
    if length <= seconds:
        return [(start, end)]
    count = int(np.floor((length - seconds) / hop + 1e-9)) + 1
    spans = [(round(start + k * hop, 4), round(start + k * hop + seconds, 4)) for k in range(count)]
    if spans[-1][1] < end - 1e-9:
        spans.append((round(end - seconds, 4), round(end, 4)))
    return spans


def scan_calls(crop_probabilities: list[np.ndarray], crackle: float | None, wheeze: float | None) -> np.ndarray:
    """Each window's class from its crops' [K, 4] probabilities (normal, crackle, wheeze, both): with thresholds, a
    sound where some crop's probability of it (its class or 'both') reaches the threshold; with None, each crop's
    argmax composed by the window rule."""
    from training.augment import combined_label

    out = []
    for p in crop_probabilities:
        if crackle is None or wheeze is None:
            label = 0
            for call in p.argmax(axis=1):
                label = combined_label(label, int(call))
        else:
            has_crackle = bool(np.max(p[:, 1] + p[:, 3]) >= crackle)
            has_wheeze = bool(np.max(p[:, 2] + p[:, 3]) >= wheeze)
            label = combined_label(1 if has_crackle else 0, 2 if has_wheeze else 0)
        out.append(label)
    return np.array(out, dtype=int)


def measure(run: Path) -> dict[str, Any]:
    from training.engine import examples_of, geometry_of, load_trained
    from training.verdicts import preparer
    from training.window_decision import window_score

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    if splits.selection != "validation":
        raise SystemExit(f"{run}: its recipe selects on the test set; the thresholds would be chosen on test patients")
    window_geometry, cycle_geometry = geometry_of(config, "window"), geometry_of(config, "cycle")
    probabilities = scorer(model, preparer(config, splits, progress=True))

    result: dict[str, Any] = {"run": str(run), "crop_seconds": CROP, "crop_hop_seconds": CROP_HOP}
    scanned: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    for split in ("validation", "test"):
        recordings = {r.id: r for r in splits.recordings[split]}
        windows = examples_of(list(recordings.values()), window_geometry)
        cycles = examples_of(list(recordings.values()), cycle_geometry)
        truth = np.array([w.label for w in windows])
        spans = [crop_spans(w.start, w.end) for w in windows]
        crops = [recordings[w.recording].cycle(*span, w.label, f"{w.source}+{span[0]:g}s")
                 for w, row in zip(windows, spans) for span in row]  # fmt: skip
        flat = probabilities(crops, cycle_geometry, f"{split} {CROP:g} s crops")
        bounds = np.cumsum([0] + [len(row) for row in spans])
        per_window = [flat[bounds[i] : bounds[i + 1]] for i in range(len(windows))]
        scanned[split] = (truth, per_window)
        own = probabilities(windows, window_geometry, f"{split} windows").argmax(axis=1)
        cycle_calls = probabilities(cycles, cycle_geometry, f"{split} cycles").argmax(axis=1)
        result[split] = {
            "windows": len(windows), "crops": len(crops),
            "cycle_score": window_score(np.array([c.label for c in cycles]), cycle_calls),
            "window": window_figures(truth, own),
            "argmax": window_figures(truth, scan_calls(per_window, None, None)),
        }  # fmt: skip
    truth, per_window = scanned["validation"]
    chosen = max(
        ((c, w) for c in THRESHOLDS for w in THRESHOLDS),
        key=lambda t: window_score(truth, scan_calls(per_window, *t)),
    )
    result["thresholds"] = {"crackle": chosen[0], "wheeze": chosen[1]}
    for split in ("validation", "test"):
        truth, per_window = scanned[split]
        result[split]["thresholds"] = window_figures(truth, scan_calls(per_window, *chosen))
        result[split]["thresholds_gap"] = result[split]["thresholds"]["score"] - result[split]["cycle_score"]
        result[split]["window_gap"] = result[split]["window"]["score"] - result[split]["cycle_score"]
    return result


def describe(result: dict[str, Any]) -> list[str]:
    lines = [f"thresholds chosen on the validation patients: {result['thresholds']}"]
    for split in ("validation", "test"):
        r = result[split]
        lines.append(
            f"{split}: cycle {100 * r['cycle_score']:.2f}, window {100 * r['window']['score']:.2f}, crops by argmax "
            f"{100 * r['argmax']['score']:.2f}, crops by thresholds {100 * r['thresholds']['score']:.2f} "
            f"(gap {100 * r['thresholds_gap']:+.2f}, window gap {100 * r['window_gap']:+.2f})"
        )
    return lines


if __name__ == "__main__":
    report_runs(__doc__, "crop_scan.json", measure, describe)

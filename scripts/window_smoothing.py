"""Does pooling a window with its neighbours raise the window-level Score, on validation and test patients alike?

At the daemon's 1 s hop a 4 s window shares 3 s with each neighbour, so a crackle or wheeze that one window
scores just below "normal" is often seen by the next. `training.window_decision.smooth` averages the class
probabilities of neighbouring windows of one recording: causally (this window and the ones before it, no added
latency) or centred (one window each side, one hop of latency). For each trained run (a folder with best.pt,
or an archived seed with only eval-stream/windows.csv[.gz]), the Score of the plain argmax and of each pooling
is measured on every window of the validation patients (the checkpoint run again) and on the accepted windows
of the inter-patient test set (windows.csv re-decided; gated neighbours are pooled too, as on validation where
nothing is gated). Nothing is fitted: the variants are fixed in advance, so the test figures are not tuned.

Writes RUN/window_smoothing.json and prints a line per run.
Usage: python scripts/window_smoothing.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import report_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"plain": (0, 0), "causal, 2 windows": (1, 0), "causal, 3 windows": (2, 0), "centred, 3 windows": (1, 1)}
"""Name: (windows before, windows after) pooled with each window."""


def validation_windows(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, labels (-1: no event overlapped), recordings and patients of every window of the
    validation patients, in stream order (scripts/window_decision_transfer.py reads them too)."""
    import torch

    from training.dataset import ExampleDataset, recording_windows
    from training.engine import geometry_of, load_trained, predict
    from training.verdicts import preparer

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    geometry = geometry_of(config, "window")
    recordings = [r for r in splits.recordings["validation"] if r.audio_path is not None]
    windows = [w for r in recordings for w in recording_windows(r, geometry)]
    data = preparer(config, splits, progress=False)(windows, geometry, "validation windows")
    probabilities = predict(model, ExampleDataset(data), torch.device("cpu"), 32)
    return (probabilities, np.array([w.label for w in windows]), np.array([w.recording for w in windows]),
            np.array([w.patient for w in windows]))  # fmt: skip


def stream_windows(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, labels (-1: none), recordings and accepted flags of every eval-stream window, in order."""
    from results import windows_table

    from qlung_edge import CLASS_NAMES

    table = windows_table(run / "eval-stream")
    if table is None:
        raise SystemExit(f"{run / 'eval-stream'}: no windows.csv (run qlung-edge eval-stream first)")
    table = sorted(table, key=lambda r: (r["recording"], float(r["start"])))
    probabilities = np.array([[float(r[f"p_{name}"]) for name in CLASS_NAMES] for r in table])
    labels = np.array([int(r["truth"]) if r["truth"] else -1 for r in table])
    accepted = np.array([r["status"] == "classified" for r in table])
    return probabilities, labels, np.array([r["recording"] for r in table]), accepted


def _scores(probabilities: np.ndarray, labels: np.ndarray, recordings: np.ndarray, keep: np.ndarray) -> dict:
    from training.window_decision import smooth, window_score

    return {
        name: window_score(labels[keep], smooth(probabilities, recordings, *span)[keep].argmax(axis=1))
        for name, span in VARIANTS.items()
    }


def measure(run: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"run": str(run), "variants": {k: list(v) for k, v in VARIANTS.items()}}
    if (run / "best.pt").is_file():
        p, labels, recordings, _ = validation_windows(run)
        result["validation"] = _scores(p, labels, recordings, labels >= 0)
    p, labels, recordings, accepted = stream_windows(run)
    result["test"] = _scores(p, labels, recordings, (labels >= 0) & accepted)
    return result


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        if split in r:
            plain = r[split]["plain"]
            gains = ", ".join(f"{k} {100 * (v - plain):+.2f}" for k, v in r[split].items() if k != "plain")
            lines.append(f"{split} plain {100 * plain:.2f}; {gains}")
    return lines


def main() -> None:
    report_runs(__doc__, "window_smoothing.json", measure, _describe)


if __name__ == "__main__":
    main()

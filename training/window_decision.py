"""Per-class offsets on a window's log-probabilities, fitted to maximise the window-level ICBHI Score.

The model's argmax is tuned to its training mix; a window that holds a short crackle among normal breaths may
score just below "normal". Adding an offset per class to log p before the argmax trades specificity for
sensitivity, the way a decision threshold does for two classes. Whether offsets fitted on validation patients
carry to other patients is what `scripts/window_decision_transfer.py` measures; the daemon does not apply them.
`smooth` pools each window with its neighbours of the same recording, which see 3 of its 4 s at a 1 s hop
(`scripts/window_smoothing.py` measures it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

OFFSET_GRID = np.round(np.arange(-3.0, 4.01, 0.25), 2)


@dataclass(frozen=True)
class Offsets:
    """Offsets added to log p of each class (normal's is 0) and the Score they reach where they were fitted."""

    offsets: tuple[float, ...]
    score: float


def decide(probabilities: np.ndarray, offsets: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Each window's class under the offsets (all zero: the plain argmax)."""
    return np.argmax(np.log(np.clip(probabilities, 1e-7, 1.0)) + np.asarray(offsets), axis=1)


def window_score(truth: np.ndarray, predicted: np.ndarray, balanced: bool = False) -> float:
    """ICBHI Score (SP + SE) / 2 with class 0 normal; with `balanced`, SE is the mean recall of the abnormal
    classes present, so a class common in one set of patients does not set the offsets for another."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    normal = truth == 0
    if not normal.any() or normal.all():
        return float("nan")
    specificity = float(np.mean(predicted[normal] == 0))
    if balanced:
        sensitivity = float(np.mean([np.mean(predicted[truth == k] == k) for k in np.unique(truth[~normal])]))
    else:
        sensitivity = float(np.mean(predicted[~normal] == truth[~normal]))
    return (specificity + sensitivity) / 2


def fit_offsets(
    probabilities: np.ndarray, truth: np.ndarray, balanced: bool = False, grid: np.ndarray = OFFSET_GRID
) -> Offsets:
    """The grid point that scores best on these windows; ties go to the smallest total offset (nearest argmax).
    Windows that cannot be scored (no normal or no abnormal one) keep the plain argmax, with a NaN score."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    classes = probabilities.shape[1]
    logs = np.log(np.clip(probabilities, 1e-7, 1.0))
    best: tuple[float, float] | None = None
    chosen: tuple[float, ...] = (0.0,) * classes
    for rest in itertools.product(grid, repeat=classes - 1):
        offsets = (0.0, *map(float, rest))
        score = window_score(truth, np.argmax(logs + np.array(offsets), axis=1), balanced)
        if not np.isfinite(score):
            return Offsets((0.0,) * classes, float("nan"))
        key = (round(score, 9), -float(np.abs(offsets).sum()))
        if best is None or key > best:
            best, chosen = key, offsets
    return Offsets(chosen, float(best[0]) if best else float("nan"))


def smooth(probabilities: np.ndarray, recordings: np.ndarray, before: int, after: int = 0) -> np.ndarray:
    """Each window's probabilities averaged with the `before` windows preceding it and the `after` following
    it in the same recording (rows in stream order; fewer at a recording's edges). `after=0` is causal: it
    costs the daemon no latency, only the evidence of windows already seen."""
    probabilities, recordings = np.asarray(probabilities, np.float64), np.asarray(recordings)
    out = np.empty_like(probabilities)
    edges = np.flatnonzero(recordings[1:] != recordings[:-1]) + 1
    for begin, end in zip(np.r_[0, edges], np.r_[edges, len(recordings)]):
        block = probabilities[begin:end]
        cumulative = np.vstack([np.zeros((1, block.shape[1])), np.cumsum(block, axis=0)])
        rows = np.arange(len(block))
        low, high = np.maximum(rows - before, 0), np.minimum(rows + after, len(block) - 1) + 1
        out[begin:end] = (cumulative[high] - cumulative[low]) / (high - low)[:, None]
    return out

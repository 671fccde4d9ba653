"""Per-class offsets on a window's log-probabilities, fitted to maximise the window-level ICBHI Score.

The model's argmax is tuned to its training mix; a window that holds a short crackle among normal breaths may
score just below "normal". Adding an offset per class to log p before the argmax trades specificity for
sensitivity, the way a decision threshold does for two classes. Whether offsets fitted on validation patients
carry to other patients is what `scripts/window_decision_transfer.py` measures; the daemon does not apply them.
`smooth` pools each window with its neighbours of the same recording, which see 3 of its 4 s at a 1 s hop
(`scripts/window_smoothing.py` measures it). Two rules fixed in advance rather than fitted, measured by
`scripts/window_rules.py`: `prior_offsets` (logit adjustment by the training class prior, which targets the
mean per-class recall whatever the mix of classes) and `with_segments` (short stretches of the window scored alone,
repeat-padded as annotated cycles are, since the offline cycle level owes its sensitivity to events that fill the
input).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from training.metrics import balanced_score, confusion_matrix

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
    if balanced:
        return balanced_score(confusion_matrix(truth, predicted, max(4, int(max(truth.max(), predicted.max())) + 1)))
    specificity = float(np.mean(predicted[normal] == 0))
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


def prior_offsets(prior: np.ndarray | tuple[float, ...], strength: float = 1.0) -> np.ndarray:
    """Offsets that subtract `strength` x log prior from each class's log p (logit adjustment; normal's offset
    kept at 0, which leaves the argmax unchanged): at strength 1 the argmax of a calibrated model then maximises
    the mean recall over the classes, normal included, instead of accuracy under the training mix. `prior`:
    shares or counts, each above 0."""
    prior = np.asarray(prior, np.float64)
    if not np.all(prior > 0):
        raise ValueError(f"logit adjustment needs every class in the prior, got {prior.tolist()}")
    logs = np.log(prior / prior.sum())
    return -strength * (logs - logs[0])


def segment_starts(window_seconds: float, segment_seconds: float) -> np.ndarray:
    """Starts (seconds into the window) of segments `segment_seconds` long, half a segment apart, the last one
    ending with the window."""
    if not 0 < segment_seconds <= window_seconds:
        raise ValueError(f"a segment must be longer than 0 and no longer than the window, got {segment_seconds!r}")
    count = int(np.floor((window_seconds - segment_seconds) / (segment_seconds / 2) + 1e-9)) + 1
    starts = np.arange(count) * segment_seconds / 2
    if starts[-1] + segment_seconds < window_seconds - 1e-9:
        starts = np.append(starts, window_seconds - segment_seconds)
    return starts


def with_segments(
    window: np.ndarray, segments: np.ndarray, rule: str, distinct: np.ndarray | None = None
) -> np.ndarray:
    """Window probabilities [N, C] combined with those of its segments [N, S, C] (class 0 normal): "mean" averages
    the window's and its segments'; "most abnormal" averages the window's with its least normal segment's.
    `distinct` [N, S] marks the segments to use (a window cut short by its recording's end has fewer distinct
    stretches than slots; the first segment of each window must be marked)."""
    use = np.ones(segments.shape[:2], bool) if distinct is None else np.asarray(distinct, bool)
    if rule == "mean":
        return (window + (segments * use[:, :, None]).sum(axis=1)) / (1 + use.sum(axis=1))[:, None]
    if rule == "most abnormal":
        worst = segments[np.arange(len(segments)), np.where(use, segments[:, :, 0], np.inf).argmin(axis=1)]
        return (window + worst) / 2
    raise ValueError(f"rule must be 'mean' or 'most abnormal', got {rule!r}")

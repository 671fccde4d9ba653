"""ICBHI metrics (specificity, sensitivity, Score), confusion matrices and AUROC.

ICBHI's challenge counts a normal cycle right only as normal (specificity) and an abnormal cycle right only
as its exact class (sensitivity); Score is their mean. The 2-class variant counts any abnormal prediction of an
abnormal cycle as right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qlung_edge import CLASS_NAMES


def confusion_matrix(
    labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray, classes: int = 4
) -> np.ndarray:
    """Counts [true class, predicted class]."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if labels.size and (
        labels.min() < 0 or labels.max() >= classes or predictions.min() < 0 or predictions.max() >= classes
    ):
        raise ValueError(f"class indices must be in [0, {classes})")
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


@dataclass(frozen=True)
class IcbhiScores:
    specificity: float
    sensitivity: float
    score: float
    sensitivity_2class: float
    score_2class: float
    recall: dict[str, float]
    cycles: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        return format_scores(self.as_dict())


def format_scores(scores: dict[str, object]) -> str:
    """'Sp .. Se .. Score ..' in percent from a dict with specificity, sensitivity and score."""
    return "  ".join(f"{name} {100 * float(scores[key]):.2f}" for name, key in _SCORE_NAMES)  # type: ignore[arg-type]


_SCORE_NAMES = (("Sp", "specificity"), ("Se", "sensitivity"), ("Score", "score"))


def icbhi_scores(matrix: np.ndarray, classes: Sequence[str] = CLASS_NAMES) -> IcbhiScores:
    """Scores from a confusion matrix whose class 0 is normal."""
    m = np.asarray(matrix, dtype=np.float64)
    sp = _ratio(m[0, 0], m[0].sum())
    se = _ratio(np.trace(m) - m[0, 0], m[1:].sum())
    se2 = _ratio(m[1:, 1:].sum(), m[1:].sum())
    recall = {name: _ratio(m[i, i], m[i].sum()) for i, name in enumerate(classes)}
    return IcbhiScores(sp, se, (sp + se) / 2, se2, (sp + se2) / 2, recall, int(m.sum()))


def balanced_score(matrix: np.ndarray) -> float:
    """(Sp + Se) / 2 with Se the mean recall of the abnormal classes present (class 0 normal): the ICBHI Score's
    sensitivity counts every abnormal example alike, so whichever class is common decides it."""
    m = np.asarray(matrix, dtype=np.float64)
    present = [k for k in range(1, len(m)) if m[k].sum()]
    if not m[0].sum() or not present:
        return float("nan")
    # A plain float, not a numpy scalar: the epoch log goes into last.pt, which loads weights-only.
    return float(m[0, 0] / m[0].sum() + np.mean([m[k, k] / m[k].sum() for k in present])) / 2


def auroc(scores: Sequence[float] | np.ndarray, positives: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives, got {n_pos} and {n_neg}")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def plot_confusion_matrix(
    matrix: np.ndarray, path: str | Path, classes: Sequence[str] = CLASS_NAMES, title: str = ""
) -> Path:
    """Write the matrix as a PNG: counts in each cell, shaded by the row's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                f"{m[i, j]}\n{100 * shares[i, j]:.0f}%",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.6 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- SPRSound, record level


@dataclass(frozen=True)
class RecordScores:
    """SPRSound's record-level figures for one task, in [0, 1]."""

    sensitivity: float
    specificity: float
    average: float
    harmonic: float
    score: float
    sensitivity_without_poor_quality: float
    """SE over the adventitious records only: some challenge entries scored it so (see `record_scores`)."""
    records: int
    confusion: list[list[int]]
    labels: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def record_scores(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> RecordScores:
    """SPRSound's record-level scoring (Tasks 2-1 and 2-2), as the challenge defines it.

    SE = records of every non-normal class predicted as exactly that class / all non-normal records, SP = normal
    records predicted normal / all normal records, AS = (SE + SP) / 2, HS = 2·SE·SP / (SE + SP),
    Score = (AS + HS) / 2 — Zhang et al., "SPRSound: Open-Source SJTU Paediatric Respiratory Sound Database",
    IEEE TBioCAS 16(5), 2022, and the IEEE BioCAS 2022 Grand Challenge on Respiratory Sound Classification.
    The official scorer is not public; "Poor Quality" records count among the non-normal ones here, and the
    SE without them (as two published challenge entries computed it) is reported beside it.
    """
    truth, predicted = list(truth), list(predicted)
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} records but {len(predicted)} predictions")
    unknown = sorted(set(truth + predicted) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(labels)}")
    normal = labels[0]
    right = [t == p for t, p in zip(truth, predicted)]
    sp = _ratio(sum(r for r, t in zip(right, truth) if t == normal), sum(t == normal for t in truth))
    se = _ratio(sum(r for r, t in zip(right, truth) if t != normal), sum(t != normal for t in truth))
    adventitious = [t not in (normal, "Poor Quality") for t in truth]
    se_adv = _ratio(sum(r for r, a in zip(right, adventitious) if a), sum(adventitious))
    average = (se + sp) / 2
    harmonic = 2 * se * sp / (se + sp) if se + sp > 0 else 0.0
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(truth, predicted):
        confusion[index[t], index[p]] += 1
    return RecordScores(se, sp, average, harmonic, (average + harmonic) / 2, se_adv, len(truth),
                        confusion.tolist(), tuple(labels))  # fmt: skip


def format_record_scores(name: str, scores: RecordScores | dict[str, object]) -> str:
    s = scores.as_dict() if isinstance(scores, RecordScores) else scores
    return (
        f"{name}: SE {100 * float(s['sensitivity']):.2f}  SP {100 * float(s['specificity']):.2f}  "  # type: ignore[arg-type]
        f"AS {100 * float(s['average']):.2f}  HS {100 * float(s['harmonic']):.2f}  Score {100 * float(s['score']):.2f}"  # type: ignore[arg-type]
        f"  ({s['records']} records)"
    )


def patient_shares(refused: np.ndarray, patients: Sequence[str], draws: int = 2000, seed: int = 0) -> np.ndarray:
    """The share of windows refused in `draws` resamples of the patients (drawn with replacement, each bringing
    all of their windows): how much the refused share moves from one group of patients to another."""
    refused = np.asarray(refused, bool)
    names, index = np.unique(np.asarray(patients), return_inverse=True)
    if refused.shape != index.shape or refused.size == 0:
        raise ValueError("need one refusal flag and one patient per window, at least one window")
    windows = np.bincount(index, minlength=len(names)).astype(np.float64)
    hits = np.bincount(index, weights=refused.astype(np.float64), minlength=len(names))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=draws).astype(np.float64)
    return (counts @ hits) / (counts @ windows)


def patient_interval(refused: np.ndarray, patients: Sequence[str]) -> list[float]:
    """The central 95 % of the refused share over patient resamples (`patient_shares`), as [low, high]."""
    return [float(v) for v in np.quantile(patient_shares(refused, patients), [0.025, 0.975])]


def _score_counts(truth: np.ndarray, predicted: np.ndarray, index: np.ndarray, patients: int) -> np.ndarray:
    """Per patient: [normal items, normal called normal, abnormal items, abnormal called their class]."""
    normal = truth == 0
    right = predicted == truth
    return np.stack([
        np.bincount(index, weights=w.astype(np.float64), minlength=patients)
        for w in (normal, normal & right, ~normal, ~normal & right)
    ], axis=1)  # fmt: skip


def patient_score_gaps(a: tuple[np.ndarray, np.ndarray, Sequence[str]], b: tuple[np.ndarray, np.ndarray, Sequence[str]],
                       draws: int = 2000, seed: int = 0) -> np.ndarray:  # fmt: skip
    """ICBHI Score of `a` minus that of `b` (each (truth, predicted, patient per item)) in `draws` resamples of
    the patients, drawn with replacement and the same for both, each bringing all of their items: how far a gap
    between two ways of scoring the same patients (windows and cycles) moves from one group of patients to
    another. NaN where a resample holds no normal or no abnormal item of either."""
    names = np.unique(np.concatenate([np.asarray(a[2]), np.asarray(b[2])]))
    counts = []
    for truth, predicted, patients in (a, b):
        truth, predicted = np.asarray(truth), np.asarray(predicted)
        if truth.shape != predicted.shape or truth.shape != np.shape(patients):
            raise ValueError("need one truth, one prediction and one patient per item")
        counts.append(_score_counts(truth, predicted, np.searchsorted(names, np.asarray(patients)), len(names)))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=draws).astype(np.float64)
    scores = []
    for per_patient in counts:
        totals = weights @ per_patient
        with np.errstate(invalid="ignore", divide="ignore"):
            scores.append((totals[:, 1] / totals[:, 0] + totals[:, 3] / totals[:, 2]) / 2)
    return scores[0] - scores[1]

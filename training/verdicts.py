"""Record-level verdicts for training: every window of each recording, the rule calibrated on validation
patients, and SPRSound's Task 2-1 / 2-2 figures of a rule on a set of recordings.

The rule itself (`qlung_edge.examination`) is device code: the daemon applies it when an examination ends.
Here it is fitted, by a grid search over pooling statistic and thresholds that maximises the mean of the
Task 2-1 and Task 2-2 Scores on the validation patients' recordings, each kind of abnormal record weighing the
same, the share of accepted windows below which an examination is "Poor Quality" by the one-standard-error rule
(`calibrate`), and never looks at the test set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge import CLASS_NAMES
from qlung_edge.examination import (
    STATISTICS,
    TASK_2_1,
    TASK_2_2,
    VerdictRule,
    decide,
    pool,
    task_2_1,
    window_evidence,
)
from training.dataset import Geometry, Prepared, indices_by_recording, recording_windows
from training.metrics import RecordScores, record_scores
from training.records import Cycle, Recording

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def all_windows(recordings: Sequence[Recording], geometry: Geometry) -> list[Cycle]:
    """Every window of every recording (labelled or not): what the daemon would classify."""
    return [w for r in recordings if r.audio_path is not None for w in recording_windows(r, geometry)]


def by_recording(prepared: Prepared, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Window probabilities grouped by recording, in window order."""
    groups = indices_by_recording(e.recording for e in prepared.examples)
    return {rec: probabilities[rows] for rec, rows in groups.items()}


def gate(windows: dict[str, np.ndarray], poor: dict[str, np.ndarray] | None, threshold: float | None
         ) -> tuple[dict[str, np.ndarray], dict[str, Counter[str]]]:  # fmt: skip
    """Each recording's windows the learned quality gate accepts, and how many it refused (offline: the AQS
    reasons are not applied; with no quality estimate every window is accepted)."""
    if poor is None or threshold is None:
        return windows, {rec: Counter() for rec in windows}
    accepted, refused = {}, {}
    for rec, probs in windows.items():
        keep = poor[rec] < threshold
        accepted[rec] = probs[keep]
        refused[rec] = Counter({"estimated_poor": int((~keep).sum())})
    return accepted, refused


def verdicts(rule: VerdictRule, accepted: dict[str, np.ndarray], refused: dict[str, Counter[str]]) -> dict[str, str]:
    """Task 2-2 label per recording."""
    return {rec: decide(rule, probs, refused.get(rec), CLASS_NAMES).task_2_2 for rec, probs in accepted.items()}


def score(
    rule: VerdictRule,
    windows: dict[str, np.ndarray],
    truth: dict[str, str],
    poor: dict[str, np.ndarray] | None = None,
    threshold: float | None = None,
) -> dict[str, RecordScores]:
    """Task 2-1 and Task 2-2 figures of `rule` on the recordings that have a record label."""
    accepted, refused = gate(windows, poor, threshold)
    labelled = [rec for rec in windows if truth.get(rec)]
    predicted = verdicts(rule, {rec: accepted[rec] for rec in labelled}, refused)
    t22 = [truth[rec] for rec in labelled]
    p22 = [predicted[rec] for rec in labelled]
    return {
        "task_2_1": record_scores([task_2_1(t) for t in t22], [task_2_1(p) for p in p22], TASK_2_1),
        "task_2_2": record_scores(t22, p22, TASK_2_2),
    }


def weighted_score(truth: np.ndarray, predicted: np.ndarray, normal: str, weights: np.ndarray) -> float:
    """SPRSound's record Score (`training.metrics.record_scores`) with record r counted `weights[r]` times:
    ones give the plain Score, 1 / (records of its kind) the Score with every kind of record weighing the same."""
    right = truth == predicted
    is_normal = truth == normal
    normal_weight, other_weight = float(weights @ is_normal), float(weights @ ~is_normal)
    sp = float(weights @ (right & is_normal)) / normal_weight if normal_weight > 0 else float("nan")
    se = float(weights @ (right & ~is_normal)) / other_weight if other_weight > 0 else float("nan")
    harmonic = 2 * se * sp / (se + sp) if se + sp > 0 else 0.0
    return ((se + sp) / 2 + harmonic) / 2


FRACTIONS = (0.0, 0.25, 0.5, 0.75)
"""Candidate least shares of accepted windows below which an examination is "Poor Quality"."""
RESAMPLES = 200
"""Patient resamples behind the one-standard-error choice of that share."""


def _resampled_weights(
    kinds: np.ndarray, patients: np.ndarray, balanced: bool, draws: int, seed: int = 0
) -> np.ndarray:  # fmt: skip
    """[draws, records] weights of patient resamples (a patient drawn twice counts its records twice), each kind
    of record weighing the same within a draw when `balanced`."""
    names, index = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    times = np.stack([np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)) for _ in range(draws)])
    weights = times[:, index].astype(float)
    if balanced:
        for kind in np.unique(kinds):
            rows = kinds == kind
            total = weights[:, rows].sum(axis=1, keepdims=True)
            weights[:, rows] = np.divide(weights[:, rows], total, out=np.zeros_like(weights[:, rows]), where=total > 0)
    return weights


def least_fraction(
    candidates: dict[float, tuple[np.ndarray, np.ndarray]],
    t21: np.ndarray,
    t22: np.ndarray,
    weights: np.ndarray,
    resampled: np.ndarray,
) -> float:
    """The one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani & Friedman, The Elements of
    Statistical Learning, 2nd ed., section 7.10) for the Poor Quality share, in its paired form: the least share
    whose score falls short of the best share's by no more than the standard error of that shortfall over
    patient resamples (both are scored on the same records in every draw, so their difference, not the best
    score alone, carries the noise that matters). A handful of validation patients' Poor Quality records cannot
    tell a share that refuses more examinations from one that refuses fewer, and the gate refuses more windows
    on other patients than on these: where the data cannot choose, turn fewer examinations into "Poor Quality".
    `candidates` maps each share to its best rule's (Task 2-1, Task 2-2) predictions."""

    def scores(w: np.ndarray) -> dict[float, float]:
        return {f: (weighted_score(t21, p21, TASK_2_1[0], w) + weighted_score(t22, p22, TASK_2_2[0], w)) / 2
                for f, (p21, p22) in candidates.items()}  # fmt: skip

    full = scores(weights)
    best = max(full, key=lambda f: (full[f], -f))
    draws = [scores(w) for w in resampled]
    for fraction in sorted(candidates):
        gaps = np.array([d[best] - d[fraction] for d in draws])
        if full[best] - full[fraction] <= float(np.nanstd(gaps)):
            return fraction
    return best


def calibrate(
    windows: dict[str, np.ndarray],
    truth: dict[str, str],
    where: str,
    poor: dict[str, np.ndarray] | None = None,
    threshold: float | None = None,
    balanced: bool = True,
    patients: dict[str, str] | None = None,
    least_share: bool = True,
) -> tuple[VerdictRule, dict[str, Any]]:
    """The pooling statistic and DAS/CAS thresholds that maximise the mean Task 2-1 and 2-2 Score on these
    (validation) recordings; ties go to the more conservative (higher) thresholds. With a quality estimate, the
    least share of accepted windows is chosen too, by the one-standard-error rule over resamples of the
    `patients` (recording id to patient; each recording its own patient when not given): `least_fraction`.
    `least_share=False` takes the share that scores best here instead (the rule before stop 27, for comparison;
    exact ties between shares then go to the least share, where the old search kept the first one it met).

    With `balanced`, every kind of non-normal record (CAS, DAS, CAS & DAS, Poor Quality) weighs the same in SE
    however common it is here: the mix of abnormal records differs from one population to another (SPRSound's
    training recordings are 12.6 % DAS and 5.5 % CAS records, its 2022 inter-patient test set 6.8 % and 18.3 %), and
    a rule fitted to one mix trades SP for whichever kind is common in it."""
    labelled = [rec for rec in windows if truth.get(rec)]
    if not labelled:
        raise ValueError("no recordings with record labels to calibrate the verdict on")
    weights = np.ones(len(labelled))
    accepted, refused = gate(windows, poor, threshold)
    t22 = np.array([truth[rec] for rec in labelled])
    t21 = np.array([task_2_1(t) for t in t22])
    if balanced:
        _, index, counts = np.unique(t22, return_inverse=True, return_counts=True)
        weights = weights / counts[index]
    n_accepted = np.array([len(accepted[rec]) for rec in labelled])
    n_total = n_accepted + np.array([sum(refused[rec].values()) for rec in labelled])
    fractions = FRACTIONS if poor is not None and threshold is not None else (0.0,)
    best: dict[float, tuple[Any, ...]] = {}
    for statistic in STATISTICS:
        evidence = [
            (pool(d, statistic), pool(c, statistic))
            for d, c in (window_evidence(accepted[rec], CLASS_NAMES) for rec in labelled)
        ]
        das = np.array([e[0] for e in evidence])
        cas = np.array([e[1] for e in evidence])
        for fraction in fractions:
            unusable = (n_accepted < 1) | (n_accepted < fraction * n_total)
            for d in THRESHOLDS:
                for c in THRESHOLDS:
                    has_d, has_c = das >= d, cas >= c
                    p22 = np.where(has_d & has_c, "CAS & DAS", np.where(has_d, "DAS", np.where(has_c, "CAS", "Normal")))
                    p22 = np.where(unusable, "Poor Quality", p22)
                    p21 = np.where(unusable, "Poor Quality", np.where(has_d | has_c, "Adventitious", "Normal"))
                    s21 = weighted_score(t21, p21, TASK_2_1[0], weights)
                    s22 = weighted_score(t22, p22, TASK_2_2[0], weights)
                    key = ((s21 + s22) / 2, s21, d + c, statistic, d, c, p21, p22)
                    if fraction not in best or key[:3] > best[fraction][:3]:
                        best[fraction] = key
    how = ", each kind of abnormal record weighing the same" if balanced else ""
    chosen = 0.0
    if len(best) > 1 and not least_share:
        chosen = max(best, key=lambda f: (best[f][:3], -f))
        how += ", Poor Quality share scoring best here"
    elif len(best) > 1:
        known = patients is not None and all(rec in patients for rec in labelled)
        ids = np.array([patients[rec] for rec in labelled] if patients is not None and known else labelled)
        resampled = _resampled_weights(t22, ids, balanced, RESAMPLES)
        candidates = {f: (key[6], key[7]) for f, key in best.items()}
        chosen = least_fraction(candidates, t21, t22, weights, resampled)
        who = "patients" if known else "recordings"
        how += f", Poor Quality share by the one-standard-error rule over {RESAMPLES} resamples of its {who}"
    key = best[chosen]
    rule = VerdictRule(statistic=key[3], das_threshold=float(key[4]), cas_threshold=float(key[5]),
                       min_accepted_fraction=float(chosen), calibrated_on=where + how)  # fmt: skip
    figures = {name: s.as_dict() for name, s in score(rule, windows, truth, poor, threshold).items()}
    return rule, figures


def preparer(config: Any, splits: Any, progress: bool = True) -> Any:
    """`prepare` for a trained checkpoint's recordings in one process (what `record_level` takes)."""
    from training.dataset import prepare

    def prepared(examples: list[Any], geometry: Geometry, name: str) -> Prepared:
        return prepare(examples, splits.scan.recordings, config.data.cache_dir, config.quality, geometry,
                       features=config.train.cache_features, progress=progress, desc=f"prepare {name}")  # fmt: skip

    return prepared


def checkpoint_gate(payload: dict[str, Any]) -> tuple[float | None, int]:
    """The learned gate's P(poor) threshold and smoothing of a checkpoint (None and 1 without an estimate)."""
    estimate = payload.get("quality_estimate") or {}
    return estimate.get("threshold"), int(estimate.get("smoothing_windows", 1))


def recalibrated(
    payload: dict[str, Any], config: Any, splits: Any, model: Any, threshold: float | None, smoothing: int,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """A checkpoint's verdict rule calibrated again on its validation patients under the gate given, and the
    test figures that go with it (the checkpoint keys to update); nothing when no validation record is labelled."""
    import torch

    from training.engine import Process, record_level

    if not any(r.record_label for r in splits.recordings["validation"]):
        return {}
    prepared = preparer(config, splits, progress)
    rule, records = record_level(config, splits, model, prepared, torch.device("cpu"), Process(), threshold, smoothing)
    test = {task: {k: s[k] for k in ("sensitivity", "specificity", "average", "harmonic", "score")}
            for task, s in records["test_records"].items()}  # fmt: skip
    return {"verdict": rule.to_dict(), "metrics": {**payload.get("metrics", {}), "test_records": test}}


def recalibrate_verdict(checkpoint: str | Path, out: str | Path, data_root: str | None = None,
                        progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Calibrate a trained checkpoint's verdict rule again (its model and gate untouched) and write it to `out`:
    a checkpoint trained before the rule's calibration changed, or new validation recordings, without training
    again."""
    from qlung_edge.errors import QLungError
    from training.checkpoint import save_checkpoint
    from training.engine import load_trained

    payload, model, config, splits = load_trained(checkpoint, data_root, progress)
    update = recalibrated(payload, config, splits, model, *checkpoint_gate(payload), progress)
    if not update:
        raise QLungError("no validation recording has a record label: nothing to calibrate a verdict on",
                         path=checkpoint)  # fmt: skip
    save_checkpoint(Path(out), {**payload, **update})
    return {"verdict": update["verdict"], "test_records": update["metrics"]["test_records"]}

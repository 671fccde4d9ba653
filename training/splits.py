"""Patient-wise splits: no patient's recordings on both sides of a split.

Recordings of one patient share voice, body and often device; splitting by
recording leaks them and inflates every Score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from training.records import Recording


def _patients_balanced(recordings: Sequence[Recording], k: int, seed: int) -> list[list[str]]:
    """Patients dealt into k groups of about equal cycle count (greedy, seeded tie order)."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    weight: dict[str, int] = defaultdict(int)
    for rec in recordings:
        weight[rec.patient] += max(len(rec.cycles), 1)
    if len(weight) < k:
        raise ValueError(f"cannot split {len(weight)} patients into {k} patient-disjoint folds")
    rng = np.random.default_rng(seed)
    patients = sorted(weight)
    order = rng.permutation(len(patients))
    shuffled = [patients[i] for i in order]
    shuffled.sort(key=lambda p: -weight[p])  # stable: ties keep the seeded order
    groups: list[list[str]] = [[] for _ in range(k)]
    totals = [0] * k
    for patient in shuffled:
        i = int(np.argmin(totals))
        groups[i].append(patient)
        totals[i] += weight[patient]
    return groups


def patient_kfold(recordings: Sequence[Recording], k: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """k (train, held-out) pairs of recording ids; each patient is held out exactly once."""
    groups = _patients_balanced(recordings, k, seed)
    folds = []
    for group in groups:
        held = set(group)
        train = [r.id for r in recordings if r.patient not in held]
        test = [r.id for r in recordings if r.patient in held]
        folds.append((train, test))
    return folds


def patient_holdout(
    recordings: Sequence[Recording], fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """One (train, held-out) pair with about `fraction` of the cycles held out, by patient."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    patients = len({r.patient for r in recordings})
    k = max(2, min(int(round(1.0 / fraction)), patients))  # few patients: hold out one of them at least
    return patient_kfold(recordings, k, seed)[0]

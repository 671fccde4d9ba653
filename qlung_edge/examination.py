"""An examination — one chest site of one patient — and the verdict it ends with, as SPRSound labels records.

Windows are classified one by one; a clinician wants one answer per examination. When an examination ends,
its accepted windows' class probabilities are pooled into SPRSound's two record-level tasks:

- Task 2-1: Normal / Adventitious / Poor Quality
- Task 2-2: Normal / CAS / DAS / CAS & DAS / Poor Quality

CAS (continuous adventitious sounds) is the wheeze evidence `p(wheeze) + p(both)` of each window, DAS
(discontinuous) the crackle evidence `p(crackle) + p(both)`; each is pooled over the accepted windows (mean,
max, or the fraction of windows above one half) and compared with a threshold. The pooling and thresholds are
calibrated on validation patients when the model is trained and travel in the bundle's manifest
(`VerdictRule`). Too little accepted audio gives Poor Quality with the reason, never a guess.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qlung_edge.config import from_dict

TASK_2_1 = ("Normal", "Adventitious", "Poor Quality")
TASK_2_2 = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
POOR_QUALITY = "Poor Quality"
STATISTICS = ("mean", "max", "fraction")

IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
"""Patient, encounter and chest-site identifiers: letters, digits and . _ : / -, at most 64 characters, so they
can travel in events, MQTT topics and FHIR references unescaped."""


def task_2_1(label_2_2: str) -> str:
    """A Task 2-2 record label as its Task 2-1 label."""
    if label_2_2 in ("CAS", "DAS", "CAS & DAS"):
        return "Adventitious"
    if label_2_2 not in TASK_2_2:
        raise ValueError(f"not a SPRSound record label: {label_2_2!r}")
    return label_2_2


@dataclass(frozen=True)
class VerdictRule:
    statistic: str = "mean"
    """How window evidence is pooled over an examination: mean, max, or fraction of windows above 0.5."""
    das_threshold: float = 0.5
    cas_threshold: float = 0.5
    min_accepted_windows: int = 1
    """Fewer accepted windows than this: Poor Quality ("too little accepted audio")."""
    min_accepted_fraction: float = 0.0
    """A smaller share of the examination's windows accepted: Poor Quality ("mostly refused by the gate")."""
    calibrated_on: str = "defaults (not calibrated)"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if not (0 <= self.das_threshold <= 1 and 0 <= self.cas_threshold <= 1 and 0 <= self.min_accepted_fraction <= 1):
            raise ValueError("thresholds and fractions must lie in [0, 1]")
        if self.min_accepted_windows < 1:
            raise ValueError("min_accepted_windows must be at least 1")

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> VerdictRule:
        """The bundle's rule; defaults for bundles exported before rules were calibrated."""
        values = manifest.get("verdict")
        return cls() if values is None else from_dict(cls, values, "verdict")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_evidence(probabilities: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(DAS, CAS) evidence per window from class probabilities [N, classes]."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(classes))
    index = {name: i for i, name in enumerate(classes)}
    both = p[:, index["both"]]
    return p[:, index["crackle"]] + both, p[:, index["wheeze"]] + both


def pool(values: np.ndarray, statistic: str) -> float:
    if len(values) == 0:
        return 0.0
    if statistic == "max":
        return float(np.max(values))
    if statistic == "fraction":
        return float(np.mean(values > 0.5))
    return float(np.mean(values))


@dataclass(frozen=True)
class Verdict:
    task_2_1: str
    task_2_2: str
    reason: str
    """Why: which evidence crossed which threshold, or why the audio did not suffice."""
    windows_accepted: int
    windows_gated: int
    gated_by_reason: dict[str, int]
    das: float
    """Pooled crackle evidence of the accepted windows (compared with the rule's das_threshold)."""
    cas: float
    class_fractions: dict[str, float]
    """Share of the accepted windows whose most probable class is each class."""


def decide(rule: VerdictRule, accepted: np.ndarray, gated: Counter[str] | None, classes: tuple[str, ...]) -> Verdict:
    """The verdict of an examination from its accepted windows' probabilities and its gated windows' reasons."""
    accepted = np.asarray(accepted, dtype=np.float64).reshape(-1, len(classes))
    gated = gated or Counter()
    windows_gated = sum(gated.values()) if gated else 0
    n = len(accepted)
    total = n + windows_gated
    counts = np.bincount(accepted.argmax(1), minlength=len(classes)) if n else np.zeros(len(classes))
    fractions = {c: round(float(k) / n, 4) if n else 0.0 for c, k in zip(classes, counts)}
    das_values, cas_values = window_evidence(accepted, classes)
    das, cas = pool(das_values, rule.statistic), pool(cas_values, rule.statistic)
    common = {"windows_accepted": n, "windows_gated": windows_gated, "gated_by_reason": dict(gated),
              "das": round(das, 4), "cas": round(cas, 4), "class_fractions": fractions}  # fmt: skip
    if n < rule.min_accepted_windows:
        why = (
            f"too little accepted audio: {n} accepted window(s) of {total}, at least {rule.min_accepted_windows} needed"
        )
        return Verdict(POOR_QUALITY, POOR_QUALITY, why, **common)
    if total and n / total < rule.min_accepted_fraction:
        why = f"mostly refused by the quality gate: {n} of {total} windows accepted"
        return Verdict(POOR_QUALITY, POOR_QUALITY, why, **common)
    has_das, has_cas = das >= rule.das_threshold, cas >= rule.cas_threshold
    label = "CAS & DAS" if has_das and has_cas else "DAS" if has_das else "CAS" if has_cas else "Normal"
    why = (
        f"{rule.statistic} crackle evidence {das:.2f} {'>=' if has_das else '<'} {rule.das_threshold:.2f}, "
        f"{rule.statistic} wheeze evidence {cas:.2f} {'>=' if has_cas else '<'} {rule.cas_threshold:.2f} "
        f"over {n} accepted window(s)"
    )
    return Verdict(task_2_1(label), label, why, **common)


@dataclass
class Examination:
    """What one examination has seen so far: accepted windows' probabilities, gated windows' reasons."""

    id: str
    started: float
    """Stream time (seconds) of its first window."""
    patient: str | None = None
    encounter: str | None = None
    site: str | None = None
    accepted: list[np.ndarray] = field(default_factory=list)
    gated: Counter[str] = field(default_factory=Counter)
    ended: float | None = None

    def add(self, reasons: tuple[str, ...], probabilities: np.ndarray | None) -> None:
        if reasons:
            self.gated[reasons[0]] += 1
        elif probabilities is not None:
            self.accepted.append(np.asarray(probabilities, np.float64))

    @property
    def windows(self) -> int:
        return len(self.accepted) + sum(self.gated.values())

    def verdict(self, rule: VerdictRule, classes: tuple[str, ...]) -> Verdict:
        stacked = np.stack(self.accepted) if self.accepted else np.zeros((0, len(classes)))
        return decide(rule, stacked, self.gated, classes)


def check_identifier(name: str, value: Any) -> str | None:
    """`value` if it is a usable identifier (or empty), else a ValueError that says what is wrong with it."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise ValueError(f"{name} {value!r}: use 1-64 letters, digits and . _ : / - (starting with a letter or digit)")
    return value

"""Would averaging seeds lift the record-level verdict? A seed ensemble's Task 2-1 / 2-2 figures, offline.

For a group folder of seeds trained on the same split (`qlung-edge train --seeds ...`), every window of the
validation and test recordings goes through each seed's best.pt. The ensemble's class probabilities and P(poor)
are the means of its members'; P(poor) is pooled over the members' smoothing as the daemon pools it and
compared with the mean of their gate thresholds (a deployed ensemble would fit its own quality head; this is
the cheap reading of whether one is worth building). The verdict rule is calibrated on the validation patients
as training calibrates it (balanced) and scored on the test recordings. Each member is scored the same way
(offline: the learned gate only, no AQS reasons), so members and ensemble compare like for like.

Writes GROUP/seed_ensemble.json (which scripts/results.py reads) and prints a line per group.
Usage: python scripts/seed_ensemble.py GROUP [GROUP ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("validation", "test")


def member_outputs(run: Path) -> dict[str, Any]:
    """One seed's window outputs by recording for both parts, raw P(poor) (pooled later), its gate and truth."""
    import torch

    from training.engine import Process, load_trained, record_outputs
    from training.verdicts import checkpoint_gate, preparer

    payload, model, config, splits = load_trained(run / "best.pt", progress=False)
    threshold, smoothing = checkpoint_gate(payload)
    prepared = preparer(config, splits, progress=False)
    outputs = {part: record_outputs(config, splits, model, prepared, torch.device("cpu"), Process(), part, 1)
               for part in PARTS}  # fmt: skip
    truth = {r.id: r.record_label for part in PARTS for r in splits.recordings[part] if r.record_label}
    patients = {part: sorted({r.patient for r in splits.recordings[part]}) for part in PARTS}
    patient_of = {r.id: r.patient for part in PARTS for r in splits.recordings[part]}
    return {"run": run, "outputs": outputs, "threshold": threshold, "smoothing": smoothing, "truth": truth,
            "patients": patients, "patient_of": patient_of}  # fmt: skip


def combined(members: list[dict[str, Any]], part: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The members' mean class probabilities per window and, when all have an estimate, their mean P(poor)
    pooled as the daemon pools it."""
    from qlung_edge.reporter import trailing_means

    recordings = members[0]["outputs"][part][0]
    probabilities = {rec: np.mean([m["outputs"][part][0][rec] for m in members], axis=0) for rec in recordings}
    if any(m["outputs"][part][1] is None for m in members):
        return probabilities, None
    smoothing = members[0]["smoothing"]
    poor = {rec: trailing_means(np.mean([m["outputs"][part][1][rec] for m in members], axis=0), smoothing)
            for rec in recordings}  # fmt: skip
    return probabilities, poor


def judged(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Calibrate on validation, score on test: the rule and both tasks' test figures."""
    from training.verdicts import calibrate, score

    thresholds = [m["threshold"] for m in members]
    threshold = None if any(t is None for t in thresholds) else float(np.mean(thresholds))
    (val_windows, val_poor), (test_windows, test_poor) = (combined(members, part) for part in PARTS)
    truth = members[0]["truth"]
    rule, _ = calibrate(val_windows, truth, "validation patients", val_poor, threshold,
                        patients=members[0]["patient_of"])  # fmt: skip
    figures = score(rule, test_windows, truth, test_poor, threshold)
    return {"rule": rule.to_dict(), "threshold": threshold,
            **{task: {"score": s.score, "sensitivity": s.sensitivity, "specificity": s.specificity}
               for task, s in figures.items()}}  # fmt: skip


def ensemble(group: Path) -> dict[str, Any]:
    runs = sorted((p for p in group.glob("seed*") if p.name[4:].isdigit() and (p / "best.pt").is_file()),
                  key=lambda p: int(p.name[4:]))  # fmt: skip
    if len(runs) < 2:
        raise SystemExit(f"{group}: an ensemble needs at least two seed*/best.pt, found {len(runs)}")
    members = [member_outputs(run) for run in runs]
    first = members[0]
    for m in members[1:]:
        if m["patients"] != first["patients"] or set(m["outputs"]["test"][0]) != set(first["outputs"]["test"][0]):
            raise SystemExit(f"{m['run']}: trained on other validation or test patients than {first['run']}")
    alone = [{"seed": int(m["run"].name[4:]), **judged([m])} for m in members]
    return {"group": str(group), "seeds": [a["seed"] for a in alone], "members": alone, "ensemble": judged(members)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", type=Path)
    args = parser.parse_args()
    for group in args.groups:
        result = ensemble(group)
        (group / "seed_ensemble.json").write_text(json.dumps(result, indent=1))
        parts = []
        for task in ("task_2_1", "task_2_2"):
            alone = [100 * m[task]["score"] for m in result["members"]]
            parts.append(f"{task}: ensemble {100 * result['ensemble'][task]['score']:.2f}, members "
                         f"{np.mean(alone):.2f} ± {np.std(alone, ddof=1):.2f}")  # fmt: skip
        print(f"{group}: {len(result['seeds'])} seeds; " + "; ".join(parts))


if __name__ == "__main__":
    main()

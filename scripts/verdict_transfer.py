"""Does a verdict rule calibrated on the validation patients hold on other patients?

For each trained run (a folder with best.pt and eval-stream/windows.csv from `qlung-edge eval-stream`), three ways
of calibrating the rule are compared, all fitted on the validation patients only:

- plain: the grid point that maximises the mean Task 2-1 / 2-2 Score on the validation recordings (its Poor
  Quality share, like training's, by the one-standard-error rule);
- balanced (training's rule): the same with each kind of abnormal record weighing the same in SE;
- balanced, best share: the same, with the Poor Quality share of accepted windows that scores best on validation
  rather than the least share within one standard error of it (training's rule before stop 27).

They are judged twice: within validation (calibrate on half the patients, score on the other half, over random
halvings: no test data involved), and on the inter-patient test set through the deployed stream (the run's
windows.csv re-decided under each rule, as the daemon would decide it).

Writes RUN/verdict_transfer.json (which scripts/results.py reads) and prints a line per run.
Usage: python scripts/verdict_transfer.py RUN [RUN ...] [--halvings 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _validation_outputs(run: Path) -> tuple[Any, ...]:
    import torch

    from training.engine import Process, load_trained, record_outputs
    from training.verdicts import checkpoint_gate, preparer

    payload, model, config, splits = load_trained(run / "best.pt", progress=False)
    threshold, smoothing = checkpoint_gate(payload)
    prepared = preparer(config, splits, progress=False)
    windows, poor = record_outputs(config, splits, model, prepared, torch.device("cpu"), Process(), "validation",
                                   smoothing)  # fmt: skip
    validation = splits.recordings["validation"]
    truth = {r.id: r.record_label for r in validation if r.record_label}
    patients = {r.id: r.patient for r in validation}
    return payload, windows, poor, threshold, truth, patients


def _halves(patients: dict[str, str], halvings: int, seed: int = 0) -> list[tuple[set[str], set[str]]]:
    names = sorted(set(patients.values()))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(halvings):
        order = rng.permutation(names)
        first = set(order[: len(names) // 2])
        out.append(({r for r, p in patients.items() if p in first}, {r for r, p in patients.items() if p not in first}))
    return out


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _subset(mapping: dict[str, Any] | None, keys: set[str]) -> dict[str, Any] | None:
    return None if mapping is None else {k: v for k, v in mapping.items() if k in keys}


def transfer(run: Path, halvings: int) -> dict[str, Any]:
    from qlung_edge.evalstream import read_table, verdicts_from_table
    from qlung_edge.examination import TASK_2_1, TASK_2_2, VerdictRule, task_2_1
    from training.metrics import record_scores
    from training.verdicts import calibrate, score

    payload, windows, poor, threshold, truth, patients = _validation_outputs(run)
    methods = {
        "plain": {"balanced": False},
        "balanced": {"balanced": True},
        "balanced, best share": {"balanced": True, "least_share": False},
    }
    rules = {name: calibrate(windows, truth, "validation", poor, threshold, patients=patients, **kw)[0]
             for name, kw in methods.items()}  # fmt: skip
    within: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for fit_on, judge_on in _halves(patients, halvings):
        if not any(truth.get(r) for r in fit_on) or not any(truth.get(r) for r in judge_on):
            continue  # a half without record labels (a small validation set) can neither fit nor judge
        for name, kw in methods.items():
            rule, _ = calibrate(_subset(windows, fit_on), truth, "half", _subset(poor, fit_on), threshold,
                                patients=patients, **kw)  # fmt: skip
            s = score(rule, _subset(windows, judge_on), truth, _subset(poor, judge_on), threshold)
            within[name].append((s["task_2_1"].score, s["task_2_2"].score))
    report = json.loads((run / "eval-stream" / "eval_stream.json").read_text())
    table = read_table(run / "eval-stream" / "windows.csv")
    test_truth = {v["recording"]: v["truth"] for v in report["verdicts"] if v["truth"]}
    shipped = VerdictRule.from_manifest({"verdict": report["verdict_rule"]})
    again = verdicts_from_table(table, shipped)
    mismatches = sum(again[v["recording"]].task_2_2 != v["task_2_2"] for v in report["verdicts"])
    trained = {k: v for k, v in payload.get("verdict", {}).items() if k != "calibrated_on"}
    same = [
        name
        for name, rule in rules.items()
        if {k: v for k, v in rule.to_dict().items() if k != "calibrated_on"} == trained
    ]
    result: dict[str, Any] = {"run": str(run), "validation_recordings": len(truth),
                              "validation_patients": len(set(patients.values())),
                              "shipped_rule_reproduced": mismatches == 0, "mismatches": mismatches,
                              "trained_rule_is": same}  # fmt: skip
    for name, rule in rules.items():
        decided = verdicts_from_table(table, rule)
        ids = sorted(test_truth)
        t22, p22 = [test_truth[r] for r in ids], [decided[r].task_2_2 for r in ids]
        t21 = record_scores([task_2_1(t) for t in t22], [task_2_1(p) for p in p22], TASK_2_1)
        t2 = record_scores(t22, p22, TASK_2_2)
        halves = np.array(within[name]).reshape(-1, 2)
        result[name] = {
            "rule": rule.to_dict(),
            "halvings": len(halves),
            "within_validation_task_2_1": float(halves[:, 0].mean()) if len(halves) else float("nan"),
            "within_validation_task_2_2": float(halves[:, 1].mean()) if len(halves) else float("nan"),
            "test_task_2_1": t21.score, "test_task_2_1_se": t21.sensitivity, "test_task_2_1_sp": t21.specificity,
            "test_task_2_2": t2.score,
            "test_normal_called_poor": _share([p == "Poor Quality" for t, p in zip(t22, p22) if t == "Normal"]),
        }  # fmt: skip
    return result


METHODS = ("plain", "balanced", "balanced, best share")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--halvings", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for run in args.runs:
        r = transfer(run, args.halvings)
        results.append(r)
        (run / "verdict_transfer.json").write_text(json.dumps(r, indent=1))
        line = [
            f"{run}: verdicts reproduced {r['shipped_rule_reproduced']}, the trained rule is "
            f"{' = '.join(r['trained_rule_is']) or 'none of these'}"
        ]
        for name in METHODS:
            m = r[name]
            line.append(
                f"{name}: within-val 2-1 {100 * m['within_validation_task_2_1']:.2f} "
                f"2-2 {100 * m['within_validation_task_2_2']:.2f} | test 2-1 {100 * m['test_task_2_1']:.2f} "
                f"(SE {100 * m['test_task_2_1_se']:.1f} SP {100 * m['test_task_2_1_sp']:.1f}) "
                f"2-2 {100 * m['test_task_2_2']:.2f} | {m['rule']['statistic']} D{m['rule']['das_threshold']} "
                f"C{m['rule']['cas_threshold']} f{m['rule']['min_accepted_fraction']}"
            )
        print("\n  ".join(line), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Does the learned quality gate refuse on unseen patients what it refused out of fold in training?

For each trained run (a folder with best.pt), the quality head is fitted again on the run's embedding of every
training window, the way training fits it (`training.quality_model`), and in variants of it (other L2
strengths, without the synthetic degradations). Each variant's threshold is chosen as training chooses it: out
of fold, for the run's gate budget. Reported per variant:

- record AUROC of P(poor) against "Poor Quality", out of fold on the training recordings and on the test set;
- the share of good records' windows the whole gate (AQS reasons and estimate) refuses: out of fold over all
  training windows (the budget), on the validation patients (whose windows the head is fitted on, as in
  training: the classifier never trained on them), and on the inter-patient test set;
- the share of Poor Quality records' windows refused on test, and of the synthetic degradations' windows
  the estimate catches (scored by a head that never saw them);
- the record-level Task 2-1 / 2-2 Score on test with the verdict rule calibrated on the validation patients
  under that gate (offline, AQS reasons applied as the daemon applies them).

With `--budgets`, the as-trained head's threshold is also fitted to each budget given (what `fit-gate --budget`
would give). With `--later FRACTION`, the gate is also fitted without the latest FRACTION of the training patients
by recording order, and without five random groups of as many, and the share of the held-out patients' good
windows refused is given per budget (does refusal drift with time?); then the budget training chooses since that
check (the largest that keeps the latest fifth within 5 % in 97.5 % of resamples of them) is judged like
the others.

Nothing here looks at the test set to choose anything: it only says how each choice made on the training
recordings carries over. Writes RUN/gate_transfer.json and prints a line per variant.
Usage: python scripts/gate_transfer.py RUN [RUN ...] [--budgets 0.01 0.02 ...] [--later 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "as trained (L2 1, with synthetic degradations)": (1.0, True),
    "L2 0.1": (0.1, True),
    "L2 30": (30.0, True),
    "without synthetic degradations": (1.0, False),
}


def _windows(model: Any, config: Any, recordings: list[Any], geometry: Any) -> dict[str, Any]:
    import torch

    from qlung_edge.batches import in_batches
    from training.dataset import prepare, window_reports
    from training.verdicts import all_windows

    usable = [r for r in recordings if r.audio_path is not None]
    prepared = prepare(all_windows(usable, geometry), usable, config.data.cache_dir, config.quality, geometry,
                       progress=False)  # fmt: skip
    reports = window_reports(prepared.examples, usable, config.data.cache_dir, config.quality, geometry, progress=False)
    model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        out = model(torch.from_numpy(x))
        return {"x": out["embedding"].numpy(), "probabilities": out["probabilities"].numpy()}

    by_id = {r.id: r for r in usable}
    poor = np.array([by_id[e.recording].record_label == "Poor Quality" for e in prepared.examples])
    return {"recordings": usable, "prepared": prepared, "reports": reports, **in_batches(run, prepared.inputs, 64),
            "poor": poor, "ids": [e.recording for e in prepared.examples]}  # fmt: skip


def _record_auroc(p_poor: np.ndarray, part: dict[str, Any]) -> float:
    from training.metrics import auroc
    from training.quality_model import record_scores

    per_record = record_scores(part["ids"], p_poor)
    label = {r.id: r.record_label == "Poor Quality" for r in part["recordings"]}
    records = sorted(per_record)
    return auroc(np.array([per_record[r] for r in records]), np.array([label[r] for r in records]))


def _by_recording(part: dict[str, Any], gated_on: np.ndarray, refused: np.ndarray, keep: set[str] | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """The windows the AQS reasons let through, per recording: class probabilities and pooled P(poor)."""
    from training.dataset import indices_by_recording

    windows, poor = {}, {}
    for rec, rows in indices_by_recording(part["ids"]).items():
        if keep is not None and rec not in keep:
            continue
        rows = np.array(rows)[~refused[rows]]
        windows[rec], poor[rec] = part["probabilities"][rows], gated_on[rows]
    return windows, poor


def _judged(threshold: float, run: dict[str, Any], gated: dict[str, np.ndarray], oof_gated: np.ndarray,
            synthetic_p: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """The whole gate at `threshold` (one head's pooled estimates `gated`, out of fold `oof_gated`): refusals
    per part and the verdicts that follow. `run` holds what every head of the run shares."""
    from training.metrics import patient_interval
    from training.verdicts import calibrate, score

    train, test, refused, good = run["train"], run["test"], run["refused"], run["good"]
    refusal = {part: (gated[part] >= threshold) | refused[part] for part in gated}
    windows, poor = _by_recording(train, gated["train"], refused["train"], run["validation_ids"])
    rule, _ = calibrate(windows, run["truth"], "validation patients", poor, threshold, patients=run["patient_of"])
    windows, poor = _by_recording(test, gated["test"], refused["test"], None)
    verdict = score(rule, windows, run["truth"], poor, threshold)
    out_of_fold = ((oof_gated >= threshold) | refused["train"])[good]
    poor_refused = float(np.mean(refusal["test"][test["poor"]])) if test["poor"].any() else None
    return {
        "threshold": threshold,
        "good_windows_refused_out_of_fold": float(np.mean(out_of_fold)),
        "good_windows_refused_out_of_fold_patients_95": patient_interval(out_of_fold, run["good_patients"]),
        "good_windows_refused_validation": float(np.mean(refusal["train"][good & run["in_validation"]])),
        "good_windows_refused_test": float(np.mean(refusal["test"][~test["poor"]])),
        "poor_windows_refused_test": poor_refused,
        "synthetic_windows_caught": float(np.mean(synthetic_p >= threshold)),
        "test_task_2_1": verdict["task_2_1"].score, "test_task_2_2": verdict["task_2_2"].score,
    }  # fmt: skip


def transfer(run: Path, sweep: Sequence[float] = (), later: float = 0.0) -> dict[str, Any]:
    from training.dataset import Geometry
    from training.engine import geometry_of, load_trained
    from training.quality_model import (
        LATER_BUDGET,
        aqs_refused,
        budget_threshold,
        degraded_windows,
        embeddings,
        fit_logistic,
        lowered_budget,
        out_of_fold_p_poor,
        pooled_as_gated,
        probability,
        quiet_level,
    )

    payload, model, config, splits = load_trained(run / "best.pt", progress=False)
    estimate = payload.get("quality_estimate")
    if not estimate:
        raise SystemExit(f"{run}: its checkpoint has no learned quality estimate")
    budget, smoothing = estimate["figures"]["budget"], estimate["smoothing_windows"]
    model.quality_head = None
    window = geometry_of(config, "window")
    geometry = Geometry("window", window.seconds, window.hop_seconds)
    train = _windows(model, config, splits.recordings["train"] + splits.recordings["validation"], geometry)
    test = _windows(model, config, splits.recordings["test"], geometry)
    waves, synthetic_patients, _ = degraded_windows(train["prepared"], train["recordings"], geometry,
                                                    estimate["figures"]["synthetic_windows"])  # fmt: skip
    x_synthetic = embeddings(model, waves)
    good = ~train["poor"]
    quiet_dbfs = quiet_level(train["reports"], good)
    refused = {"train": aqs_refused(train["reports"], quiet_dbfs), "test": aqs_refused(test["reports"], quiet_dbfs)}
    validation_ids = {r.id for r in splits.recordings["validation"]}
    patient_of = {r.id: r.patient for r in splits.recordings["validation"]}
    in_validation = np.array([rec in validation_ids for rec in train["ids"]])
    truth = {r.id: r.record_label for p in ("validation", "test") for r in splits.recordings[p] if r.record_label}
    patients = np.array([e.patient for e in train["prepared"].examples] + list(synthetic_patients))
    good_patients = patients[: len(train["x"])][good]
    shared = {"train": train, "test": test, "refused": refused, "good": good, "good_patients": good_patients,
              "in_validation": in_validation, "validation_ids": validation_ids, "truth": truth,
              "patient_of": patient_of}  # fmt: skip
    asked = estimate["figures"].get("budget_asked", budget)  # checkpoints from before the later patients' check
    result: dict[str, Any] = {"run": str(run), "budget": budget, "budget_asked": asked,
                              "trained_threshold": estimate["threshold"]}  # fmt: skip
    for name, (l2, synthetic) in VARIANTS.items():
        n = len(train["x"]) + (len(x_synthetic) if synthetic else 0)
        x = np.vstack([train["x"], x_synthetic])[:n]
        y = np.concatenate([train["poor"], np.ones(len(x_synthetic))])[:n].astype(float)
        everything = out_of_fold_p_poor(x, y, patients[:n], train["recordings"], l2=l2)
        oof = everything[: len(train["x"])]
        oof_gated = pooled_as_gated(oof, train["ids"], refused["train"], smoothing)
        weight, bias = fit_logistic(x, y, l2=l2)
        # Synthetic windows never seen by the head that scores them: out of fold, or all of them when left out.
        synthetic_p = everything[len(train["x"]) :] if synthetic else probability(x_synthetic, weight, bias)
        gated = {"train": pooled_as_gated(probability(train["x"], weight, bias), train["ids"], refused["train"],
                                          smoothing),
                 "test": pooled_as_gated(probability(test["x"], weight, bias), test["ids"], refused["test"],
                                         smoothing)}  # fmt: skip
        result[name] = {
            "l2": l2, "synthetic": synthetic,
            "cv_record_auroc": _record_auroc(oof, train),
            "test_record_auroc": _record_auroc(probability(test["x"], weight, bias), test),
            **_judged(budget_threshold(oof_gated[good], refused["train"][good], budget), shared, gated, oof_gated,
                      synthetic_p),
        }  # fmt: skip
        if name != next(iter(VARIANTS)):
            continue
        as_trained = {"x": x, "y": y, "judged": (gated, oof_gated, synthetic_p)}
        if sweep:
            result["budget sweep"] = {}
            for b in sweep:
                threshold = budget_threshold(oof_gated[good], refused["train"][good], b)
                result["budget sweep"][f"{b:g}"] = {"budget": b, **_judged(threshold, shared, gated, oof_gated,
                                                                           synthetic_p)}  # fmt: skip
    if later:
        target = (estimate["figures"].get("later") or {}).get("later_budget", LATER_BUDGET)
        held_out = _held_out(as_trained["x"], as_trained["y"], patients, train, smoothing, sorted({*sweep, asked}),
                             later, target)  # fmt: skip
        # The budget training now chooses (`fit_quality_estimate`): lowered until the latest patients keep to 5 %.
        lowered = lowered_budget(asked, held_out)
        gated, oof_gated, synthetic_p = as_trained["judged"]
        threshold = budget_threshold(oof_gated[good], refused["train"][good], lowered)
        result["held-out patients"] = held_out
        result["budget lowered for the later patients"] = {"budget": lowered,
                                                           **_judged(threshold, shared, gated, oof_gated,
                                                                     synthetic_p)}  # fmt: skip
    return result


def _held_out(x: np.ndarray, y: np.ndarray, patients: np.ndarray, train: dict[str, Any], smoothing: int,
              budgets: Sequence[float], fraction: float, target: float, draws: int = 5) -> dict[str, Any]:  # fmt: skip
    """The as-trained gate (its rows `x`, `y`, `patients`: the real windows, then the synthetic ones) fitted
    without the latest `fraction` of the training patients, and without `draws` random groups of as many: the
    share of the held-out patients' good windows refused at each budget."""
    from training.quality_model import held_out_gate, later_patients

    held = later_patients(train["recordings"], fraction)
    if held is None:
        raise SystemExit("--later: the recordings' order is unknown (SPRSound's recording numbers give it)")
    rng = np.random.default_rng(0)
    everyone = sorted({r.patient for r in train["recordings"]})
    groups = [held] + [set(rng.choice(everyone, len(held), replace=False)) for _ in range(draws)]
    shares, budget_for_later, upper = [], float("nan"), float("nan")
    for group in groups:
        gate = held_out_gate(x, y, patients, train["recordings"], train["ids"], train["reports"], group, smoothing)
        if gate is None:
            raise SystemExit("--later: a held-out group has no good window")
        shares.append({f"{b:g}": gate.refused_share(b) for b in budgets})
        if group is held:
            budget_for_later = gate.budget_for(target)
            upper = gate.upper_share(budget_for_later)
    return {"fraction": fraction, "patients": len(held), "later": shares[0], "random": shares[1:],
            "later_budget": target, "budget_for_later": budget_for_later,
            "budget_for_later_upper_share": upper}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--budgets", type=float, nargs="*", default=[],
                        help="also fit the as-trained head's threshold to each of these budgets (shares, e.g. "
                             "0.01 0.02) and judge each: what another `fit-gate --budget` would give")  # fmt: skip
    later = ("also fit the gate without the latest FRACTION of the training patients (by recording "
             "number) and give the share of their good windows refused per budget, beside five random groups of as "
             "many patients: does refusal drift with time?")  # fmt: skip
    parser.add_argument("--later", type=float, default=0.0, metavar="FRACTION", help=later)
    args = parser.parse_args()
    for run in args.runs:
        r = transfer(run, args.budgets, args.later)
        (run / "gate_transfer.json").write_text(json.dumps(r, indent=1))
        print(f"{run}: budget {100 * r['budget']:.1f} %, trained threshold {r['trained_threshold']:.4f}")
        for name in VARIANTS:
            v = r[name]
            poor = "n/a" if v["poor_windows_refused_test"] is None else f"{100 * v['poor_windows_refused_test']:.1f}"
            print(f"  {name}: threshold {v['threshold']:.4f}, AUROC cv {v['cv_record_auroc']:.3f} test "
                  f"{v['test_record_auroc']:.3f}; good windows refused out of fold "
                  f"{100 * v['good_windows_refused_out_of_fold']:.1f} %, validation "
                  f"{100 * v['good_windows_refused_validation']:.1f} %, test {100 * v['good_windows_refused_test']:.1f}"
                  f" %; poor windows refused on test {poor} %; synthetic windows caught "
                  f"{100 * v['synthetic_windows_caught']:.1f} %; test Task 2-1 {100 * v['test_task_2_1']:.2f}, "
                  f"2-2 {100 * v['test_task_2_2']:.2f}")  # fmt: skip
        for v in r.get("budget sweep", {}).values():
            low, high = (100 * e for e in v["good_windows_refused_out_of_fold_patients_95"])
            print(f"  budget {100 * v['budget']:.1f} %: good windows refused out of fold "
                  f"{100 * v['good_windows_refused_out_of_fold']:.2f} % (patients 95 % {low:.2f}-{high:.2f}), "
                  f"validation {100 * v['good_windows_refused_validation']:.2f} %, test "
                  f"{100 * v['good_windows_refused_test']:.2f} %; poor windows refused on test "
                  f"{100 * (v['poor_windows_refused_test'] or 0):.1f} %; test Task 2-1 {100 * v['test_task_2_1']:.2f}, "
                  f"2-2 {100 * v['test_task_2_2']:.2f}")  # fmt: skip
        if "held-out patients" in r:
            h = r["held-out patients"]
            for b, share in h["later"].items():
                randoms = ", ".join(f"{100 * d[b]:.2f}" for d in h["random"])
                print(f"  budget {100 * float(b):.1f} %, fitted without {h['patients']} patients: their good windows "
                      f"refused {100 * share:.2f} % (the latest), {randoms} % (random groups)")  # fmt: skip
            v = r["budget lowered for the later patients"]
            print(f"  budget lowered for the later patients to {100 * v['budget']:.2f} %: good windows refused out of "
                  f"fold {100 * v['good_windows_refused_out_of_fold']:.2f} %, validation "
                  f"{100 * v['good_windows_refused_validation']:.2f} %, test {100 * v['good_windows_refused_test']:.2f}"
                  f" %; poor windows refused on test {100 * (v['poor_windows_refused_test'] or 0):.1f} %; synthetic "
                  f"windows caught {100 * v['synthetic_windows_caught']:.1f} %; test Task 2-1 "
                  f"{100 * v['test_task_2_1']:.2f}, 2-2 {100 * v['test_task_2_2']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

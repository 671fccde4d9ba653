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

Nothing here looks at the test set to choose anything: it only says how each choice made on the training
recordings carries over. Writes RUN/gate_transfer.json and prints a line per variant.
Usage: python scripts/gate_transfer.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def transfer(run: Path) -> dict[str, Any]:
    from training.dataset import Geometry
    from training.engine import geometry_of, load_trained
    from training.quality_model import (
        aqs_refused,
        budget_threshold,
        degraded_windows,
        embeddings,
        fit_logistic,
        out_of_fold_p_poor,
        pooled_as_gated,
        probability,
        quiet_level,
    )
    from training.verdicts import calibrate, score

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
    result: dict[str, Any] = {"run": str(run), "budget": budget, "trained_threshold": estimate["threshold"]}
    for name, (l2, synthetic) in VARIANTS.items():
        n = len(train["x"]) + (len(x_synthetic) if synthetic else 0)
        x = np.vstack([train["x"], x_synthetic])[:n]
        y = np.concatenate([train["poor"], np.ones(len(x_synthetic))])[:n].astype(float)
        everything = out_of_fold_p_poor(x, y, patients[:n], train["recordings"], l2=l2)
        oof = everything[: len(train["x"])]
        oof_gated = pooled_as_gated(oof, train["ids"], refused["train"], smoothing)
        threshold = budget_threshold(oof_gated[good], refused["train"][good], budget)
        weight, bias = fit_logistic(x, y, l2=l2)
        # Synthetic windows never seen by the head that scores them: out of fold, or all of them when left out.
        synthetic_p = everything[len(train["x"]) :] if synthetic else probability(x_synthetic, weight, bias)
        gated = {"train": pooled_as_gated(probability(train["x"], weight, bias), train["ids"], refused["train"],
                                          smoothing),
                 "test": pooled_as_gated(probability(test["x"], weight, bias), test["ids"], refused["test"],
                                         smoothing)}  # fmt: skip
        refusal = {part: (gated[part] >= threshold) | refused[part] for part in gated}
        windows, poor = _by_recording(train, gated["train"], refused["train"], validation_ids)
        rule, _ = calibrate(windows, truth, "validation patients", poor, threshold, patients=patient_of)
        windows, poor = _by_recording(test, gated["test"], refused["test"], None)
        verdict = score(rule, windows, truth, poor, threshold)
        result[name] = {
            "l2": l2, "synthetic": synthetic, "threshold": threshold,
            "cv_record_auroc": _record_auroc(oof, train),
            "test_record_auroc": _record_auroc(probability(test["x"], weight, bias), test),
            "good_windows_refused_out_of_fold": float(np.mean(((oof_gated >= threshold) | refused["train"])[good])),
            "good_windows_refused_validation": float(np.mean(refusal["train"][good & in_validation])),
            "good_windows_refused_test": float(np.mean(refusal["test"][~test["poor"]])),
            "poor_windows_refused_test": float(np.mean(refusal["test"][test["poor"]])) if test["poor"].any() else None,
            "synthetic_windows_caught": float(np.mean(synthetic_p >= threshold)),
            "test_task_2_1": verdict["task_2_1"].score, "test_task_2_2": verdict["task_2_2"].score,
        }  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        r = transfer(run)
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


if __name__ == "__main__":
    main()

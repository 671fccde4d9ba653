"""`qlung-edge eval-stream`: what the deployed pipeline gives a clinician, measured on annotated recordings.

Each recording is streamed through the daemon's signal path (`streaming.SignalPath`: file blocks, resampler,
windows, quality, gate) and the daemon's backend, and each window is scored against the annotated events it
overlaps: a window is 'crackle' if any overlapped event has crackles, 'wheeze' if any has wheezes, 'both' if
both occur, 'normal' if it overlaps only normal events, and is not scored if it overlaps none. Gated windows
are classified too, in the shadows, only so that the report can say what the Score would have been had
nothing been gated.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from firmware_bridge.sources import FileSource
from qlung_edge import CLASS_NAMES
from qlung_edge.bundle import BundleError, load_bundle
from qlung_edge.daemon import DaemonConfig, backend_for
from qlung_edge.events import VerdictEvent, WindowStatus
from qlung_edge.examination import TASK_2_1, TASK_2_2, Examination, Verdict, VerdictRule, task_2_1
from qlung_edge.reporter import EventReporter, quality_threshold
from qlung_edge.streaming import Decision, ExamBoundary, SignalPath
from qlung_edge.windows import window_label


def _scores(truth: list[int], predicted: list[int]) -> dict[str, float]:
    from training.metrics import confusion_matrix, icbhi_scores

    if not truth:
        return {"specificity": float("nan"), "sensitivity": float("nan"), "score": float("nan"), "windows": 0}
    scores = icbhi_scores(confusion_matrix(np.array(truth), np.array(predicted), len(CLASS_NAMES)))
    return {"specificity": scores.specificity, "sensitivity": scores.sensitivity, "score": scores.score,
            "windows": len(truth)}  # fmt: skip


def eval_stream(
    bundle_path: Path,
    data: Path,
    split: str | None = "test",
    config: DaemonConfig | None = None,
    limit: int | None = None,
    progress: bool = True,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Stream every recording of a split through the signal path and the backend; window-level ICBHI figures,
    the record-level verdict of each recording (the bundle's rule, as the daemon gives it when a recording's
    examination ends) scored as SPRSound scores Tasks 2-1 and 2-2, and confusion PNGs in `out_dir`."""
    from training.datasets import scan_folder
    from training.metrics import plot_confusion_matrix, record_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_folder(data)
    recordings = [r for r in scan.recordings_in(split) if r.audio_path is not None]
    if limit:
        recordings = recordings[:limit]
    config = config or DaemonConfig()
    bundle = load_bundle(bundle_path)
    backend = backend_for(bundle, config)
    hop = config.hop_seconds or float(bundle.manifest["hop_seconds"])
    thresholds = bundle.quality_config()
    reporter = EventReporter(bundle, "eval-stream")
    """The daemon's own rules for the learned gate, the examination and its verdict; one per recording here."""
    threshold = reporter.threshold
    record_poor: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    """Every window, scored or not: what a gate threshold would have done (windows.csv)."""
    counts = {"windows": 0, "classified": 0, "gated": 0, "dropped": 0}
    gated_reasons: dict[str, int] = {}
    poor = {"windows": 0, "gated": 0}
    good = {"windows": 0, "gated": 0}
    good_refused: list[tuple[str, bool]] = []
    """(patient, refused) for each window of a record not labelled poor: refusals come a patient at a time."""
    verdicts: list[dict[str, Any]] = []
    split_recordings = 0
    try:
        for record in tqdm(recordings, desc="eval-stream", unit="rec", disable=not progress):
            path = SignalPath(bundle.window_samples, round(hop * bundle.sample_rate), thresholds, config.gate,
                              rate=bundle.sample_rate, exams=config.exams, frontend=backend.frontend)  # fmt: skip
            source = FileSource(name=f"file:{record.audio_path}", path=Path(str(record.audio_path)))
            outputs = list(path.feed(source.blocks()))
            decisions = [d for d in outputs if isinstance(d, Decision)]
            split_recordings += sum(isinstance(b, ExamBoundary) and b.start for b in outputs) > 1
            reporter.boundary(ExamBoundary(True, 0.0, "the recording"))
            out = backend.run_all(np.stack([backend.input_of(d.window) for d in decisions])) if decisions else {}
            probabilities = out.get("probabilities", [])
            estimates = out.get("poor", [None] * len(decisions))
            if "poor" in out:
                record_poor[record.id] = float(np.mean(out["poor"]))
            bucket = poor if record.record_label == "Poor Quality" else good
            for decision, p, estimate in zip(decisions, probabilities, estimates):
                status = WindowStatus.CLASSIFIED if decision.accepted else WindowStatus.GATED
                outcome = reporter.window(decision, status, p if decision.accepted else None, estimate)
                reasons = outcome.reasons
                accepted_window = outcome.status is WindowStatus.CLASSIFIED
                counts["windows"] += 1
                counts["classified" if accepted_window else "gated"] += 1
                bucket["windows"] += 1
                bucket["gated"] += not accepted_window
                if bucket is good:
                    good_refused.append((record.patient, not accepted_window))
                for reason in reasons:
                    gated_reasons[reason] = gated_reasons.get(reason, 0) + 1
                window = decision.window
                label = window_label(record.cycles, window.start, window.end, unlabelled=record.unlabelled)
                table.append(
                    {
                        "recording": record.id,
                        "record_label": record.record_label or "",
                        "start": round(window.start, 3),
                        "truth": "" if label is None else label,
                        "predicted": int(np.argmax(p)),
                        **{f"p_{name}": round(float(q), 5) for name, q in zip(CLASS_NAMES, p)},
                        "status": outcome.status.value,
                        "reasons": " ".join(reasons),
                        "aqs": round(window.report.aqs, 4),
                        "rms_dbfs": round(window.report.rms_dbfs, 2),
                        "entropy": round(window.report.entropy, 4),
                        "poor": "" if estimate is None else round(float(estimate), 4),
                        "poor_pooled": ""
                        if outcome.event is None or outcome.event.poor is None
                        else outcome.event.poor,  # what the gate judged
                    }
                )
                if label is None:
                    continue
                rows.append(
                    {
                        "recording": record.id,
                        "start": window.start,
                        "truth": label,
                        "predicted": int(np.argmax(p)),
                        "accepted": accepted_window,
                        "aqs": window.report.aqs,
                        "poor": None if estimate is None else float(estimate),
                        "confidence": float(np.max(p)),
                    }
                )
            end = max((d.window.end for d in decisions), default=0.0)
            verdict = reporter.boundary(ExamBoundary(False, end, "the recording ended"))[0]
            assert isinstance(verdict, VerdictEvent)
            verdicts.append({"recording": record.id, "truth": record.record_label, "task_2_2": verdict.task_2_2,
                             "task_2_1": verdict.task_2_1, "reason": verdict.reason})  # fmt: skip
    finally:
        backend.close()
    accepted = [r for r in rows if r["accepted"]]
    report: dict[str, Any] = {
        "bundle": str(bundle_path),
        "data": str(data),
        "split": split,
        "recordings": len(recordings),
        "windows": counts,
        "coverage": counts["classified"] / counts["windows"] if counts["windows"] else float("nan"),
        "scored_windows": len(rows),
        "scored_coverage": len(accepted) / len(rows) if rows else float("nan"),
        "accepted": _scores([r["truth"] for r in accepted], [r["predicted"] for r in accepted]),
        "ungated": _scores([r["truth"] for r in rows], [r["predicted"] for r in rows]),
        "gated_by_reason": gated_reasons,
        "poor_quality_records": {
            **poor,
            "gated_fraction": poor["gated"] / poor["windows"] if poor["windows"] else None,
        },
        "other_records": {
            **good,
            "gated_fraction": good["gated"] / good["windows"] if good["windows"] else None,
            "gated_fraction_patients_95": _patient_interval(good_refused),
        },
        "offline_cycle_level": _offline(bundle.manifest),
        "offline_records": bundle.manifest.get("metrics", {}).get("test_records"),
        "hop_seconds": hop,
        "window_seconds": bundle.window_samples / bundle.sample_rate,
        "verdict_rule": reporter.rule.to_dict(),
        "recordings_with_several_examinations": split_recordings,
    }
    labelled = [v for v in verdicts if v["truth"]]
    if labelled:
        truth22 = [v["truth"] for v in labelled]
        report["records"] = {
            "task_2_1": record_scores(
                [task_2_1(t) for t in truth22], [v["task_2_1"] for v in labelled], TASK_2_1
            ).as_dict(),
            "task_2_2": record_scores(truth22, [v["task_2_2"] for v in labelled], TASK_2_2).as_dict(),
        }
    report["verdicts"] = verdicts
    report["risk_coverage"] = risk_coverage(rows)
    report["risk_coverage_confidence"] = risk_coverage(rows, by_confidence=True)
    labels = {r.id: r.record_label == "Poor Quality" for r in recordings}
    if record_poor and 0 < sum(labels[k] for k in record_poor) < len(record_poor):
        from training.metrics import auroc
        from training.quality_model import bootstrap_auroc

        ids = sorted(record_poor)
        scores = np.array([record_poor[k] for k in ids])
        positives = np.array([labels[k] for k in ids])
        low, high = bootstrap_auroc(scores, positives)
        report["quality_estimate"] = {"record_auroc": auroc(scores, positives), "record_auroc_95": [low, high],
                                      "records": len(ids), "poor_records": int(positives.sum()),
                                      "threshold": threshold}  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_risk_coverage(report["risk_coverage"], out_dir / "risk_coverage.png", report["risk_coverage_confidence"])
        for task, scores in report.get("records", {}).items():
            title = f"eval-stream, records, {task.replace('_', ' ')}"
            png = out_dir / f"records_{task}.png"
            plot_confusion_matrix(np.array(scores["confusion"]), png, classes=scores["labels"], title=title)
        write_report(report, out_dir / "eval_stream.json")
        _write_table(table, out_dir / "windows.csv")
    return report


def _patient_interval(refused: list[tuple[str, bool]]) -> list[float] | None:
    """The central 95 % of the refused share over resamples of the patients: how far another group of patients
    of this size could be expected to move it."""
    if not refused:
        return None
    from training.metrics import patient_interval

    patients, flags = zip(*refused)
    return patient_interval(np.array(flags), list(patients))


def _write_table(table: list[dict[str, Any]], path: Path) -> None:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["recording"])
        writer.writeheader()
        writer.writerows(table)


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of an eval-stream windows.csv."""
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def verdicts_from_table(table: list[dict[str, str]], rule: VerdictRule) -> dict[str, Verdict]:
    """Each recording's verdict under `rule`, from windows.csv (its accepted windows' probabilities, its gated
    windows' first reasons): another rule judged on the same stream without streaming it again."""
    probabilities = [f"p_{name}" for name in CLASS_NAMES]
    if table and probabilities[0] not in table[0]:
        raise ValueError("this windows.csv has no class probabilities (written by an older eval-stream)")
    exams: dict[str, Examination] = {}
    for row in table:
        exam = exams.setdefault(row["recording"], Examination(row["recording"], 0.0))
        if row["status"] == WindowStatus.CLASSIFIED.value:
            exam.add((), np.array([float(row[k]) for k in probabilities]))
        else:
            exam.add(tuple(row["reasons"].split()) or (row["status"],), None)
    return {rec: exam.verdict(rule, CLASS_NAMES) for rec, exam in exams.items()}


COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


CONFIDENCE = "classifier confidence"


def risk_coverage(rows: list[dict[str, Any]], by_confidence: bool = False) -> list[dict[str, Any]]:
    """ICBHI Score of the scored windows kept when the gate keeps only the best share of them by quality: the
    learned estimate (lowest P(poor) first) where the bundle has one, else AQS (highest first). With
    `by_confidence`, by the classifier's top class probability instead (highest first): the reference a quality
    gate is read against, since the windows a classifier is unsure of are those it gets wrong most often."""
    if not rows:
        return []
    learned = all(r.get("poor") is not None for r in rows)
    if by_confidence:
        by, key = CONFIDENCE, (lambda r: -r["confidence"])
    else:
        by, key = ("P(poor)", lambda r: r["poor"]) if learned else ("AQS", lambda r: -r["aqs"])
    order = sorted(rows, key=key)
    out = []
    for coverage in COVERAGES:
        kept = order[: max(1, int(round(coverage * len(order))))]
        scores = _scores([r["truth"] for r in kept], [r["predicted"] for r in kept])
        out.append({"coverage": coverage, "by": by, **scores})
    return out


def scored_rows(table: list[dict[str, str]]) -> list[dict[str, Any]]:
    """windows.csv's scored windows (those overlapping annotated events) as `risk_coverage` takes them: a curve
    drawn again, or by another ranking, without streaming again."""
    probabilities = [f"p_{name}" for name in CLASS_NAMES]
    rows = []
    for row in table:
        if row["truth"] == "":
            continue
        rows.append({"truth": int(row["truth"]), "predicted": int(row["predicted"]), "aqs": float(row["aqs"]),
                     "accepted": row["status"] == WindowStatus.CLASSIFIED.value,
                     "poor": float(row["poor"]) if row["poor"] != "" else None,
                     "confidence": max(float(row[k]) for k in probabilities)})  # fmt: skip
    return rows


def plot_risk_coverage(rows: list[dict[str, Any]], path: Path, reference: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot([100 * r["coverage"] for r in rows], [100 * r["score"] for r in rows], marker="o",
            label=f"kept by {rows[0]['by']}")  # fmt: skip
    if reference:
        ax.plot([100 * r["coverage"] for r in reference], [100 * r["score"] for r in reference], marker="s",
                linestyle="--", label=f"kept by {reference[0]['by']} (reference)")  # fmt: skip
        ax.legend()
    ax.set_xlabel("coverage (% of scored windows kept, best first)")
    ax.set_ylabel("ICBHI Score of kept windows (%)")
    ax.set_title("risk-coverage of the quality gate")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _offline(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's offline cycle-level test figures: one prediction per annotated event, no gate."""
    metrics = manifest.get("metrics", {})
    return metrics.get("test_cycles") or metrics.get("test")


def format_report(report: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{100 * x:.2f}"

    w = report["windows"]
    lines = [
        f"{report['recordings']} recordings ({report['split']} split), hop {report['hop_seconds']} s: "
        f"{w['windows']} windows, {w['classified']} classified, {w['gated']} gated, {w['dropped']} dropped",
        f"coverage {pct(report['coverage'])} % of windows; {report['scored_windows']} windows overlap annotated "
        f"events, {pct(report['scored_coverage'])} % of those accepted",
    ]
    for name, key in (("accepted windows", "accepted"), ("had nothing been gated", "ungated")):
        s = report[key]
        lines.append(
            f"  {name:<24} Sp {pct(s['specificity'])}  Se {pct(s['sensitivity'])}  Score {pct(s['score'])}"
            f"  ({s['windows']} windows)"
        )
    offline = report.get("offline_cycle_level")
    if offline:
        lines.append(
            f"  {'offline, cycle level':<24} Sp {pct(offline['specificity'])}  Se {pct(offline['sensitivity'])}"
            f"  Score {pct(offline['score'])}  (from the bundle's manifest)"
        )
    lines.append("gated by reason: " + (", ".join(f"{k} {v}" for k, v in report["gated_by_reason"].items()) or "none"))
    p, o = report["poor_quality_records"], report["other_records"]
    spread = o.get("gated_fraction_patients_95")
    lines.append(
        f"'Poor Quality' records: {p['gated']}/{p['windows']} windows gated; other records: {o['gated']}/{o['windows']}"
        + (f" ({pct(o['gated_fraction'])} %; central 95 % over patient resamples: {pct(spread[0])}-{pct(spread[1])} %)"
           if spread else "")
    )  # fmt: skip
    records = report.get("records")
    if records:
        rule = report["verdict_rule"]
        lines.append(
            f"record level (the bundle's verdict rule: {rule['statistic']} evidence, DAS >= {rule['das_threshold']},"
            f" CAS >= {rule['cas_threshold']}; calibrated on {rule['calibrated_on']}):"
        )
        for task, name in (("task_2_1", "Task 2-1"), ("task_2_2", "Task 2-2")):
            r = records[task]
            lines.append(
                f"  {name}  SE {pct(r['sensitivity'])}  SP {pct(r['specificity'])}  AS {pct(r['average'])}"
                f"  HS {pct(r['harmonic'])}  Score {pct(r['score'])}  ({r['records']} records;"
                f" SE without Poor Quality {pct(r['sensitivity_without_poor_quality'])})"
            )
        estimate = report.get("quality_estimate")
        if estimate:
            low, high = estimate["record_auroc_95"]
            lines.append(
                f"quality estimate vs 'Poor Quality' records: AUROC {estimate['record_auroc']:.3f}"
                f" (95 % bootstrap interval {low:.3f}-{high:.3f}; {estimate['poor_records']} of {estimate['records']})"
            )
        offline = report.get("offline_records")
        if offline:
            lines.append(
                "  offline (every window, learned gate only, no AQS reasons; from the manifest): "
                + ", ".join(f"{k.replace('_', ' ')} Score {pct(v['score'])}" for k, v in offline.items())
            )
    for curve in (report.get("risk_coverage") or [], report.get("risk_coverage_confidence") or []):
        if curve:
            lines.append(f"risk-coverage (scored windows kept, best first by {curve[0]['by']}):")
            lines += [f"  {100 * r['coverage']:5.0f} %  Score {pct(r['score'])}  ({r['windows']} windows)"
                      for r in curve]  # fmt: skip
    return lines


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))


def quality_estimates(bundle_path: Path, recordings: list[Any], progress: bool = True) -> dict[str, np.ndarray]:
    """The bundle's P(poor) for every window the daemon would cut from each recording (AQS gate aside)."""
    bundle = load_bundle(bundle_path)
    if quality_threshold(bundle) is None:
        raise BundleError("has no learned quality estimate (no `poor` output)", path=bundle.path)
    backend = backend_for(bundle, DaemonConfig())
    hop = round(float(bundle.manifest["hop_seconds"]) * bundle.sample_rate)
    out: dict[str, np.ndarray] = {}
    try:
        for record in tqdm(recordings, desc="quality estimate", unit="rec", disable=not progress):
            path = SignalPath(bundle.window_samples, hop, bundle.quality_config(), rate=bundle.sample_rate,
                              frontend=backend.frontend)  # fmt: skip
            source = FileSource(name=f"file:{record.audio_path}", path=Path(str(record.audio_path)))
            windows = [backend.input_of(d.window) for d in path.feed(source.blocks()) if isinstance(d, Decision)]
            if windows:
                out[record.id] = backend.run_all(np.stack(windows))["poor"]
    finally:
        backend.close()
    return out

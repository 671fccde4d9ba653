"""`qlung-edge eval`: a checkpoint on any ICBHI- or SPRSound-layout folder, in or out of distribution.

Besides Sp, Se and Score (overall, per class, per device), the quality view: how the Score of the cycles
the gate would keep changes as the AQS threshold rises (risk-coverage), and how well AQS flags SPRSound's
"Poor Quality" records.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.errors import QLungError
from training.checkpoint import load_model
from training.dataset import ExampleDataset, Geometry, prepare
from training.engine import cycle_metrics, predict, resolve_device
from training.metrics import confusion_matrix, format_scores, icbhi_scores, plot_confusion_matrix


def risk_coverage(
    labels: np.ndarray, predictions: np.ndarray, aqs: np.ndarray, thresholds: list[float]
) -> list[dict[str, Any]]:
    """Score of the cycles kept (AQS >= t) and of those dropped, for each threshold t."""
    rows = []
    for t in thresholds:
        kept = aqs >= t
        row: dict[str, Any] = {"threshold": t, "coverage": float(kept.mean()), "kept": int(kept.sum())}
        for name, mask in (("kept", kept), ("dropped", ~kept)):
            row[f"score_{name}"] = (
                icbhi_scores(confusion_matrix(labels[mask], predictions[mask])).score if mask.any() else float("nan")
            )
        rows.append(row)
    return rows


def plot_risk_coverage(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    coverage = [r["coverage"] for r in rows]
    ax.plot(coverage, [100 * r["score_kept"] for r in rows], marker="o", label="Score of kept cycles")
    for r in rows:
        ax.annotate(
            f"{r['threshold']:.2f}",
            (r["coverage"], 100 * r["score_kept"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("coverage (share of cycles the gate keeps)")
    ax.set_ylabel("ICBHI Score (%)")
    ax.set_title(title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    dataset: str = "auto",
    split: str = "test",
    out_dir: str | Path | None = None,
    cache_dir: str = ".cache/qlung",
    device: str = "auto",
    thresholds: list[float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from training.datasets import scan_folder
    from training.quality_report import score_recordings, separation

    model, config, _ = load_model(checkpoint)
    torch_device = resolve_device(device)
    model.to(torch_device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_folder(data, dataset, progress=progress)
    cycles = scan.cycles(None if split == "all" else split)
    if not cycles:
        raise QLungError(
            f"{data}: no usable cycles in split {split!r} (splits here: {', '.join(scan.splits()) or 'none'})"
        )
    geometry = Geometry("cycle", config.data.window_seconds, config.data.hop_seconds)
    prepared = prepare(
        cycles, scan.recordings, cache_dir, config.quality, geometry, progress=progress, desc=f"prepare {split}"
    )
    probabilities = predict(model, ExampleDataset(prepared), torch_device, 32)
    metrics = cycle_metrics(cycles, probabilities)
    labels, predictions = prepared.labels, probabilities.argmax(axis=1)
    thresholds = thresholds or [0.0, *np.round(np.quantile(prepared.aqs, [0.1, 0.2, 0.3, 0.5]), 3).tolist()]
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "dataset": scan.dataset,
        "split": split,
        "trained_on": config.data.dataset,
        "metrics": metrics,
        "risk_coverage": risk_coverage(labels, predictions, prepared.aqs, thresholds),
    }
    recordings = [r for r in scan.recordings if split == "all" or r.split == split]
    if any(r.record_label == "Poor Quality" for r in recordings):
        result["poor_quality"] = separation(score_recordings(recordings, config.quality, progress=progress))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=1))
        plot_confusion_matrix(
            np.array(metrics["confusion"]), out / "confusion_matrix.png", title=f"{scan.dataset} {split}"
        )
        plot_risk_coverage(result["risk_coverage"], out / "risk_coverage.png", f"{scan.dataset} {split}: gating by AQS")
    return result


def format_result(result: dict[str, Any]) -> str:
    m = result["metrics"]
    lines = [
        f"{result['dataset']} {result['split']} ({m['cycles']} cycles), model trained on {result['trained_on']}:",
        f"  {format_scores(m)}   (2-class Se {100 * m['sensitivity_2class']:.2f}, Score {100 * m['score_2class']:.2f})",
        "  recall: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in m["recall"].items()),
        "  per device:",
    ]
    lines += [f"    {d:<14} {format_scores(s)}  ({s['cycles']} cycles)" for d, s in m["per_device"].items()]
    lines.append("  risk-coverage by AQS:  threshold  coverage  Score kept  Score dropped")
    for r in result["risk_coverage"]:
        cells = f"{r['threshold']:>9.3f}{100 * r['coverage']:>9.1f}%"
        lines.append(f"{'':24}{cells}{100 * r['score_kept']:>11.2f}{100 * r['score_dropped']:>14.2f}")
    pq = result.get("poor_quality")
    if pq:
        auc = pq["auroc"]["1 - AQS"]
        lines.append(
            f"  AUROC of 1 - AQS for 'Poor Quality' records: {auc:.3f} ({pq['poor_quality']} of {pq['records']})"
        )
    return "\n".join(lines)

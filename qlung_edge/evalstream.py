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
from qlung_edge.bundle import load_bundle
from qlung_edge.daemon import DaemonConfig, backend_for
from qlung_edge.streaming import SignalPath


def window_label(cycles: list[Any], start: float, end: float, min_overlap: float = 0.05) -> int | None:
    """Class index of a window from the annotated events it overlaps by at least `min_overlap` seconds."""
    labels = {c.label for c in cycles if min(end, c.end) - max(start, c.start) >= min_overlap}
    if not labels:
        return None
    names = {CLASS_NAMES[i] for i in labels}
    crackle = bool(names & {"crackle", "both"})
    wheeze = bool(names & {"wheeze", "both"})
    return CLASS_NAMES.index(
        "both" if crackle and wheeze else "crackle" if crackle else "wheeze" if wheeze else "normal"
    )


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
) -> dict[str, Any]:
    from training.datasets import scan_folder

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
    rows: list[dict[str, Any]] = []
    counts = {"windows": 0, "classified": 0, "gated": 0, "dropped": 0}
    gated_reasons: dict[str, int] = {}
    poor = {"windows": 0, "gated": 0}
    good = {"windows": 0, "gated": 0}
    try:
        for record in tqdm(recordings, desc="eval-stream", unit="rec", disable=not progress):
            path = SignalPath(bundle.window_samples, round(hop * bundle.sample_rate), thresholds, config.gate,
                              rate=bundle.sample_rate)  # fmt: skip
            source = FileSource(name=f"file:{record.audio_path}", path=Path(str(record.audio_path)))
            decisions = list(path.feed(source.blocks()))
            if not decisions:
                continue
            probabilities = backend.run(np.stack([d.window.samples for d in decisions]))
            bucket = poor if record.record_label == "Poor Quality" else good
            for decision, p in zip(decisions, probabilities):
                counts["windows"] += 1
                counts["classified" if decision.accepted else "gated"] += 1
                bucket["windows"] += 1
                bucket["gated"] += not decision.accepted
                for reason in decision.reasons:
                    gated_reasons[reason] = gated_reasons.get(reason, 0) + 1
                window = decision.window
                label = window_label(record.cycles, window.start, window.end)
                if label is None:
                    continue
                rows.append(
                    {
                        "recording": record.id,
                        "start": window.start,
                        "truth": label,
                        "predicted": int(np.argmax(p)),
                        "accepted": decision.accepted,
                        "aqs": window.report.aqs,
                    }
                )
    finally:
        backend.close()
    accepted = [r for r in rows if r["accepted"]]
    return {
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
        "other_records": {**good, "gated_fraction": good["gated"] / good["windows"] if good["windows"] else None},
        "offline_cycle_level": bundle.manifest.get("metrics", {}).get("test"),
        "hop_seconds": hop,
    }


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
    lines.append(
        f"'Poor Quality' records: {p['gated']}/{p['windows']} windows gated; other records: {o['gated']}/{o['windows']}"
    )
    return lines


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))

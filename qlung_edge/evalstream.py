"""`qlung-edge eval-stream`: what the deployed pipeline gives a clinician, measured on annotated recordings.

Each recording is streamed through the daemon itself (file source, resampler, windows, gate, backend), and
each window is scored against the annotated events it overlaps: a window is 'crackle' if any overlapped event
has crackles, 'wheeze' if any has wheezes, 'both' if both occur, 'normal' if it overlaps only normal events,
and is not scored if it overlaps none. Gated windows are classified too, in the shadows, only so that the
report can say what the Score would have been had nothing been gated.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge import CLASS_NAMES
from qlung_edge.daemon import Daemon, DaemonConfig, _default_backend
from qlung_edge.sinks import Sink


@dataclass
class CollectSink(Sink):
    events: list[dict[str, Any]] = field(default_factory=list)
    name: str = "collect"

    def send(self, event: dict[str, Any]) -> None:
        self.events.append(event)


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
    bundle: Path,
    data: Path,
    split: str | None = "test",
    config: DaemonConfig | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from firmware_bridge.sources import FileSource
    from qlung_edge.bundle import load_bundle
    from training.summary import scan_folder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_folder(data)
    recordings = [r for r in scan.recordings_in(split) if r.audio_path is not None]
    if limit:
        recordings = recordings[:limit]
    base = replace(config or DaemonConfig(), bundle=bundle, source="file:-", sinks=[], classify_gated=True)
    backend = _default_backend(load_bundle(bundle), base)
    backend.close = lambda: None  # type: ignore[method-assign]  # shared by every recording's daemon
    rows: list[dict[str, Any]] = []
    counts = {"windows": 0, "classified": 0, "gated": 0, "dropped": 0}
    gated_reasons: dict[str, int] = {}
    poor = {"windows": 0, "gated": 0}
    good = {"windows": 0, "gated": 0}
    for record in tqdm(recordings, desc="eval-stream", unit="rec", disable=not progress):
        sink = CollectSink()
        source = FileSource(name=f"file:{record.audio_path}", path=Path(str(record.audio_path)))
        daemon = Daemon(base, source=source, sinks=[sink], backend_factory=lambda b, c: backend)
        daemon.run()
        is_poor = record.record_label == "Poor Quality"
        for event in sink.events:
            if event["type"] != "window":
                continue
            status = event["status"]
            counts["windows"] += 1
            counts[status] += 1
            bucket = poor if is_poor else good
            bucket["windows"] += 1
            bucket["gated"] += status == "gated"
            for reason in event.get("reasons", []):
                gated_reasons[reason] = gated_reasons.get(reason, 0) + 1
            window = event["window"]
            label = window_label(record.cycles, window["start"], window["end"])
            prediction = event.get("prediction")
            if label is None or prediction is None:
                continue
            rows.append(
                {
                    "recording": record.id,
                    "start": window["start"],
                    "truth": label,
                    "predicted": CLASS_NAMES.index(prediction["label"]),
                    "accepted": status == "classified",
                    "aqs": event["quality"]["aqs"],
                }
            )
    accepted = [r for r in rows if r["accepted"]]
    report = {
        "bundle": str(bundle),
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
        "offline_cycle_level": load_bundle(bundle).manifest.get("metrics", {}).get("test"),
        "hop_seconds": base.hop_seconds or load_bundle(bundle).manifest["hop_seconds"],
    }
    return report


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

"""What a scanned data set holds: counts per split, class, device and record label."""

from __future__ import annotations

from collections import Counter
from typing import Any

from qlung_edge import CLASS_NAMES
from training.records import DatasetScan


def _class_counts(labels: list[int]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}


def summarize(scan: DatasetScan) -> dict[str, Any]:
    """A JSON-ready summary of a scan."""
    recs = scan.recordings
    splits = [*scan.splits(), *([None] if any(r.split is None for r in recs) else [])]
    per_split = {}
    for split in splits:
        these = [r for r in recs if r.split == split]
        cycles = [c for r in these for c in r.cycles]
        per_split[split or "unassigned"] = {
            "recordings": len(these),
            "patients": len({r.patient for r in these}),
            "cycles": len(cycles),
            "classes": _class_counts([c.label for c in cycles]),
            "record_labels": dict(sorted(Counter(r.record_label for r in these if r.record_label).items())),
        }
    per_device = {}
    for device in sorted({r.device for r in recs}):
        these = [r for r in recs if r.device == device]
        per_device[device] = {
            "recordings": len(these),
            "cycles": sum(len(r.cycles) for r in these),
            "sample_rates": sorted({r.sample_rate for r in these if r.sample_rate is not None}),
        }
    all_cycles = scan.cycles()
    audio_seconds = [r.duration for r in recs if r.duration is not None]
    labels = Counter(r.record_label for r in recs if r.record_label is not None)
    return {
        "dataset": scan.dataset,
        "root": str(scan.root),
        "with_audio": bool(audio_seconds),
        "recordings": len(recs),
        "patients": len({r.patient for r in recs}),
        "cycles": len(all_cycles),
        "classes": _class_counts([c.label for c in all_cycles]),
        "splits": per_split,
        "devices": per_device,
        "record_labels": dict(sorted(labels.items())),
        "audio_hours": round(sum(audio_seconds) / 3600.0, 3) if audio_seconds else None,
        "cycle_hours": round(sum(c.duration for c in all_cycles) / 3600.0, 3),
        "mean_cycle_seconds": round(sum(c.duration for c in all_cycles) / max(len(all_cycles), 1), 3),
        "problems": [str(p) for p in scan.problems],
    }


def format_summary(summary: dict[str, Any], max_problems: int = 10) -> str:
    """The summary as a few aligned tables for a terminal."""
    names = list(CLASS_NAMES)
    audio = f"{summary['audio_hours']:.2f} h of audio" if summary["with_audio"] else "annotations only"
    lines = [
        f"{summary['dataset'].upper()} at {summary['root']} ({audio})",
        f"  {summary['recordings']} recordings, {summary['patients']} patients, {summary['cycles']} cycles"
        f" ({summary['cycle_hours']:.2f} h, {summary['mean_cycle_seconds']:.2f} s on average)",
        "",
        "  " + f"{'split':<12}{'recs':>6}{'patients':>10}{'cycles':>8}" + "".join(f"{n:>9}" for n in names),
    ]
    rows = [*summary["splits"].items(), ("all", summary)]
    for split, s in rows:
        lines.append(
            "  "
            + f"{split:<12}{s['recordings']:>6}{s['patients']:>10}{s['cycles']:>8}"
            + "".join(f"{s['classes'][n]:>9}" for n in names)
        )
    lines += ["", "  " + f"{'device':<14}{'recs':>6}{'cycles':>8}  sample rates (Hz)"]
    for device, d in summary["devices"].items():
        rates = ", ".join(str(r) for r in d["sample_rates"]) or "-"
        lines.append("  " + f"{device:<14}{d['recordings']:>6}{d['cycles']:>8}  {rates}")
    if summary["record_labels"]:
        lines += ["", "  record labels: " + ", ".join(f"{k} {v}" for k, v in summary["record_labels"].items())]
        for split, d in summary["splits"].items():  # the mix differs between splits: say it per split
            total = sum(d["record_labels"].values())
            if total:
                shares = ", ".join(f"{k} {v} ({100 * v / total:.1f} %)" for k, v in d["record_labels"].items())
                lines.append(f"    {split}: {shares}")
    problems = summary["problems"]
    lines += ["", f"  problems: {len(problems)}" + (" (nothing skipped)" if not problems else "")]
    lines += [f"    {p}" for p in problems[:max_problems]]
    if len(problems) > max_problems:
        lines.append(f"    ... and {len(problems) - max_problems} more (see --json)")
    return "\n".join(lines)

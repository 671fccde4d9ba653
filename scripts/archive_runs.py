"""Keep the figures of trained runs in the repository, so that seeds trained in different sessions add up.

runs/ and bundles/ are build outputs (checkpoints, engines: megabytes per seed) and do not outlive the machine
that trained them. scripts/results.py needs only each seed's small reports, which this copies into the
repository (windows.csv gzipped):

    python scripts/archive_runs.py runs/qlung-edge-sprsound-windows-event-mix ... --to seed-reports

giving seed-reports/RECIPE/seed<k>/{summary.json, config.yaml, verdict_transfer.json, gate_transfer.json,
window_decision.json, window_smoothing.json, window_rules.json, window_gap.json, step_detector.json, event_context.json,
event_removal.json, event_edges.json, event_segments.json, crop_scan.json, label_overlap.json, metrics.csv,
eval-stream/eval_stream.json,
eval-stream/windows.csv.gz}, and likewise any other eval-stream-* folder (the same seed under another gate).
A seed already archived is replaced. A seed without an eval-stream report is left
out, with a line saying so.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

FILES = (
    "summary.json",
    "config.yaml",
    "verdict_transfer.json",
    "gate_transfer.json",
    "window_decision.json",
    "window_smoothing.json",
    "window_rules.json",
    "window_gap.json",
    "step_detector.json",
    "event_context.json",
    "event_removal.json",
    "event_edges.json",
    "event_segments.json",
    "crop_scan.json",
    "label_overlap.json",
    "metrics.csv",
)


def archive_seed(seed_dir: Path, to: Path) -> Path:
    """Copy one seed's reports into `to`/RECIPE/seed<k> and return that folder."""
    if not (seed_dir / "eval-stream" / "eval_stream.json").is_file():
        raise FileNotFoundError(f"{seed_dir}: no eval-stream/eval_stream.json (run qlung-edge eval-stream first)")
    target = to / seed_dir.parent.name / seed_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in FILES:
        if (seed_dir / name).is_file():
            shutil.copyfile(seed_dir / name, target / name)
    for stream in sorted(seed_dir.glob("eval-stream*/eval_stream.json")):  # eval-stream-later: another gate's
        (target / stream.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(stream, target / stream.parent.name / stream.name)
        table = stream.parent / "windows.csv"
        if table.is_file():
            with table.open("rb") as src, gzip.GzipFile(target / stream.parent.name / "windows.csv.gz", "wb",
                                                        mtime=0) as dst:  # fmt: skip
                shutil.copyfileobj(src, dst)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="+", type=Path, help="run folders holding seed<k>/ (runs/RECIPE)")
    parser.add_argument("--to", type=Path, default=Path("seed-reports"))
    args = parser.parse_args()
    for group in args.groups:
        seeds = sorted(p for p in group.glob("seed*") if p.name[4:].isdigit())
        if not seeds:
            print(f"{group}: no seed<k> folders", file=sys.stderr)
            return 1
        for seed_dir in seeds:
            try:
                print(f"{seed_dir} -> {archive_seed(seed_dir, args.to)}")
            except FileNotFoundError as e:
                print(f"skipped: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

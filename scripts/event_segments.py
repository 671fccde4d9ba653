"""Would a learned event segmenter bring the window level to the cycle level?

`train`: trains `training.segmenter.EventSegmenter` on the daemon's 4 s windows (1 s hop) of a recipe's training
patients (recordings with no annotated event left out), the epoch chosen on its validation patients; writes
OUT/segmenter.pt and OUT/segmenter.json.

`measure`: for each RUN (a window recipe's run, trained on the same patients), every recording of the validation and
of the test patients is segmented (windows' frame probabilities averaged where they overlap, runs of frames above
the threshold); each segment is classified as the run's best.pt classifies an annotated cycle (cut, faded, repeated
to fill its input) and each labelled window's class composed from the calls of the segments it overlaps by the
window rule (`qlung_edge.windows.window_label`; a window no segment overlaps is normal). Its Score sits next to the
run's own window calls, the cycle level, and the window level composed from the annotated events' cycle-level calls
(the same with perfect edges). The decoding (threshold, shortest segment, shortest gap filled; `DECODINGS`) is the
one with the best onset F1 on the validation patients.
Writes RUN/event_segments.json, prints a line per group of patients.

Usage: python scripts/event_segments.py train [--recipe NAME] --seed N --out DIR [--data SPRSOUND]
       python scripts/event_segments.py measure --segmenter DIR RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOW = 4.0
"""The segmenter's window (s): the deployed window; the classifier's may differ."""
HOP = 1.0
DECODINGS = [(t, e, g) for t in (0.3, 0.5, 0.7) for e in (0.1, 0.3, 0.5) for g in (0.0, 0.1, 0.3)]
"""(threshold, shortest segment s, shortest gap s) tried on the validation patients; the test patients get the one
chosen there."""


def _all_windows(recordings: list[Any], geometry: Any) -> list[Any]:
    from training.dataset import recording_windows

    return [w for r in recordings if r.audio_path is not None for w in recording_windows(r, geometry)]


def train(args: argparse.Namespace) -> None:
    from training.config import load_recipe
    from training.dataset import Geometry
    from training.engine import load_splits
    from training.segmenter import SegmenterConfig, activity_targets, train_segmenter
    from training.verdicts import preparer

    config = load_recipe(args.recipe, [f"data.root={args.data}"] if args.data else [])
    splits = load_splits(config)
    prepare = preparer(config, splits)
    geometry = Geometry("window", WINDOW, HOP)
    parts = {}
    for split in ("train", "validation"):
        recordings = splits.recordings[split]
        by_id = {r.id: r for r in recordings}
        # A recording with no annotated event (a poor-quality one, mostly) says nothing about where events are.
        windows = _all_windows([r for r in recordings if r.cycles or r.unlabelled], geometry)
        inputs = prepare(windows, geometry, f"{split} windows").inputs
        targets = np.stack([activity_targets(by_id[w.recording], w.start, WINDOW) for w in windows])
        parts[split] = (inputs, targets)
        print(f"{split}: {len(windows)} windows, {targets.mean():.3f} of frames inside an event", flush=True)
    seg_config = SegmenterConfig(seed=args.seed, epochs=args.epochs, dilations=tuple(args.dilations))
    trained = train_segmenter(*parts["train"], *parts["validation"], seg_config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained.save(out / "segmenter.pt")
    patients = {split: sorted({r.patient for r in splits.recordings[split]}) for split in ("train", "validation")}
    (out / "segmenter.json").write_text(json.dumps({
        "recipe": args.recipe, "seed": args.seed, "window_seconds": WINDOW, "hop_seconds": HOP,
        "config": asdict(seg_config), "best_epoch": trained.best_epoch, "history": trained.history,
        "patients": patients,
    }, indent=1))  # fmt: skip
    print(f"wrote {out / 'segmenter.pt'} (best epoch {trained.best_epoch})")


def measure(segmenter_dir: Path, run: Path) -> dict[str, Any]:
    from run_reports import scorer
    from window_gap import composed_calls

    from training.dataset import Geometry
    from training.engine import examples_of, geometry_of, load_trained
    from training.segmenter import (
        SECONDS_PER_FRAME,
        TrainedSegmenter,
        called_segments,
        recording_frame_truth,
        segment_scores,
        segments_from,
    )  # fmt: skip
    from training.verdicts import preparer
    from training.window_decision import window_score

    seg = TrainedSegmenter.load(segmenter_dir / "segmenter.pt")
    seg_meta = json.loads((segmenter_dir / "segmenter.json").read_text())
    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    if splits.selection != "validation":
        raise SystemExit(f"{run}: its recipe selects on the test set; the decoding would be chosen on test patients")
    taught = set(seg_meta["patients"]["train"])
    for split in ("validation", "test"):
        shared = taught & {r.patient for r in splits.recordings[split]}
        if shared:
            raise SystemExit(f"{run}: the segmenter was trained on {len(shared)} of its {split} patients")
    if set(seg_meta["patients"]["validation"]) != {r.patient for r in splits.recordings["validation"]}:
        raise SystemExit(f"{run}: the segmenter chose its epoch on other validation patients than the run's")
    prepare = preparer(config, splits, progress=False)
    probabilities = scorer(model, prepare)
    seg_geometry = Geometry("window", WINDOW, HOP)
    result: dict[str, Any] = {"run": str(run), "segmenter": str(segmenter_dir), "best_epoch": seg.best_epoch}
    tracks: dict[str, Any] = {}
    for split in ("validation", "test"):
        recordings = [r for r in splits.recordings[split] if r.audio_path is not None]
        by_id = {r.id: r for r in recordings}
        windows = _all_windows(recordings, seg_geometry)
        tracks[split] = called_segments(seg.model, prepare(windows, seg_geometry, f"{split} seg").inputs, windows,
                                        by_id, WINDOW)  # fmt: skip

    def decoded(split: str, decoding: tuple[float, float, float]) -> tuple[dict[str, Any], Any]:
        by_id = {r.id: r for r in splits.recordings[split]}
        ids = sorted(tracks[split])
        segments = {i: segments_from(tracks[split][i], *decoding) for i in ids}
        # Onsets past the last window's end (the tail shorter than a hop, which the daemon never hears) are left out.
        heard = {i: len(tracks[split][i]) * SECONDS_PER_FRAME for i in ids}
        onsets = [sorted(t for t in [c.start for c in by_id[i].cycles] + [s for s, _ in by_id[i].unlabelled]
                         if t < heard[i]) for i in ids]  # fmt: skip
        truth = [recording_frame_truth(by_id[i], len(tracks[split][i])) for i in ids]
        scores = segment_scores(truth, [tracks[split][i] for i in ids], [segments[i] for i in ids], onsets,
                                decoding[0])  # fmt: skip
        return segments, scores

    chosen = max(DECODINGS, key=lambda d: decoded("validation", d)[1].onset_f1)
    result["decoding"] = dict(zip(("threshold", "min_event_seconds", "min_gap_seconds"), chosen))
    for split in ("validation", "test"):
        recordings = splits.recordings[split]
        by_id = {r.id: r for r in recordings}
        segments, scores = decoded(split, chosen)
        window_geometry, cycle_geometry = geometry_of(config, "window"), geometry_of(config, "cycle")
        windows = examples_of(recordings, window_geometry)
        cycles = examples_of(recordings, cycle_geometry)
        pieces = [by_id[i].cycle(s.start, s.end, 0, f"{i}@segment{k}") for i in sorted(segments)
                  for k, s in enumerate(segments[i])]  # fmt: skip

        def calls(examples: list[Any], geometry: Any, name: str) -> np.ndarray:
            return probabilities(examples, geometry, name).argmax(axis=1)

        truth = np.array([w.label for w in windows])
        own = calls(windows, window_geometry, f"{split} windows")
        cycle_calls = calls(cycles, cycle_geometry, f"{split} cycles")
        piece_calls = calls(pieces, cycle_geometry, f"{split} segments")
        # A labelled window overlaps no left-out span, so composing by the window rule as window_gap does is the
        # same; a window no segment overlaps (-1 there) heard nothing: normal.
        learned = np.maximum(composed_calls(windows, pieces, piece_calls, recordings), 0)
        oracle = composed_calls(windows, cycles, cycle_calls, recordings)
        cycle_level = window_score(np.array([c.label for c in cycles]), cycle_calls)
        result[split] = {
            "windows": len(windows), "segments": len(pieces), "segmentation": asdict(scores),
            "cycle_score": cycle_level,
            "window_score": window_score(truth, own),
            "composed_annotated_score": window_score(truth, oracle),
            "composed_segmented_score": window_score(truth, learned),
            "composed_segmented_gap": window_score(truth, learned) - cycle_level,
            "window_gap": window_score(truth, own) - cycle_level,
            "segmented_recall": [float(np.mean(learned[truth == k] == k)) if np.any(truth == k) else None
                                 for k in range(4)],
            "segmented_abnormal_share": float(np.mean(learned > 0)),
        }  # fmt: skip
    return result


def describe(result: dict[str, Any]) -> list[str]:
    lines = [f"decoding {result['decoding']} (best onset F1 on the validation patients)"]
    for split in ("validation", "test"):
        r = result[split]
        s = r["segmentation"]
        lines.append(
            f"{split}: frame F1 {100 * s['frame_f1']:.1f}, onset F1 {100 * s['onset_f1']:.1f} "
            f"({s['segments']} segments for {s['events']} events); Score: cycle {100 * r['cycle_score']:.2f}, "
            f"window {100 * r['window_score']:.2f}, composed from annotated events "
            f"{100 * r['composed_annotated_score']:.2f}, from segments {100 * r['composed_segmented_score']:.2f} "
            f"(gap {100 * r['composed_segmented_gap']:+.2f}, window gap {100 * r['window_gap']:+.2f})"
        )
    return lines


def main() -> None:
    from training.segmenter import SegmenterConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--recipe", default="ce-edge-sprsound-windows-event-mix-fine-time")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=SegmenterConfig.epochs)
    t.add_argument("--dilations", type=int, nargs="+", default=list(SegmenterConfig.dilations))
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--data", help="the SPRSound folder, in place of the recipe's data.root")
    m = sub.add_parser("measure")
    m.add_argument("--segmenter", type=Path, required=True)
    m.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
        return
    for run in args.runs:
        result = measure(args.segmenter, run)
        (run / "event_segments.json").write_text(json.dumps(result, indent=1))
        print("\n  ".join([f"{run}:", *describe(result)]), flush=True)


if __name__ == "__main__":
    main()

"""Do rules fixed in advance close the gap between the window level and the offline cycle level?

The offline cycle level scores each annotated event cut at its annotated edges and repeated to fill the input;
the daemon scores 4 s of continuous breathing, where a half-second wheeze is a small part of the input, and the
test patients hold several times the validation patients' share of wheezes. Two rules that need no fitting:
- prior: logit adjustment, log p minus strength x log of the training class shares
  (`training.window_decision.prior_offsets`), which aims at the mean recall over classes, not the training mix
  (the shares of the training examples' own labels: event mixing relabels some of them as it trains, so the mix
  the model saw has more abnormal examples than these shares);
- segments: the window's probabilities combined with those of its 1 s or 2 s stretches, half a stretch apart,
  each scored alone and repeat-padded as a cycle is (`segment_starts`, `with_segments`): what the cycle level
  sees, without its annotated edges.
Every labelled window of the validation and of the test patients is scored offline with the run's best.pt (no
gate); nothing is fitted, so the test figures are not tuned. Writes RUN/window_rules.json, prints a line per run.
The first run prepares the stretches' log-mel into the recipe's cache (some minutes); later runs reuse it.
Usage: python scripts/window_rules.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import report_runs, window_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRENGTHS = (0.5, 1.0)
SEGMENT_SECONDS = (1.0, 2.0)
RULES = ("mean", "most abnormal")


def _span(start: float, end: float, offset: float, seconds: float) -> tuple[float, float]:
    """A segment of the window [start, end]; in a window cut short by its recording's end, the segments that
    would start past it end with it instead."""
    stop = min(start + offset + seconds, end)
    return min(start + offset, max(start, stop - seconds)), stop


def measure(run: Path) -> dict[str, Any]:
    import torch

    from training.dataset import ExampleDataset, recording_windows
    from training.engine import geometry_of, load_trained, predict
    from training.verdicts import preparer
    from training.window_decision import decide, prior_offsets, segment_starts, with_segments

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    window_geometry, cycle_geometry = geometry_of(config, "window"), geometry_of(config, "cycle")
    prepare = preparer(config, splits, progress=True)
    prior = np.bincount([example.label for example in splits.train], minlength=4).astype(float)
    result: dict[str, Any] = {"run": str(run), "training_class_counts": prior.tolist()}
    for split in ("validation", "test"):
        recordings = {r.id: r for r in splits.recordings[split] if r.audio_path is not None}
        windows = [w for r in recordings.values() for w in recording_windows(r, window_geometry) if w.label >= 0]
        truth = np.array([w.label for w in windows])
        window_p = predict(model, ExampleDataset(prepare(windows, window_geometry, f"{split} windows")),
                           torch.device("cpu"), 64)  # fmt: skip
        figures: dict[str, Any] = {"windows": len(windows), "plain": window_figures(truth, window_p.argmax(axis=1))}
        for strength in STRENGTHS:
            figures[f"prior x {strength:g}"] = window_figures(truth, decide(window_p, prior_offsets(prior, strength)))
        for seconds in SEGMENT_SECONDS:
            starts = segment_starts(window_geometry.seconds, seconds)
            spans = [[_span(w.start, w.end, s, seconds) for s in starts] for w in windows]
            distinct = np.array([[span not in row[:k] for k, span in enumerate(row)] for row in spans])
            segments = [recordings[w.recording].cycle(*span, w.label, f"{w.source}+{span[0]:g}s")
                        for w, row in zip(windows, spans) for span in row]  # fmt: skip
            segment_p = predict(model, ExampleDataset(prepare(segments, cycle_geometry, f"{split} {seconds:g} s")),
                                torch.device("cpu"), 64).reshape(len(windows), len(starts), -1)  # fmt: skip
            for rule in RULES:
                combined = with_segments(window_p, segment_p, rule, distinct)
                figures[f"{seconds:g} s segments, {rule}"] = window_figures(truth, combined.argmax(axis=1))
        result[split] = figures
    return result


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        plain = r[split]["plain"]["score"]
        gains = ", ".join(f"{k} {100 * (v['score'] - plain):+.2f}" for k, v in r[split].items()
                          if k not in ("plain", "windows"))  # fmt: skip
        lines.append(f"{split} plain {100 * plain:.2f}; {gains}")
    return lines


def main() -> None:
    report_runs(__doc__, "window_rules.json", measure, _describe)


if __name__ == "__main__":
    main()

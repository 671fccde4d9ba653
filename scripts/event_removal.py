"""Does the window model call a window's class from its crackles and wheezes, or from what surrounds them?

Every abnormal window of the training, validation and test patients with at least a second outside its events is
scored with the run's best.pt as it is and with those events (and 0.1 s either side) replaced by the rest of the
window (`training.augment.remove_events`, as `train.event_removal` trains), from the training caches' log-mel. A
model that answers from the events calls such a window normal once they are gone, as often as it calls the same
patients' normal windows normal; one that answers from the surroundings calls it as before. Three controls tell
what it answers from: the same removal with 0.5 s either side of each event (the annotated edges too tight?);
normal windows cut and filled the same way where a random abnormal window of the same patients has its events
(does the splicing itself sound abnormal?); and the normal windows of recordings that hold crackles or wheezes
elsewhere, by how far they lie from the nearest one (the recording rather than the window?). Writes
RUN/event_removal.json, prints a line per group of patients.
Usage: python scripts/event_removal.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from run_reports import own_and_abnormal, report_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from qlung_edge.windows import Span

SPLITS = ("train", "validation", "test")
SEED = 0
"""Draw of where in the rest of each window its replacement starts."""
BATCH = 64
WIDE_MARGIN_FRAMES = 50
"""The wider margin either side of each event (frames of 10 ms) of the second removal."""
DISTANCE_BINS = (1.0, 2.0, 4.0)
"""Upper ends (s) of the gaps between a normal window and the nearest crackle or wheeze of its recording; farther
ones make a bin of their own, and so do the windows of recordings without any."""


def distance_to_events(events: Sequence[Span], start: float, end: float) -> float:
    """Seconds between [start, end) and the nearest crackle or wheeze event (0 where one overlaps it; infinite
    where the recording has none)."""
    gaps = [max(e.start - end, start - e.end, 0.0) for e in events if e.label > 0]
    return min(gaps, default=float("inf"))


def abnormal_by_distance(predicted: np.ndarray, distance: np.ndarray) -> dict[str, dict[str, Any]]:
    """Share of normal windows called abnormal per bin of their distance to the nearest crackle or wheeze, keyed
    by the bin's upper end, "farther" beyond the last, "none" for recordings without any."""
    bins, low = {}, -1.0
    for high in (*DISTANCE_BINS, np.inf):
        held = (distance > low) & (distance <= high) & np.isfinite(distance)
        bins["farther" if high == np.inf else f"{high:g}"] = {
            "windows": int(held.sum()),
            "abnormal": _share(predicted, held),
        }
        low = high
    none = ~np.isfinite(distance)
    bins["none"] = {"windows": int(none.sum()), "abnormal": _share(predicted, none)}
    return bins


def _judged(truth: np.ndarray, before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> dict[str, Any] | None:
    """The windows `mask` picks, called as they are (`before`) and after a removal (`after`)."""
    if not mask.any():
        return None
    return {"as_is": own_and_abnormal(truth[mask], before[mask]), "removed": own_and_abnormal(truth[mask], after[mask])}


def _share(predicted: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the windows `mask` picks called abnormal."""
    return float(np.mean(predicted[mask] > 0)) if mask.any() else None


def measure(run: Path) -> dict[str, Any]:
    import torch

    from training.augment import EventRemovalConfig, remove_events
    from training.engine import examples_of, geometry_of, load_trained
    from training.timing import example_targets
    from training.verdicts import preparer

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    if not config.train.cache_features:
        raise SystemExit(f"{run}: event removal works on cached log-mel; this run trained on waveforms")
    model.eval()
    removals = {
        "removed": EventRemovalConfig(probability=1.0),
        "wide": EventRemovalConfig(probability=1.0, margin_frames=WIDE_MARGIN_FRAMES),
        "sham": EventRemovalConfig(probability=1.0),
    }
    geometry = geometry_of(config, "window")
    prepare = preparer(config, splits, progress=True)
    result: dict[str, Any] = {"run": str(run), "margin_frames": removals["removed"].margin_frames,
                              "min_normal_fraction": removals["removed"].min_normal_fraction}  # fmt: skip

    @torch.no_grad()
    def call(x: torch.Tensor) -> np.ndarray:
        return model(x)["probabilities"].argmax(dim=1).numpy()

    for split in SPLITS:
        examples = examples_of(splits.recordings[split], geometry)
        prepared = prepare(examples, geometry, f"{split} windows")
        targets = example_targets(examples, splits.scan.recordings, "window", geometry.seconds)
        truth = np.asarray(prepared.labels, np.int64)
        abnormal_rows = np.flatnonzero(truth > 0)
        rng = np.random.default_rng(SEED)
        torch.manual_seed(SEED)
        calls: dict[str, list[np.ndarray]] = {k: [] for k in ("as_is", *removals)}
        changed: dict[str, list[np.ndarray]] = {k: [] for k in removals}
        for first in range(0, len(examples), BATCH):
            rows = np.arange(first, min(first + BATCH, len(examples)))
            x = torch.from_numpy(np.asarray(prepared.inputs[first : rows[-1] + 1], np.float32))
            calls["as_is"].append(call(x))
            for key, removal in removals.items():
                if key == "sham":  # normal windows, cut where an abnormal window of these patients has its events
                    labels = np.where(truth[rows] == 0, 1, -1)
                    drawn = rng.choice(abnormal_rows, len(rows)) if len(abnormal_rows) else rows
                    frames = targets[drawn] if len(abnormal_rows) else np.zeros_like(targets[rows])
                else:
                    labels, frames = truth[rows], targets[rows]
                out, relabelled, _ = remove_events(x, torch.from_numpy(labels), torch.from_numpy(frames), removal)
                calls[key].append(call(out))
                changed[key].append((labels > 0) & (relabelled.numpy() == 0))
        predicted = {k: np.concatenate(v) for k, v in calls.items()}
        chosen = {k: np.concatenate(v) for k, v in changed.items()}
        normal = truth == 0
        events = {r.id: r.cycles for r in splits.recordings[split]}
        distance = np.array([distance_to_events(events[e.recording], e.start, e.end) for e in examples])
        beside = normal & np.isfinite(distance)

        removed, wide, sham = (_judged(truth, predicted["as_is"], predicted[k], chosen[k]) for k in removals)
        result[split] = {
            "windows": int(chosen["removed"].sum()),
            "abnormal_windows": int(len(abnormal_rows)),
            "normal_windows": int(normal.sum()),
            "as_is": removed and removed["as_is"],
            "removed": removed and removed["removed"],
            "normal_called_abnormal": _share(predicted["as_is"], normal),
            "wide_margin": {"margin_frames": WIDE_MARGIN_FRAMES, "windows": int(chosen["wide"].sum()), **(wide or {})},
            "sham": {"windows": int(chosen["sham"].sum()), **(sham or {})},
            "normal_windows_of_recordings_with_events": int(beside.sum()),
            "normal_of_recordings_with_events_called_abnormal": _share(predicted["as_is"], beside),
            "normal_of_other_recordings_called_abnormal": _share(predicted["as_is"], normal & ~beside),
            "normal_by_distance": abnormal_by_distance(predicted["as_is"][normal], distance[normal]),
        }
    return result


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in SPLITS:
        g = r[split]
        if g["as_is"] is None:
            lines.append(f"{split}: no abnormal window with a second outside its events")
            continue
        lines.append(f"{split}: {g['windows']} of {g['abnormal_windows']} abnormal windows called abnormal "
                     f"{_percent(g['as_is']['abnormal'])} as they are, {_percent(g['removed']['abnormal'])} with "
                     f"their events removed; normal windows called abnormal "
                     f"{_percent(g['normal_called_abnormal'])}")  # fmt: skip
        for key, text in (("wide_margin", "with 0.5 s either side removed too"),
                          ("sham", "normal windows cut where abnormal windows have their events")):  # fmt: skip
            w = g[key]
            if "as_is" in w:
                lines.append(f"  {text}: {w['windows']} windows called abnormal {_percent(w['as_is']['abnormal'])} "
                             f"as they are, {_percent(w['removed']['abnormal'])} after")  # fmt: skip
        beside, others = (
            g["normal_of_recordings_with_events_called_abnormal"],
            g["normal_of_other_recordings_called_abnormal"],
        )
        lines.append(f"  normal windows called abnormal: {_percent(beside)} of the "
                     f"{g['normal_windows_of_recordings_with_events']} in recordings with crackles or wheezes "
                     f"elsewhere, {_percent(others)} of the others")  # fmt: skip
        names = {"farther": "farther", "none": "none in the recording"}
        near = ", ".join(f"{names.get(k, f'up to {k} s')} {_percent(b['abnormal'])} ({b['windows']})"
                         for k, b in g["normal_by_distance"].items())  # fmt: skip
        lines.append(f"  normal windows called abnormal by distance to the nearest crackle or wheeze: {near}")
    return lines


def main() -> None:
    report_runs(__doc__, "event_removal.json", measure, _describe)


if __name__ == "__main__":
    main()

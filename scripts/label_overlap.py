"""Is part of the window–cycle gap windows labelled by a sliver of an event?

The window rule (`qlung_edge.windows.window_label`) counts an event that overlaps a window by 0.05 s. A crackle
annotated over a second need not have a single crackle in such a sliver, so a window called normal there may be
right and scored wrong. Here each accepted window of a run's eval-stream is labelled again with an event counted
only where it overlaps the window by K seconds or by half its own length (a short wheeze wholly inside still
counts), for K in `SECONDS`; a window left with no counted event drops out, as windows with no event do. The calls
are the stream's own (nothing is trained or streamed again): RUN/eval-stream/windows.csv, or the .gz copy
`scripts/archive_runs.py` keeps, and the annotations of the data folder the stream read. Writes
RUN/label_overlap.json, prints a line per rule.
Usage: python scripts/label_overlap.py RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from run_reports import report_runs, window_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from training.records import Recording

SECONDS = (0.25, 0.5, 1.0)
"""The overlaps (s) an event needs to count for a window's label, unless it fills half its own length there."""


def counted(spans: Sequence[tuple[float, float]], start: float, end: float, seconds: float) -> list[int]:
    """Indices of the spans that overlap [start, end) by `seconds` or by half their own length, whichever is less,
    and never by less than the window rule asks (so every rule here is at least as strict as it)."""
    from qlung_edge.windows import MIN_OVERLAP_SECONDS

    return [
        i
        for i, (s, e) in enumerate(spans)
        if min(end, e) - max(start, s) >= max(MIN_OVERLAP_SECONDS, min(seconds, 0.5 * (e - s)))
    ]


def strict_label(recording: Recording, start: float, end: float, seconds: float) -> int | None:
    """The window rule over the events (and left-out spans) that `counted` keeps."""
    from qlung_edge.windows import window_label

    events = [recording.cycles[i] for i in counted([(c.start, c.end) for c in recording.cycles], start, end, seconds)]
    left_out = [recording.unlabelled[i] for i in counted(recording.unlabelled, start, end, seconds)]
    return window_label(events, start, end, min_overlap=0.0, unlabelled=left_out)


def window_end(recording: Recording, start: float, window_seconds: float) -> float:
    """Where a window of eval-stream's table ends: a recording shorter than one window is one window, padded, that
    ends with the audio (`qlung_edge.streaming`)."""
    end = start + window_seconds
    return end if recording.duration is None else min(end, recording.duration)


@cache
def _recordings(data: str) -> dict[str, Recording]:
    """The recordings as eval-stream read them: with their audio, so that events are clipped to it."""
    from training.sprsound import scan_sprsound

    return {r.id: r for r in scan_sprsound(data, progress=False).recordings}


def measure(run: Path) -> dict[str, Any]:
    from results import windows_table

    stream = json.loads((run / "eval-stream" / "eval_stream.json").read_text())
    table = windows_table(run / "eval-stream")
    if table is None:
        raise SystemExit(f"{run}: no eval-stream/windows.csv (or .gz) to label again")
    recordings = _recordings(stream["data"])
    accepted = [row for row in table if row["status"] == "classified"]
    scored = [row for row in accepted if row["truth"] != ""]
    out: dict[str, Any] = {
        "window_seconds": stream["window_seconds"],
        "window_rule": {
            **window_figures(
                np.array([int(r["truth"]) for r in scored]), np.array([int(r["predicted"]) for r in scored])
            ),
            "windows": len(scored),
        },
    }
    for seconds in SECONDS:
        truth, predicted = [], []
        for row in accepted:
            start, recording = float(row["start"]), recordings[row["recording"]]
            label = strict_label(recording, start, window_end(recording, start, stream["window_seconds"]), seconds)
            if label is not None:
                truth.append(label)
                predicted.append(int(row["predicted"]))
        figures = window_figures(np.array(truth), np.array(predicted))
        out[f"{seconds:g}"] = {**figures, "windows": len(truth),
                               "gain": figures["score"] - out["window_rule"]["score"]}  # fmt: skip
    return out


def describe(result: dict[str, Any]) -> list[str]:
    rule = result["window_rule"]
    lines = [f"window rule (0.05 s): Score {100 * rule['score']:.2f} over {rule['windows']} accepted windows"]
    for seconds in SECONDS:
        r = result[f"{seconds:g}"]
        lines.append(
            f"events counted from {seconds:g} s or half their length: Score {100 * r['score']:.2f} over "
            f"{r['windows']} windows ({100 * r['gain']:+.2f})"
        )
    return lines


if __name__ == "__main__":
    report_runs(__doc__, "label_overlap.json", measure, describe)

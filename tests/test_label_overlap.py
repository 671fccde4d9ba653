"""scripts/label_overlap.py: which events a stricter overlap rule counts, and the stream's windows labelled again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_an_event_counts_from_the_overlap_asked_or_half_its_own_length(scripts_importable: Path) -> None:
    from label_overlap import counted

    spans = [
        (1.9, 3.0),  # 0.1 s of a 1.1 s event: a sliver, left out
        (1.5, 1.7),  # a 0.2 s wheeze wholly inside: counts though shorter than 0.5 s
        (-1.0, 0.6),  # 0.6 s inside: counts
        (2.0, 3.0),  # touches the window's end: left out
        (1.875, 2.125),  # exactly half of a 0.25 s event inside: counts
        (1.7, 2.6),  # 0.3 s of 0.9 s: under both 0.5 s and half its length, left out
        (1.0, 1.06),  # a 0.06 s event wholly inside: counts
        (1.96, 2.04),  # half of a 0.08 s event, 0.04 s: under the window rule's 0.05 s, so never counted
    ]
    assert counted(spans, 0.0, 2.0, 0.5) == [1, 2, 4, 6]
    assert counted(spans, 0.0, 2.0, 0.05) == [0, 1, 2, 4, 5, 6]


def test_a_sliver_of_a_crackle_no_longer_makes_a_window_a_crackle_window(scripts_importable: Path) -> None:
    from label_overlap import strict_label

    from qlung_edge import CLASS_NAMES
    from qlung_edge.windows import window_label
    from training.records import Cycle, Recording

    def cycle(start: float, end: float, name: str) -> Cycle:
        return Cycle("r", "p", "d", start, end, CLASS_NAMES.index(name))

    recording = Recording("r", "sprsound", "p", "d", "Tc", Path("r.json"))
    recording.cycles = [cycle(0.0, 1.5, "normal"), cycle(1.8, 3.0, "crackle")]
    assert window_label(recording.cycles, 0.0, 2.0) == CLASS_NAMES.index("crackle")
    assert strict_label(recording, 0.0, 2.0, 0.5) == CLASS_NAMES.index("normal")
    assert strict_label(recording, 1.0, 3.0, 0.5) == CLASS_NAMES.index("crackle")
    # A left-out kind (a rhonchus) overlapping by a sliver no longer leaves the window out.
    recording.unlabelled = [(1.9, 3.0)]
    assert window_label(recording.cycles, 0.0, 2.0, unlabelled=recording.unlabelled) is None
    assert strict_label(recording, 0.0, 2.0, 0.5) == CLASS_NAMES.index("normal")


def test_the_stream_s_own_windows_and_calls_are_labelled_again(
    tmp_path: Path, shared_data: Path, scripts_importable: Path
) -> None:
    from label_overlap import SECONDS, measure

    kept = Path(__file__).resolve().parents[1] / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time-2s"
    run = tmp_path / "seed0"
    shutil.copytree(kept / "seed0" / "eval-stream", run / "eval-stream")
    stream = json.loads((run / "eval-stream" / "eval_stream.json").read_text())
    stream["data"] = str(shared_data / "sprsound")
    (run / "eval-stream" / "eval_stream.json").write_text(json.dumps(stream))
    result = measure(run)
    # At the window rule's own 0.05 s the labels are the stream's: the same recordings, events clipped to the
    # audio, padded windows ending with it.
    from label_overlap import _recordings, strict_label, window_end
    from results import windows_table

    from qlung_edge.windows import MIN_OVERLAP_SECONDS

    recordings = _recordings(stream["data"])
    accepted = [row for row in windows_table(run / "eval-stream") if row["status"] == "classified"]
    assert len(accepted) > 2000
    for row in accepted:
        recording, start = recordings[row["recording"]], float(row["start"])
        end = window_end(recording, start, stream["window_seconds"])
        label = strict_label(recording, start, end, MIN_OVERLAP_SECONDS)
        assert ("" if label is None else str(label)) == row["truth"], row
    # The window rule over the table's accepted windows is the stream's own figure.
    assert result["window_rule"]["score"] == pytest.approx(stream["accepted"]["score"], abs=1e-9)
    counts = [result["window_rule"]["windows"], *(result[f"{s:g}"]["windows"] for s in SECONDS)]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    for seconds in SECONDS:
        r = result[f"{seconds:g}"]
        assert r["gain"] == pytest.approx(r["score"] - result["window_rule"]["score"])

"""The event segmenter: targets from the annotated spans, decoding frames to segments, the scores, and a network
that learns event edges it can hear and exports to ONNX."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.records import Recording
from training.segmenter import (
    EventSegmenter,
    Segment,
    SegmenterConfig,
    TrainedSegmenter,
    activity_targets,
    onset_matches,
    recording_frame_truth,
    segment_scores,
    segments_from,
    stitch,
    train_segmenter,
)
from training.timing import frame_centres

SMALL = SegmenterConfig(mels=16, channels=8, dilations=(1, 2), epochs=4, batch_size=16, lr=1e-2, freq_mask=2)


def _recording(duration: float, events: list[tuple[float, float]], unlabelled: list[tuple[float, float]]) -> Recording:
    recording = Recording("r", "sprsound", "p", "d", "p1", Path("r.json"), duration=duration)
    recording.cycles = [recording.cycle(s, e, 0, f"r@{s}") for s, e in events]
    recording.unlabelled = unlabelled
    return recording


def test_activity_targets_mark_every_annotated_event_including_left_out_kinds() -> None:
    recording = _recording(10.0, [(1.0, 2.0), (2.5, 3.0)], [(3.5, 3.7)])
    targets = activity_targets(recording, 0.0, 4.0)
    times = frame_centres(0.0, len(targets))
    expected = ((times >= 1) & (times < 2)) | ((times >= 2.5) & (times < 3)) | ((times >= 3.5) & (times < 3.7))
    np.testing.assert_array_equal(targets, expected.astype(np.float32))
    assert targets.sum() == pytest.approx(170, abs=2)  # 1.7 s of 10 ms frames
    # The last window is moved back to end with the recording, as the daemon cuts it: 6-10 s holds no event.
    assert activity_targets(recording, 8.0, 4.0).sum() == 0
    # A 2 s recording in a 4 s window is repeated, and so is its event.
    short = activity_targets(_recording(2.0, [(0.5, 1.0)], []), 0.0, 4.0)
    assert short[:200].sum() == short[200:].sum() == pytest.approx(50, abs=1)
    np.testing.assert_array_equal(recording_frame_truth(recording, len(targets)), targets)


def test_segments_from_fills_short_gaps_then_drops_short_runs() -> None:
    p = np.zeros(100)
    p[10:40] = 0.9  # 0.3 s
    p[42:60] = 0.8  # 2 frames later: one event with a 20 ms dip, or two
    p[70:75] = 0.7  # 50 ms: too short for an event
    p[80:92] = 0.4  # under the threshold
    two = segments_from(p, threshold=0.5, min_event_seconds=0.1, min_gap_seconds=0.0)
    assert [(s.start, s.end) for s in two] == [(0.1075, 0.4075), (0.4275, 0.6075)]  # frame 10's centre is 0.1125 s
    one = segments_from(p, threshold=0.5, min_event_seconds=0.1, min_gap_seconds=0.05)
    assert [(s.start, s.end) for s in one] == [(0.1075, 0.6075)]
    assert len(segments_from(p, threshold=0.3, min_event_seconds=0.1)) == 3  # 80-90 is in at a lower threshold
    assert len(segments_from(p, threshold=0.5, min_event_seconds=0.04)) == 3  # and 70-75 with no floor
    assert segments_from(np.zeros(5)) == []
    assert segments_from(np.ones(50))[0] == Segment(0.0, 0.5075)
    # A run of exactly the shortest length is kept wherever it lies (lengths are compared in whole frames).
    for first in range(0, 200, 7):
        q = np.zeros(300)
        q[first : first + 50] = 1
        assert len(segments_from(q, min_event_seconds=0.5)) == 1, first
        assert segments_from(q, min_event_seconds=0.51) == []
        q[first + 50 : first + 60] = 0
        q[first + 60 : first + 70] = 1  # a 10-frame gap: filled at 0.1 s, not at 0.09 s
        assert len(segments_from(q, min_event_seconds=0.05, min_gap_seconds=0.1)) == 2
        assert len(segments_from(q, min_event_seconds=0.05, min_gap_seconds=0.11)) == 1


def test_stitch_averages_overlapping_windows_and_refuses_uncovered_frames() -> None:
    a, b = np.full(4, 0.2), np.full(4, 0.6)
    np.testing.assert_allclose(stitch(np.stack([a, b]), [0, 2], 6), [0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    np.testing.assert_allclose(stitch(np.stack([a]), [0], 3), [0.2, 0.2, 0.2])  # a repeated short recording
    # The tail the last window does not reach (shorter than a hop: the daemon does not cut it) is dropped.
    np.testing.assert_allclose(stitch(np.stack([a, b]), [0, 2], 8), [0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    with pytest.raises(ValueError, match="2 of 10 frames before the last window's end lie in no window"):
        stitch(np.stack([a, b]), [0, 6], 10)


class _FirstBand(torch.nn.Module):
    """A stand-in segmenter whose logit for a frame is that frame's first band: what it says is known exactly."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, :, 0]


def test_called_segments_lay_each_window_where_it_lies_in_its_recording() -> None:
    from qlung_edge import MODEL_SAMPLE_RATE, frames_in
    from training.dataset import Geometry, recording_windows
    from training.segmenter import called_segments

    geometry = Geometry("window", 4.0, 1.0)
    long, short = _recording(6.5, [], []), _recording(2.0, [], [])
    short.id = "s"
    frames = frames_in(geometry.samples)
    windows = recording_windows(long, geometry) + recording_windows(short, geometry)
    assert [w.start for w in windows] == [0.0, 1.0, 2.0, 0.0]  # the last 0.5 s of the long one: no window
    # Each frame's logit is its own index in its recording, so the stitched track must count 0, 1, 2, ...
    inputs = np.zeros((len(windows), frames, 4), np.float32)
    for row, w in enumerate(windows):
        first = int(round(w.start * MODEL_SAMPLE_RATE)) // 160
        inputs[row, :, 0] = (first + np.arange(frames)) / 1000.0
    tracks = called_segments(_FirstBand(), inputs, windows, {"r": long, "s": short}, 4.0)
    expected_long = 1 / (1 + np.exp(-np.arange(frames + 200) / 1000.0))  # up to the end of the window at 2 s
    np.testing.assert_allclose(tracks["r"], expected_long, rtol=1e-6)
    assert len(tracks["s"]) == frames_in(2 * MODEL_SAMPLE_RATE)  # the repeated part is dropped
    np.testing.assert_allclose(tracks["s"], expected_long[: len(tracks["s"])], rtol=1e-6)


def test_onsets_match_once_within_the_collar() -> None:
    assert onset_matches([1.0, 1.1, 3.0], [1.05, 2.5], collar=0.2) == 1  # two detections near one onset: one hit
    assert onset_matches([1.0, 2.35], [1.05, 2.5], collar=0.2) == 2
    assert onset_matches([1.0, 2.25], [1.05, 2.5], collar=0.2) == 1
    assert onset_matches([], [1.0], collar=0.2) == 0


def test_segment_scores_pool_frames_and_onsets_over_recordings() -> None:
    truth = [np.array([0, 1, 1, 1, 0]), np.array([1, 1, 0, 0])]
    probabilities = [np.array([0.1, 0.9, 0.9, 0.2, 0.7]), np.array([0.8, 0.1, 0.1, 0.1])]
    segments = [[Segment(0.01, 0.03), Segment(0.5, 0.6)], [Segment(0.0, 0.01)]]
    scores = segment_scores(truth, probabilities, segments, [[0.0], [0.0]], threshold=0.5, collar=0.05)
    assert scores.frame_precision == pytest.approx(3 / 4)
    assert scores.frame_recall == pytest.approx(3 / 5)
    assert scores.frame_f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert (scores.onset_precision, scores.onset_recall) == (pytest.approx(2 / 3), 1.0)
    assert (scores.events, scores.segments) == (2, 3)


def test_the_segmenter_ignores_each_band_s_level_and_exports_to_onnx(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = EventSegmenter(SMALL).eval()
    x = torch.randn(2, 120, 16)
    with torch.no_grad():
        out = model(x)
        shifted = model(x + torch.randn(1, 1, 16) * 3)  # a microphone's colouring: a constant per band
    assert out.shape == (2, 120)
    torch.testing.assert_close(out, shifted, atol=1e-4, rtol=1e-4)
    from export.onnx_export import ExportOptions, export_graph

    path = tmp_path / "segmenter.onnx"  # as the classifier is exported: the opset and IR version the Jetson reads
    export_graph(model, x, "frames", ["logits"], {0: torch.export.Dim("batch", min=1, max=8)}, path,
                 ExportOptions().opset)  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"frames": x.numpy()})
    np.testing.assert_allclose(exported, out.numpy(), atol=1e-4)


def _synthetic(windows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise frames where 'events' raise four mid bands by 3: edges a network can hear."""
    x = rng.normal(size=(windows, 120, 16)).astype(np.float32)
    y = np.zeros((windows, 120), np.float32)
    for row in range(windows):
        for _ in range(2):
            first = int(rng.integers(0, 100))
            y[row, first : first + int(rng.integers(10, 30))] = 1
    x[:, :, 6:10] += 3 * y[:, :, None]
    return x, y


def test_the_segmenter_learns_edges_it_can_hear_and_keeps_its_best_epoch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_x, train_y = _synthetic(160, rng)
    val_x, val_y = _synthetic(32, rng)
    trained = train_segmenter(train_x, train_y, val_x, val_y, SMALL, progress=lambda _: None)
    f1s = [h["validation_frame_f1"] for h in trained.history]
    assert len(f1s) == SMALL.epochs and trained.best_epoch == int(np.argmax(f1s)) + 1
    assert max(f1s) > 0.9
    p = torch.sigmoid(trained.model(torch.from_numpy(val_x))).detach().numpy()
    assert np.mean((p >= 0.5) == (val_y > 0.5)) > 0.9
    # Labels shuffled across windows: nothing to hear, and the F1 shows it.
    shuffled = train_segmenter(train_x, train_y[rng.permutation(160)], val_x, val_y, replace(SMALL, epochs=2),
                               progress=lambda _: None)  # fmt: skip
    assert max(h["validation_frame_f1"] for h in shuffled.history) < 0.75
    trained.save(tmp_path / "segmenter.pt")
    loaded = TrainedSegmenter.load(tmp_path / "segmenter.pt")
    assert loaded.best_epoch == trained.best_epoch and loaded.config == SMALL
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(torch.from_numpy(val_x)), trained.model(torch.from_numpy(val_x)))

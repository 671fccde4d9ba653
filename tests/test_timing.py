"""Event timing: frame targets follow the annotated spans, the detector's loss reads only known steps, and the
detector trains without changing what is exported."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlung_edge import CLASS_NAMES
from qlung_edge.errors import QLungError
from training.augment import EventMixConfig, EventMixer
from training.checkpoint import build_model
from training.config import ConfigError, load_recipe
from training.models import QLungModel
from training.records import Cycle, Recording
from training.timing import (
    UNKNOWN,
    example_targets,
    frame_centres,
    frame_mask,
    lay_events,
    step_targets,
    timing_loss,
    window_targets,
)

NORMAL, CRACKLE, WHEEZE, BOTH = (CLASS_NAMES.index(n) for n in ("normal", "crackle", "wheeze", "both"))


def _recording(
    duration: float, events: list[tuple[float, float, int]], unlabelled: Sequence[tuple[float, float]] = ()
) -> Recording:
    recording = Recording("r", "sprsound", "p", "d", "p1", Path("r.json"), duration=duration)
    recording.cycles = [recording.cycle(s, e, label, f"r@{s}") for s, e, label in events]
    recording.unlabelled = list(unlabelled)
    return recording


def _expected(
    times: np.ndarray, events: list[tuple[float, float, int]], unlabelled: Sequence[tuple[float, float]] = ()
) -> np.ndarray:
    """The targets written out frame by frame, as a reader of the annotation would."""
    out = np.full((len(times), 2), UNKNOWN)
    for i, t in enumerate(times):
        holding = [label for s, e, label in events if s <= t < e]
        if holding and not any(s <= t < e for s, e in unlabelled):
            out[i] = [any(k in (CRACKLE, BOTH) for k in holding), any(k in (WHEEZE, BOTH) for k in holding)]
    return out


def test_window_targets_mark_the_frames_each_event_covers() -> None:
    events = [(0.0, 1.5, NORMAL), (1.5, 2.2, CRACKLE), (2.0, 3.1, WHEEZE), (5.0, 6.0, BOTH)]
    recording = _recording(10.0, events, unlabelled=[(5.5, 5.8)])
    got = window_targets(recording, 1.0, 4.0)
    times = frame_centres(1.0, 398)
    assert got.shape == (398, 2) and got.dtype == np.int8
    assert np.array_equal(got, _expected(times, events, [(5.5, 5.8)]))
    # Where a crackle and a wheeze overlap, both are on; a pause between events is unknown.
    assert (got[(times > 2.05) & (times < 2.15)] == [1, 1]).all()
    assert (got[(times > 3.2) & (times < 4.9)] == UNKNOWN).all()
    # Near the end a window moves back to end with the recording, as the cached frames do.
    assert np.array_equal(window_targets(recording, 8.0, 4.0), window_targets(recording, 6.0, 4.0))


def test_a_recording_shorter_than_the_window_repeats_with_its_events() -> None:
    events = [(0.5, 1.0, WHEEZE), (1.0, 2.5, NORMAL)]
    got = window_targets(_recording(2.5, events), 0.0, 4.0)
    times = frame_centres(0.0, 398)
    assert np.array_equal(got, _expected(times % 2.5, events))
    assert got[(times > 3.05) & (times < 3.45), 1].min() == 1  # the wheeze again, 2.5 s later


def test_a_cycle_is_its_event_throughout() -> None:
    recording = _recording(10.0, [(1.0, 2.0, BOTH)])
    cycle = Cycle("r", "p", "d", 1.0, 2.0, BOTH)
    window = recording.cycle(0.0, 4.0, BOTH, "r@0s")
    cycles = example_targets([cycle], [recording], "cycle", 4.0)
    assert cycles.shape == (1, 398, 2) and (cycles == 1).all()
    windows = example_targets([window], [recording], "window", 4.0)
    assert np.array_equal(windows[0], window_targets(recording, 0.0, 4.0))


def test_laid_events_add_their_sound_where_they_lie() -> None:
    targets = torch.full((3, 10, 2), UNKNOWN, dtype=torch.int8)
    targets[0, :5] = torch.tensor([1, 0], dtype=torch.int8)
    inside = torch.zeros(2, 10, dtype=torch.bool)
    inside[0, 3:7] = True
    inside[1, 0:2] = True
    out = lay_events(targets, torch.tensor([0, 2]), [WHEEZE, CRACKLE], inside)
    assert out[0, 3:5].tolist() == [[1, 1]] * 2  # a crackle with a wheeze laid over it
    assert out[0, 5:7].tolist() == [[UNKNOWN, 1]] * 2  # an unknown frame now holds a wheeze; crackle still unknown
    assert out[0, 7:].eq(UNKNOWN).all() and out[2, :2].tolist() == [[1, UNKNOWN]] * 2
    assert out[1].eq(UNKNOWN).all() and targets[0, 6].eq(UNKNOWN).all()  # the input is left as it was
    # A mask over waveform samples becomes one over frames by each frame's centre sample.
    samples = torch.zeros(1, 16000, dtype=torch.bool)
    samples[0, 8000:] = True
    frames = frame_mask(samples, 98)
    centres = np.arange(98) * 160 + 200
    assert frames.shape == (1, 98) and np.array_equal(frames[0].numpy(), centres >= 8000)


def test_step_targets_and_loss_read_only_known_steps() -> None:
    targets = torch.full((1, 12, 2), UNKNOWN, dtype=torch.int8)
    targets[0, 0:4, 0] = 0
    targets[0, 2, 0] = 1  # one crackle frame makes its step a crackle step
    targets[0, 4:8, 1] = 0
    positive, known = step_targets(targets, 3)
    assert positive.tolist() == [[[1, 0, 0], [0, 0, 0]]]
    assert known.tolist() == [[[1, 0, 0], [0, 1, 0]]]
    logits = torch.tensor([[[2.0, -7.0, 3.0], [0.5, -1.0, 9.0]]])
    expected = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))) / 2  # -log σ(2), -log(1 - σ(-1))
    assert torch.isclose(timing_loss(logits, targets), expected)
    # Nothing known: no loss, no NaN.
    assert timing_loss(logits, torch.full((1, 12, 2), UNKNOWN, dtype=torch.int8)).item() == 0.0


def test_frames_spec_augment_blanked_are_not_trained_on() -> None:
    targets = torch.zeros((2, 12, 2), dtype=torch.int8)
    targets[0, 4:6, 1] = 1  # a wheeze in example 0, frames 4-5
    blanked = torch.zeros((2, 12), dtype=torch.bool)
    blanked[0, 4:8] = True  # the time mask hid it (and two frames after it)
    logits = torch.linspace(-3.0, 3.0, 2 * 2 * 3).reshape(2, 2, 3)
    unheard = targets.clone()
    unheard[0, 4:8] = UNKNOWN
    assert torch.isclose(timing_loss(logits, targets, blanked), timing_loss(logits, unheard))
    positive, _ = step_targets(unheard, 3)
    assert positive.sum() == 0  # no step of either example is still said to hold the hidden wheeze
    assert not torch.isclose(timing_loss(logits, targets, blanked), timing_loss(logits, targets))


def test_the_mixer_says_where_it_laid_each_event() -> None:
    torch.manual_seed(0)
    donors = np.random.default_rng(0).standard_normal((4, 20, 8)).astype(np.float32)
    mixer = EventMixer(donors, np.array([CRACKLE, WHEEZE, CRACKLE, WHEEZE]), EventMixConfig(1.0), features=True)
    inputs, labels = torch.zeros(3, 20, 8), torch.tensor([NORMAL, -1, CRACKLE])
    mixed = mixer.mix(inputs, labels)
    assert mixed.rows.tolist() == [0, 2] and len(mixed.kinds) == 2 and mixed.inside.shape == (2, 20)
    changed = (mixed.inputs != inputs).any(dim=2)
    assert changed[1].sum() == 0
    for k, row in enumerate(mixed.rows.tolist()):
        assert not changed[row][~mixed.inside[k]].any()  # outside its stretch, an example is as it was
        assert changed[row][mixed.inside[k]].all()
    torch.manual_seed(0)
    again = mixer(inputs, labels)
    assert torch.equal(again[0], mixed.inputs) and torch.equal(again[1], mixed.labels)


def test_the_detector_trains_draws_nothing_and_is_never_exported() -> None:
    recipe = load_recipe("demo", ["train.event_timing=1.0"])
    plain = load_recipe("demo")
    torch.manual_seed(0)
    with_head = build_model(recipe)
    after_with = torch.rand(1)
    torch.manual_seed(0)
    without = build_model(plain)
    after_without = torch.rand(1)
    # Building the detector leaves the other weights and the later draws as they were without it.
    assert torch.equal(after_with, after_without)
    shared = without.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in with_head.state_dict().items() if not k.startswith("step_head"))
    assert with_head.step_head is not None and without.step_head is None
    waves = torch.randn(2, 64000)
    with_head.train()
    torch.manual_seed(5)
    out = with_head(waves)
    assert out["steps"].shape[:2] == (2, 2)
    # The frames its SpecAugment blanked come out with the steps, as the same draws blank them.
    torch.manual_seed(5)
    _, blanked = with_head.augment.with_time_mask(with_head.frontend(waves))
    assert blanked.any() and torch.equal(out["blanked_frames"], blanked)
    with_head.eval()
    assert "steps" not in with_head(waves) and with_head.output_names == without.output_names
    # The detector read beside the head, offline: the same from a waveform as from its log-mel.
    with torch.no_grad():
        from_waves = with_head.step_logits(waves)
        from_frames = with_head.step_logits(with_head.frontend(waves))
        assert torch.allclose(from_waves[0], with_head(waves)["logits"], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(from_waves, from_frames))
    with pytest.raises(QLungError, match="no step detector"):
        without.step_logits(waves)
    with pytest.raises(ValueError, match="edge-cnn"):
        QLungModel("ast", step_detector=True)
    with pytest.raises(ConfigError, match="event_timing needs the edge-cnn backbone"):
        load_recipe("qlung-ast-icbhi", ["train.event_timing=1.0"])


def test_a_recipe_with_event_timing_trains_and_logs_the_detector_loss(
    synth_root: Path, tmp_path: Path, scripts_importable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.engine
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.engine import train

    blanked: list[torch.Tensor] = []

    def spied(logits: torch.Tensor, targets: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        blanked.append(hidden)  # type: ignore[arg-type]
        return timing_loss(logits, targets, hidden)

    monkeypatch.setattr(training.engine, "timing_loss", spied)
    base = [f"data.root={synth_root / 'sprsound'}", "data.dataset=sprsound", "data.window_seconds=4.0",
            "data.unit=mixed", "train.epochs=1", "train.max_steps=3", "train.event_mix=0.5",
            "data.quality_estimate=false"]  # fmt: skip
    train(load_recipe("demo", [*base, "train.event_timing=1.0"]), tmp_path / "timed", progress=False)
    # Every step's loss was told which frames SpecAugment blanked.
    assert len(blanked) == 3 and all(b is not None and b.dtype == torch.bool and b.any() for b in blanked)
    header, row = (tmp_path / "timed" / "metrics.csv").read_text().splitlines()[:2]
    loss = float(row.split(",")[header.split(",").index("train_timing")])
    assert 0.0 < loss < 5.0
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "timed" / "best.pt"))
    assert model.step_head is not None
    # The detector's own calls, offline: the head read through the detector's features is the run's own figure.
    from step_detector import measure

    judged = measure(tmp_path / "timed")
    trained = json.loads((tmp_path / "timed" / "summary.json").read_text())
    for split in ("validation", "test"):
        assert judged[split]["plain"]["score"] == pytest.approx(trained[split]["score"], nan_ok=True)
        assert set(judged[split]) == {"windows", "plain", "detector", "union"}
    # The bundle is the window head alone: the same answers as the trained model, the detector left out.
    from export.onnx_export import export_bundle
    from qlung_edge.bundle import MODEL_FILE
    from qlung_edge.onnx_sessions import onnx_session, run_onnx
    from training.models import count_parameters

    manifest = export_bundle(tmp_path / "timed" / "best.pt", tmp_path / "bundle", log=lambda _: None)
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "probabilities", "embedding"]
    detector = sum(p.numel() for p in model.step_head.parameters())
    assert manifest["model"]["parameters"] == count_parameters(model) - detector > 0
    waves = np.random.default_rng(0).normal(0.0, 0.1, (2, manifest["window_samples"])).astype(np.float32)
    exported = run_onnx(onnx_session(tmp_path / "bundle" / MODEL_FILE), waves)
    model.eval()
    with torch.no_grad():
        trained = model(torch.from_numpy(waves))["probabilities"].numpy()
    assert np.abs(exported["probabilities"] - trained).max() <= 1e-4
    train(load_recipe("demo", base), tmp_path / "plain", progress=False)
    assert "train_timing" not in (tmp_path / "plain" / "metrics.csv").read_text().splitlines()[0]

"""Event removal (training.augment.remove_events): a window's crackles and wheezes replaced by the rest of the
window, relabelled normal; a recipe that trains with it; and scripts/event_removal.py, which scores a run's windows
with and without their events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qlung_edge import CLASS_NAMES
from training.augment import EventRemovalConfig, remove_events
from training.config import ConfigError, load_recipe

NORMAL, CRACKLE, WHEEZE = (CLASS_NAMES.index(n) for n in ("normal", "crackle", "wheeze"))


def _window(frames: int, event: tuple[int, int], channel: int, unknown: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """[frames, 2] targets: normal breathing, one event on `channel`, an optional stretch of unknown content."""
    targets = torch.zeros(frames, 2, dtype=torch.int8)
    targets[event[0] : event[1], channel] = 1
    targets[unknown[0] : unknown[1]] = -1
    return targets


def test_events_are_replaced_by_the_window_s_own_normal_frames_and_the_label_becomes_normal() -> None:
    frames, mels = 40, 3
    # Each frame's value names the frame, so where a replacement came from can be read back.
    inputs = torch.arange(frames, dtype=torch.float32)[None, :, None].repeat(4, 1, mels)
    inputs[:, :, 1] += 100.0 * torch.arange(4)[:, None]
    targets = torch.stack([
        _window(frames, (10, 14), 1, unknown=(30, 33)),  # a wheeze beside normal breathing: removed
        _window(frames, (0, 36), 0),  # a crackle filling nearly all of it: too little normal breathing left
        _window(frames, (0, 0), 0),  # normal already: nothing to remove
        _window(frames, (5, 8), 0),  # eligible but unlabelled (a window not trained on)
    ])  # fmt: skip
    labels = torch.tensor([WHEEZE, CRACKLE, NORMAL, -1])
    config = EventRemovalConfig(probability=1.0, margin_frames=2, min_normal_fraction=0.25)
    torch.manual_seed(0)
    out, out_labels, out_targets = remove_events(inputs, labels, targets, config)
    assert out_labels.tolist() == [NORMAL, CRACKLE, NORMAL, -1], "unlabelled examples (negative) are left alone"
    replaced = torch.arange(8, 16)  # the wheeze's frames 10-13 and two frames either side
    kept = torch.tensor([f for f in range(frames) if f not in replaced.tolist()])
    assert torch.equal(out[0, kept], inputs[0, kept]) and torch.equal(out[1:], inputs[1:])
    sources = out[0, replaced, 0].long()
    # Every replacement is a whole frame of the same window from outside the event and its margins: annotated
    # normal breathing or a stretch between events (unknown content), which the window rule counts as normal.
    assert torch.equal(out[0, replaced], inputs[0, sources])
    normal = set(range(frames)) - set(range(8, 16))
    assert set(sources.tolist()) <= normal
    # In order from a random start: consecutive sources, wrapping over the normal frames.
    order = sorted(normal)
    pairs = zip(sources[:-1].tolist(), sources[1:].tolist())
    steps = [(order.index(b) - order.index(a)) % len(order) for a, b in pairs]
    assert steps == [1] * (len(replaced) - 1)
    assert (out_targets[0, replaced] == 0).all() and (out_targets[0, 30:33] == -1).all()
    assert torch.equal(out_targets[1:], targets[1:])
    # The inputs given are not changed in place, and probability 0 changes nothing.
    assert torch.equal(inputs[0, 10, 0], torch.tensor(10.0))
    same = remove_events(inputs, labels, targets, EventRemovalConfig(probability=0.0))
    assert same[0] is inputs and same[1] is labels
    # An event left too little of its window (35 of 40 frames with the margins) for the 10 frames asked for.
    assert out_labels[1] == CRACKLE
    # A resumed run continues the same draws: the same seed gives the same windows.
    torch.manual_seed(0)
    again = remove_events(inputs, labels, targets, config)
    assert torch.equal(again[0], out)


def test_a_bad_removal_setting_is_named() -> None:
    with pytest.raises(ValueError, match="probability must lie in"):
        EventRemovalConfig(probability=1.5)
    with pytest.raises(ConfigError, match="event_removal must lie in"):
        load_recipe("demo", ["train.event_removal=-0.1"])
    with pytest.raises(ConfigError, match=r"needs train\.cache_features"):
        load_recipe("demo", ["train.event_removal=0.3", "train.cache_features=false"])
    with pytest.raises(ValueError, match="log-mel frames"):
        remove_events(torch.zeros(2, 64000), torch.zeros(2), torch.zeros(2, 400, 2), EventRemovalConfig(1.0))


def test_a_recipe_with_event_removal_trains_on_windows_without_their_events(
    synth_root: Path, tmp_path: Path, scripts_importable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.engine as engine

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spied(inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, config: EventRemovalConfig):  # type: ignore[no-untyped-def]
        out = remove_events(inputs, labels, targets, config)
        seen.append((labels, out[1], targets))
        return out

    monkeypatch.setattr(engine, "remove_events", spied)
    base = [f"data.root={synth_root / 'sprsound'}", "data.dataset=sprsound", "data.window_seconds=4.0",
            "data.unit=mixed", "train.epochs=1", "train.max_steps=4", "train.batch_size=16", "train.event_mix=0.3",
            "data.quality_estimate=false", "train.event_removal=1.0"]  # fmt: skip
    summary = engine.train(load_recipe("demo", base), tmp_path / "removed", progress=False)
    assert len(seen) == 4 and summary["unit"] == "mixed"
    before, after, targets = (torch.cat(part) for part in zip(*seen))
    assert targets.shape[0] == len(before) and targets.dtype == torch.int8
    changed = before != after
    # Only abnormal examples become normal, and some did: windows of synthetic recordings with normal breathing.
    assert changed.any() and (before[changed] > 0).all() and (after[changed] == NORMAL).all()
    # scripts/event_removal.py scores the run's windows as they are and without their events, per patient group.
    from event_removal import SPLITS, measure

    from training.dataset import ExampleDataset
    from training.timing import example_targets
    from training.verdicts import preparer

    judged = measure(tmp_path / "removed")
    _, model, config, splits = engine.load_trained(tmp_path / "removed" / "best.pt", progress=False)
    geometry = engine.geometry_of(config, "window")
    for split in SPLITS:
        examples = engine.examples_of(splits.recordings[split], geometry)
        labels = torch.tensor([e.label for e in examples])
        g = judged[split]
        assert (g["abnormal_windows"], g["normal_windows"]) == (int((labels > 0).sum()), int((labels == 0).sum()))
        # The windows it judges are those removal changes, and as they are it calls them as training's
        # prediction does.
        targets = torch.from_numpy(example_targets(examples, splits.scan.recordings, "window", geometry.seconds))
        _, relabelled, _ = remove_events(torch.zeros(*targets.shape[:2], 1), labels, targets, EventRemovalConfig(1.0))
        chosen = ((labels > 0) & (relabelled == NORMAL)).numpy()
        assert g["windows"] == int(chosen.sum())
        data = ExampleDataset(preparer(config, splits, progress=False)(examples, geometry, split))
        predicted = engine.predict(model, data, torch.device("cpu"), 16).argmax(axis=1)
        normal = labels.numpy() == 0
        assert g["normal_called_abnormal"] == pytest.approx(float((predicted[normal] > 0).mean()))
        # The normal windows split by whether their recording holds crackles or wheezes elsewhere, and a sham cut
        # judged on normal windows only.
        beside, shares = (
            g["normal_windows_of_recordings_with_events"],
            (g["normal_of_recordings_with_events_called_abnormal"], g["normal_of_other_recordings_called_abnormal"]),
        )
        if 0 < beside < g["normal_windows"]:
            mixed = (beside * shares[0] + (g["normal_windows"] - beside) * shares[1]) / g["normal_windows"]
            assert mixed == pytest.approx(g["normal_called_abnormal"])
        by_distance = {k: b["windows"] for k, b in g["normal_by_distance"].items()}
        assert sum(by_distance.values()) == g["normal_windows"] and by_distance["none"] == g["normal_windows"] - beside
        assert g["sham"]["windows"] <= g["normal_windows"] and g["wide_margin"]["windows"] <= g["windows"]
        if g["sham"]["windows"]:
            assert set(g["sham"]["removed"]["own_class_by_class"]) == {"normal"}
        if chosen.any():
            assert g["as_is"]["abnormal"] == pytest.approx(float((predicted[chosen] > 0).mean()))
            assert 0.0 <= g["removed"]["abnormal"] <= 1.0
    assert any(judged[split]["windows"] for split in SPLITS)


def test_normal_windows_are_binned_by_their_distance_to_the_nearest_crackle_or_wheeze(
    scripts_importable: Path,
) -> None:
    from event_removal import abnormal_by_distance, distance_to_events

    from training.records import Cycle

    def event(start: float, end: float, label: int) -> Cycle:
        return Cycle("r", "p", "device", start, end, label)

    events = [event(0.0, 1.0, CRACKLE), event(10.0, 11.0, NORMAL), event(20.0, 20.5, WHEEZE)]
    assert distance_to_events(events, 2.5, 6.5) == pytest.approx(1.5)  # after the crackle; the normal event ignored
    assert distance_to_events(events, 12.0, 16.0) == pytest.approx(4.0)  # before the wheeze
    assert distance_to_events(events, 0.5, 4.5) == 0.0  # overlapping
    assert distance_to_events(events[1:2], 0.0, 4.0) == float("inf")
    distance = np.array([0.0, 0.5, 1.5, 3.0, 4.0, 9.0, np.inf, np.inf])
    predicted = np.array([1, 0, 2, 0, 3, 0, 1, 0])
    bins = abnormal_by_distance(predicted, distance)
    assert {k: b["windows"] for k, b in bins.items()} == {"1": 2, "2": 1, "4": 2, "farther": 1, "none": 2}
    assert {k: b["abnormal"] for k, b in bins.items()} == {"1": 0.5, "2": 1.0, "4": 0.5, "farther": 0.0, "none": 0.5}
    empty = abnormal_by_distance(predicted[:1], distance[:1])
    assert empty["farther"] == {"windows": 0, "abnormal": None}

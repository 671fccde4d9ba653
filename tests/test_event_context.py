"""The inputs scripts/event_context.py builds around one annotated event."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_an_event_laid_once_keeps_the_background_outside_it_and_itself_inside(scripts_importable: Path) -> None:
    from event_context import laid_once

    background, event = np.full(100, 2.0, np.float32), np.full(20, 5.0, np.float32)
    out = laid_once(event, background, fade=4)
    assert np.array_equal(out[:40], background[:40]) and np.array_equal(out[60:], background[60:])
    assert np.array_equal(out[44:56], event[4:16])  # past the cross-fade, the event alone
    ramp = out[40:44]
    assert ramp[0] == 2.0 and np.all(np.diff(ramp) > 0) and np.all(ramp < 5.0)  # from background to event
    with pytest.raises(ValueError, match="does not fit"):
        laid_once(np.ones(101, np.float32), background, fade=4)


def test_the_stretch_around_an_event_stays_inside_the_recording(scripts_importable: Path) -> None:
    from event_context import centred_stretch

    audio = np.zeros(1000)
    assert centred_stretch(audio, 400, 600, 200) == (400, 600)  # centred
    assert centred_stretch(audio, 0, 50, 200) == (0, 200)  # at the start
    assert centred_stretch(audio, 950, 1000, 200) == (800, 1000)  # at the end
    assert centred_stretch(np.zeros(120), 10, 50, 200) == (0, 120)  # the whole of a short recording


def test_the_five_inputs_have_the_input_length_and_the_repeated_one_is_the_cycle_level_s(
    scripts_importable: Path,
) -> None:
    from event_context import CONDITIONS, inputs_of

    from qlung_edge.windows import pad_segment

    rng = np.random.default_rng(0)
    event, around, normal = (rng.standard_normal(n).astype(np.float32) for n in (300, 700, 500))
    made = inputs_of(event, around, normal, length=1000, fade=10)
    assert set(made) == set(CONDITIONS) and all(len(x) == 1000 for x in made.values())
    assert np.array_equal(made["repeated"], pad_segment(event, 1000))
    assert np.array_equal(made["in_recording"], pad_segment(around, 1000))  # short recording: padded as training pads
    silent = made["once_over_silence"]
    assert not silent[:350].any() and not silent[650:].any() and silent[350:650].any()
    half = made["repeated_over_half"]
    assert not half[:250].any() and not half[750:].any() and np.count_nonzero(half) > 450

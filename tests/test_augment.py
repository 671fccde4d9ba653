"""Event mixing: labels are the union of the sounds, and log-mel frames add as the sounds' powers do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qlung_edge import CLASS_NAMES
from training.augment import BOTH, CRACKLE, WHEEZE, EventMixConfig, EventMixer, add_in_power, combined_label
from training.frontend import KaldiFbank

NORMAL = CLASS_NAMES.index("normal")


def test_combined_label_is_the_union_of_the_sounds() -> None:
    assert combined_label(NORMAL, WHEEZE) == WHEEZE
    assert combined_label(NORMAL, CRACKLE) == CRACKLE
    assert combined_label(CRACKLE, WHEEZE) == BOTH
    assert combined_label(WHEEZE, CRACKLE) == BOTH
    assert combined_label(WHEEZE, WHEEZE) == WHEEZE
    assert combined_label(BOTH, CRACKLE) == BOTH


def test_mixed_frames_match_the_front_end_of_the_summed_powers() -> None:
    """Two tones far apart in frequency share no mel band: the front end of their sum is their mix in power."""
    rate, seconds = 16000, 1.0
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    low = 0.3 * np.sin(2 * np.pi * 200 * t) + 1e-3 * rng.standard_normal(t.size)
    high = 0.1 * np.sin(2 * np.pi * 3000 * t) + 1e-3 * rng.standard_normal(t.size)
    front = KaldiFbank().eval()
    with torch.no_grad():
        a, b, both = (front(torch.tensor(x[None], dtype=torch.float32)) for x in (low, high, low + high))
        mixed = add_in_power(a, b, torch.zeros(1))
    # In the bands where one tone dominates, the mix is that tone's energy to well under a dB.
    loud = (a[0] > b[0] + 0.5) | (b[0] > a[0] + 0.5)
    assert torch.allclose(mixed[0][loud], both[0][loud], atol=0.05)
    # A 10 dB gain raises a band that only the added sound fills by 10 dB of normalised log power.
    quieter = add_in_power(torch.full((1, 2, 3), -5.0), torch.zeros(1, 2, 3), torch.tensor([-10.0]))
    louder = add_in_power(torch.full((1, 2, 3), -5.0), torch.zeros(1, 2, 3), torch.tensor([0.0]))
    assert torch.all(louder > quieter)


def _mixer(probability: float, features: bool = True) -> tuple[EventMixer, np.ndarray]:
    shape = (6, 40, 8) if features else (6, 400)
    donors = np.full(shape, 1.0, np.float32)
    labels = np.array([CRACKLE, WHEEZE, CRACKLE, WHEEZE, NORMAL, BOTH])
    return EventMixer(donors, labels, EventMixConfig(probability), features=features), donors


def test_every_example_mixed_gets_a_label_with_the_added_sound() -> None:
    torch.manual_seed(0)
    mixer, _ = _mixer(1.0)
    inputs = torch.full((64, 40, 8), -3.0)
    labels = torch.tensor([NORMAL] * 32 + [CRACKLE] * 32)
    mixed, out = mixer(inputs, labels)
    assert set(out[:32].tolist()) == {CRACKLE, WHEEZE}  # both donor kinds are drawn
    assert set(out[32:].tolist()) == {CRACKLE, BOTH}
    changed = (mixed != inputs).any(dim=2)  # [B, frames]: where the event lies
    assert changed.any(dim=1).all()
    assert (changed.sum(dim=1) >= 10).all()  # at least min_fraction of the 40 frames
    # The stretch is contiguous, and mixing only adds energy.
    for row in changed:
        hits = torch.nonzero(row).flatten()
        assert hits[-1] - hits[0] + 1 == len(hits)
    assert torch.all(mixed >= inputs)


def test_probability_zero_and_unlabelled_examples_are_left_alone() -> None:
    mixer, _ = _mixer(0.0)
    inputs, labels = torch.zeros(8, 40, 8), torch.zeros(8, dtype=torch.long)
    mixed, out = mixer(inputs, labels)
    assert torch.equal(mixed, inputs) and torch.equal(out, labels)
    mixer, _ = _mixer(1.0)
    mixed, out = mixer(inputs, torch.full((8,), -1))
    assert torch.equal(mixed, inputs) and (out == -1).all()


def test_waveforms_add_the_scaled_event() -> None:
    torch.manual_seed(1)
    mixer, _ = _mixer(1.0, features=False)
    inputs = torch.zeros(4, 400)
    mixed, _ = mixer(inputs, torch.zeros(4, dtype=torch.long))
    added = mixed[mixed != 0]
    assert added.numel() and torch.all((added <= 1.0 + 1e-6) & (added >= 10 ** (-6 / 20) - 1e-6))


def test_bad_settings_and_missing_donors_are_named() -> None:
    with pytest.raises(ValueError, match="probability"):
        EventMixConfig(1.5)
    with pytest.raises(ValueError, match="wheeze"):
        EventMixer(np.zeros((2, 4, 3)), np.array([CRACKLE, NORMAL]), EventMixConfig(0.5), features=True)


def test_events_at_their_own_length_keep_it_and_begin_where_the_stretch_does() -> None:
    """length "event": a donor whose event is a quarter of the input covers a quarter of the window, with its
    own first steps (the event, not a repeat of it) shifted to where the stretch starts."""
    torch.manual_seed(2)
    steps = 40
    ramp = np.tile(np.arange(1, steps + 1, dtype=np.float32), (2, 1))  # which donor step lands where
    labels, quarter = np.array([CRACKLE, WHEEZE]), np.array([0.25, 0.25])
    config = EventMixConfig(1.0, gain_db=(0.0, 0.0), length="event")
    with pytest.raises(ValueError, match="one length per donor"):
        EventMixer(ramp, labels, config, features=False)
    # Waveforms add: on a silent base the mix is the shifted event itself, steps 1..10 and nothing else.
    mixed, _ = EventMixer(ramp, labels, config, features=False, donor_fractions=quarter)(
        torch.zeros(16, steps), torch.zeros(16, dtype=torch.long)
    )
    starts = set()
    for row in mixed:
        hits = torch.nonzero(row).flatten()
        assert torch.equal(row[hits], torch.arange(1, 11, dtype=torch.float32))
        assert int(hits[-1] - hits[0]) == 9
        starts.add(int(hits[0]))
    assert len(starts) > 1  # placed anywhere in the window
    # Log-mel frames: only the event's ten frames change.
    frames = np.repeat(ramp[:, :, None], 3, axis=2)
    mixer = EventMixer(frames, labels, config, features=True, donor_fractions=quarter)
    base = torch.full((16, steps, 3), -3.0)
    changed = (mixer(base, torch.zeros(16, dtype=torch.long))[0] != base).any(dim=2)
    assert (changed.sum(dim=1) == 10).all()
    with pytest.raises(ValueError, match="length"):
        EventMixConfig(0.5, length="stretched")

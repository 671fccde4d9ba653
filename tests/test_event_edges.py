"""scripts/event_edges.py's pure parts: cuts that keep where an event is and drop how long it is, and the rule that
reads only the length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _cycle(start: float, end: float, label: int = 0, recording: str = "r") -> object:
    from training.records import Cycle

    return Cycle(recording, "p", "d", start, end, label, "test", recording)


def test_centred_cuts_keep_the_centre_and_stay_inside_the_recording(scripts_importable: Path) -> None:
    from event_edges import centred_cuts

    cycles = [_cycle(4.0, 4.4, 2), _cycle(0.1, 0.5), _cycle(9.0, 10.0), _cycle(1.0, 2.0, recording="short")]
    cuts = centred_cuts(cycles, {"r": 10.0, "short": 0.6}, 1.0)
    assert [(c.start, c.end) for c in cuts] == [(3.7, 4.7), (0.0, 1.0), (9.0, 10.0), (0.0, 0.6)]
    assert [c.label for c in cuts] == [2, 0, 0, 0]  # the label and the recording stay
    assert all(c.recording == o.recording for c, o in zip(cuts, cycles))
    assert {round(c.duration, 6) for c in cuts[:3]} == {1.0}  # every cut the same length: the length says nothing


def test_the_length_rule_reads_the_length_and_nothing_else(scripts_importable: Path) -> None:
    from event_edges import length_rule_calls

    rng = np.random.default_rng(0)
    # Normal events about 1.5 s, wheezes about 0.4 s: the rule learns the length and calls new events by it.
    train = [_cycle(0, float(d), 0) for d in rng.uniform(1.2, 1.8, 60)]
    train += [_cycle(0, float(d), 2) for d in rng.uniform(0.3, 0.5, 20)]
    called = length_rule_calls(train, [_cycle(5, 6.6), _cycle(5, 5.35), _cycle(7, 7.4, 0)])
    assert called.tolist() == [0, 2, 2]  # the third is labelled normal but is as short as a wheeze
    shuffled = [_cycle(0, c.duration, int(label)) for c, label in zip(train, rng.permutation([c.label for c in train]))]
    agreement = np.mean(length_rule_calls(shuffled, train) == np.array([c.label for c in train]))
    assert agreement < 0.8 < np.mean(length_rule_calls(train, train) == np.array([c.label for c in train]))
    with pytest.raises(ValueError):
        length_rule_calls([_cycle(0, 1.0, 0)], train)  # one class: nothing to fit

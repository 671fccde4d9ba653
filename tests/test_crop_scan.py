"""scripts/crop_scan.py's pure parts: the crops that tile a window, and the window's class from its crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_crops_tile_the_window_and_the_last_ends_with_it(scripts_importable: Path) -> None:
    from crop_scan import crop_spans

    assert crop_spans(0.0, 2.0) == [(0.0, 0.5), (0.25, 0.75), (0.5, 1.0), (0.75, 1.25), (1.0, 1.5), (1.25, 1.75),
                                    (1.5, 2.0)]  # fmt: skip
    assert crop_spans(3.0, 4.1) == [(3.0, 3.5), (3.25, 3.75), (3.5, 4.0), (3.6, 4.1)]  # a window cut short
    assert crop_spans(0.0, 0.3) == [(0.0, 0.3)]  # shorter than a crop: itself
    spans = crop_spans(10.0, 14.0)
    centres = np.array([(a + b) / 2 for a, b in spans])
    events = np.linspace(10.25, 13.75, 50)  # wherever an event's centre lies, some crop is centred near it
    assert np.abs(events[:, None] - centres[None, :]).min(axis=1).max() <= 0.125 + 1e-9
    assert {round(b - a, 6) for a, b in spans} == {0.5}


def test_a_window_is_called_from_its_crops_by_the_window_rule(scripts_importable: Path) -> None:
    from crop_scan import scan_calls

    normal = [0.9, 0.04, 0.04, 0.02]
    crackle = [0.2, 0.7, 0.05, 0.05]
    wheeze = [0.3, 0.05, 0.6, 0.05]
    windows = [np.array(rows) for rows in ([normal, normal], [normal, crackle], [wheeze, crackle, normal], [normal])]
    assert scan_calls(windows, None, None).tolist() == [0, 1, 3, 0]  # argmax per crop, crackle + wheeze is both
    # Thresholds: a crackle needs P(crackle) + P(both) of 0.8 somewhere; the wheeze needs 0.5.
    assert scan_calls(windows, 0.8, 0.5).tolist() == [0, 0, 2, 0]
    assert scan_calls(windows, 0.05, 0.99).tolist() == [1, 1, 1, 1]  # a low bar finds a crackle everywhere
    with pytest.raises(ValueError):
        scan_calls([np.zeros((0, 4))], 0.5, 0.5)  # a window with no crop

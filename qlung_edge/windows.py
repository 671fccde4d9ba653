"""Where windows fall in a recording, how a short one is padded, and what label a window carries.

One definition for training, evaluation and the daemon: the daemon cuts its first window when `window`
samples have arrived and one more every `hop` samples; a recording shorter than one window becomes one window,
faded at its edges and repeated to length exactly as training pads an annotated cycle. A window's label comes
from the annotated events it overlaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from qlung_edge import CLASS_NAMES, MODEL_SAMPLE_RATE

FADE_SECONDS = 1.0 / 16.0
"""Linear fade at each edge of a padded segment, so that repeating it adds no clicks."""
MIN_OVERLAP_SECONDS = 0.05
"""An event must overlap a window by this much to count for its label."""


class Span(Protocol):
    start: float
    end: float
    label: int


def window_starts(samples: int, window: int, hop: int) -> list[int]:
    """Start sample of every window the daemon cuts from `samples` samples; [0] when shorter than a window."""
    if samples <= 0:
        return []
    if samples < window:
        return [0]
    return list(range(0, samples - window + 1, hop))


def apply_edge_fades(samples: np.ndarray, fade_length: int) -> np.ndarray:
    """Linear fade-in and fade-out, each at most half the signal long."""
    out = np.array(samples, dtype=np.float32, copy=True)
    n = min(fade_length, len(out) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        out[:n] *= ramp
        out[len(out) - n :] *= ramp[::-1]
    return out


def repeat_to_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Cut to `length` or repeat the signal end to end until it is that long."""
    if len(samples) == 0:
        raise ValueError("cannot pad an empty signal")
    if len(samples) >= length:
        return np.ascontiguousarray(samples[:length])
    reps = -(-length // len(samples))
    return np.tile(samples, reps)[:length]


def pad_segment(samples: np.ndarray, length: int, rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """A segment as a model input: edges faded, repeated (or cut) to `length` samples — cycles and short
    recordings alike."""
    return repeat_to_length(apply_edge_fades(samples, int(round(FADE_SECONDS * rate))), length)


def window_label(
    events: Iterable[Span],
    start: float,
    end: float,
    min_overlap: float = MIN_OVERLAP_SECONDS,
    unlabelled: Iterable[tuple[float, float]] = (),
) -> int | None:
    """Class index of a window from the annotated events it overlaps: 'both' if any has crackles and any has
    wheezes, 'crackle' or 'wheeze' if one kind occurs, 'normal' if it overlaps only normal events, None if it
    overlaps none (not scored, not trained on). None too if it overlaps an `unlabelled` span (an annotated event
    of a kind the classes leave out, such as a rhonchus): calling that window normal would be wrong."""
    if any(min(end, e) - max(start, s) >= min_overlap for s, e in unlabelled):
        return None
    labels = {e.label for e in events if min(end, e.end) - max(start, e.start) >= min_overlap}
    if not labels:
        return None
    names = {CLASS_NAMES[i] for i in labels}
    crackle = bool(names & {"crackle", "both"})
    wheeze = bool(names & {"wheeze", "both"})
    return CLASS_NAMES.index(
        "both" if crackle and wheeze else "crackle" if crackle else "wheeze" if wheeze else "normal"
    )

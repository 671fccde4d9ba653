"""Where in an input the crackles and wheezes are: per-frame targets from the annotated events' time spans, and
the loss of a per-step detector trained on them.

A window's label says only that a crackle or wheeze lies somewhere in its seconds of breathing; on SPRSound the
window model then calls most wheeze windows normal, while the same wheezes cut at the annotators' edges are found
(issue 16). The annotations also say *when* each event happens: a detector on the backbone's time steps, trained
to say which steps hold a crackle or a wheeze, gives the shared features that information. Frames no annotated
event covers (pauses between events, or a kind the classes leave out, such as a rhonchus) are left out of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qlung_edge import FRAME_HOP, FRAME_LENGTH, MODEL_SAMPLE_RATE, frames_in
from training.augment import BOTH, CRACKLE, WHEEZE
from training.records import Cycle, Recording

CHANNELS = ("crackle", "wheeze")
"""What the detector says per step: one yes/no per sound, so 'both' is both channels on."""
UNKNOWN = -1
"""Target of a frame no annotated event of a known kind covers: not trained on."""


def channels_of(label: int) -> tuple[int, int]:
    """(crackle, wheeze) presence of a class."""
    return int(label in (CRACKLE, BOTH)), int(label in (WHEEZE, BOTH))


def frame_centres(start: float, frames: int) -> np.ndarray:
    """Times (s) of the centres of `frames` 25 ms frames at a 10 ms hop from `start`."""
    return start + (np.arange(frames) * FRAME_HOP + FRAME_LENGTH / 2) / MODEL_SAMPLE_RATE


def window_frame_times(recording: Recording, start: float, seconds: float) -> np.ndarray:
    """Times (s in the recording) of the frames of the window starting at `start`, cut as `dataset.prepare` cuts
    it: moved back to end with the recording; a recording shorter than the window is repeated to fill it."""
    frames = frames_in(int(round(seconds * MODEL_SAMPLE_RATE)))
    duration = recording.duration or 0.0
    start = max(min(start, duration - seconds), 0.0)
    times = frame_centres(start, frames)
    return times % duration if 0.0 < duration < seconds else times


def window_targets(recording: Recording, start: float, seconds: float) -> np.ndarray:
    """[frames, 2] int8 targets of the window starting at `start` (a recording shorter than the window is
    repeated, and so are its events)."""
    times = window_frame_times(recording, start, seconds)
    out = np.full((len(times), len(CHANNELS)), UNKNOWN, np.int8)
    for event in recording.cycles:
        covered = (times >= event.start) & (times < event.end)
        out[covered] = np.maximum(out[covered], np.array(channels_of(event.label), np.int8))
    for begin, end in recording.unlabelled:  # a rhonchus is neither silence nor a known sound
        out[(times >= begin) & (times < end)] = UNKNOWN
    return out


def example_targets(examples: Sequence[Cycle], recordings: Sequence[Recording], unit: str,
                    seconds: float) -> np.ndarray:  # fmt: skip
    """[N, frames, 2] int8 targets of training examples: a cycle, repeated to the input's length, is its event
    throughout; a window has the events that cover each of its frames."""
    frames = frames_in(int(round(seconds * MODEL_SAMPLE_RATE)))
    out = np.empty((len(examples), frames, len(CHANNELS)), np.int8)
    by_id = {r.id: r for r in recordings}
    for i, example in enumerate(examples):
        if unit == "cycle":
            out[i] = np.array(channels_of(example.label), np.int8)
        else:
            out[i] = window_targets(by_id[example.recording], example.start, seconds)
    return out


def lay_events(targets: torch.Tensor, rows: torch.Tensor, kinds: Sequence[int], inside: torch.Tensor) -> torch.Tensor:
    """Targets after event mixing laid a `kinds[k]` event over the frames `inside[k]` ([rows, frames] bool) of
    example `rows[k]`: those frames hold that sound, whatever else they held."""
    out = targets.clone()
    for k, (row, kind) in enumerate(zip(rows.tolist(), kinds)):
        crackle, wheeze = channels_of(kind)
        span = inside[k].to(out.device)
        if crackle:
            out[row, span, 0] = 1
        if wheeze:
            out[row, span, 1] = 1
    return out


def frame_mask(inside: torch.Tensor, frames: int) -> torch.Tensor:
    """A mask over input steps ([rows, frames] log-mel frames or [rows, samples] of a waveform) as frames: a frame
    is inside where its centre sample is."""
    if inside.shape[1] == frames:
        return inside
    centres = (torch.arange(frames) * FRAME_HOP + FRAME_LENGTH // 2).clamp(max=inside.shape[1] - 1)
    return inside[:, centres]


def step_targets(targets: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame targets [B, frames, 2] pooled to the detector's `steps`: (positive, known), each [B, 2, steps]; a
    step holds a sound if any of its frames does, and is known if any of its frames is."""
    t = targets.permute(0, 2, 1).float()
    positive = F.adaptive_max_pool1d((t > 0).float(), steps)
    known = F.adaptive_max_pool1d((t >= 0).float(), steps)
    return positive, known


def timing_loss(step_logits: torch.Tensor, targets: torch.Tensor, blanked: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the detector's logits [B, 2, steps] against frame targets [B, frames, 2], over
    the known steps only (0 when none is known). Frames SpecAugment blanked (`blanked`, [B, frames] bool) are
    unknown: the network could not hear what the annotation says is there (a 96-frame mask can hide a whole
    wheeze)."""
    targets = targets.to(step_logits.device)
    if blanked is not None:
        targets = targets.masked_fill(blanked.to(targets.device).unsqueeze(2), UNKNOWN)
    positive, known = step_targets(targets, step_logits.shape[2])
    losses = F.binary_cross_entropy_with_logits(step_logits.float(), positive, reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1.0)

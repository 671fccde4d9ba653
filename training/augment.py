"""Event mixing: an annotated crackle or wheeze laid over another training example, as the two sounds add.

SPRSound's training windows hold few wheezes (about 4 % of them) and fewer windows with both crackles and
wheezes, while the inter-patient test set holds four times the share of wheeze windows; the window model
then calls most wheeze windows normal or crackle. Mixing the sound of an annotated event (a cycle example,
repeated to the input length as cycles are) into a window of another recording makes new wheeze windows and
new "both" windows from the recordings there are: the label is the union of the two examples' sounds.

Sounds add in power, not in log power: on log-mel frames the mix is `log(exp(a) + g * exp(b))` per band,
exact for the mel energies of uncorrelated signals, computed after undoing AST's normalisation. On waveforms
(`cache_features: false`) it is the sum of the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qlung_edge import CLASS_NAMES
from training.frontend import AST_MEAN, AST_STD

CRACKLE, WHEEZE, BOTH = (CLASS_NAMES.index(name) for name in ("crackle", "wheeze", "both"))
DONOR_CLASSES = (CRACKLE, WHEEZE)
"""The events laid over windows; 'both' follows from mixing one into a window that has the other."""
EVENT_LENGTHS = ("drawn", "event")


def combined_label(base: int, added: int) -> int:
    """The class of a window holding the sounds of both labels: crackle + wheeze is 'both'."""
    crackle = base in (CRACKLE, BOTH) or added in (CRACKLE, BOTH)
    wheeze = base in (WHEEZE, BOTH) or added in (WHEEZE, BOTH)
    if crackle and wheeze:
        return BOTH
    return CRACKLE if crackle else WHEEZE if wheeze else CLASS_NAMES.index("normal")


def add_in_power(base: torch.Tensor, added: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel frames of the sum of two sounds, the second scaled by `gain_db` (power dB) [B]."""
    scale = 2.0 * AST_STD
    shift = (gain_db * (math.log(10.0) / 10.0)).view(-1, *([1] * (base.dim() - 1)))
    mixed = torch.logaddexp(base * scale + AST_MEAN, added * scale + AST_MEAN + shift)
    return (mixed - AST_MEAN) / scale


@dataclass(frozen=True)
class EventMixConfig:
    probability: float = 0.0
    """Share of training examples that get an event laid over them; 0 turns mixing off."""
    gain_db: tuple[float, float] = (-6.0, 0.0)
    """The added event's level relative to its own recording, drawn uniformly in this range (dB)."""
    min_fraction: float = 0.25
    """Shortest stretch of the input the event covers, as a fraction of it; the longest is all of it."""
    length: str = "drawn"
    """How long the laid event lasts: "drawn", a stretch drawn between `min_fraction` and the whole input, the
    event repeated to fill it; "event", its own annotated length, once (a 0.5 s wheeze stays 0.5 s of a 4 s
    window, as the device hears it)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"event mixing probability must lie in [0, 1], got {self.probability}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError(f"event mixing min_fraction must lie in (0, 1], got {self.min_fraction}")
        if self.gain_db[0] > self.gain_db[1]:
            raise ValueError(f"event mixing gain range must be (low, high), got {self.gain_db}")
        if self.length not in EVENT_LENGTHS:
            raise ValueError(f"event mixing length must be one of {', '.join(EVENT_LENGTHS)}, got {self.length!r}")


@dataclass
class Mixed:
    """A batch after event mixing, and where each event went (frame targets follow it, training.timing)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    """Each example's class: the union of its own sounds and the laid event's."""
    rows: torch.Tensor
    """The examples an event was laid over."""
    kinds: list[int]
    """The class of each laid event (crackle or wheeze)."""
    inside: torch.Tensor
    """[rows, input steps] bool: where each event lies (log-mel frames, or samples of a waveform)."""


class EventMixer:
    """Lays annotated events (donor examples) over a batch, with the torch random generator (so a resumed run
    continues the same draws)."""

    def __init__(
        self,
        donors: np.ndarray,
        donor_labels: np.ndarray,
        config: EventMixConfig,
        *,
        features: bool,
        donor_fractions: np.ndarray | None = None,
    ):
        """`donor_fractions`: each donor's annotated length as a fraction of the input (needed for length
        "event"); a donor input starts with its event, repeated after it."""
        self.donors, self.config, self.features = donors, config, features
        if config.length == "event":
            if donor_fractions is None or len(donor_fractions) != len(donors):
                raise ValueError("event mixing at the events' own length needs one length per donor")
            self.fractions = np.clip(np.asarray(donor_fractions, np.float64), 0.0, 1.0)
        labels = np.asarray(donor_labels)
        self.by_class = {c: np.flatnonzero(labels == c) for c in DONOR_CLASSES}
        missing = [CLASS_NAMES[c] for c, rows in self.by_class.items() if not len(rows)]
        if missing:
            raise ValueError(f"event mixing needs annotated {' and '.join(missing)} cycles to lay over windows")

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed inputs, their labels); examples without a label (negative) are left alone."""
        mixed = self.mix(inputs, labels)
        return mixed.inputs, mixed.labels

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor) -> Mixed:
        """The mixed batch and where each event was laid (for frame targets, training.timing)."""
        config = self.config
        chosen = (torch.rand(len(labels)) < config.probability) & (labels.cpu() >= 0)
        rows = torch.nonzero(chosen).flatten()
        if not len(rows):
            return Mixed(inputs, labels, rows, [], torch.zeros(0, inputs.shape[1], dtype=torch.bool))
        # Donor classes drawn evenly: wheezes, the rarer sound, are laid over as often as crackles.
        added = [DONOR_CLASSES[k] for k in torch.randint(len(DONOR_CLASSES), (len(rows),)).tolist()]
        pools = [self.by_class[kind] for kind in added]
        picks = [int(pool[torch.randint(len(pool), ()).item()]) for pool in pools]
        donors = torch.from_numpy(np.stack([np.asarray(self.donors[p], np.float32) for p in picks])).to(inputs.device)
        length = inputs.shape[1]
        if config.length == "event":
            spans = torch.from_numpy(np.round(self.fractions[picks] * length).astype(np.int64)).clamp(1, length)
        else:
            shortest = max(1, int(round(config.min_fraction * length)))
            spans = torch.randint(shortest, length + 1, (len(rows),))
        starts = (torch.rand(len(rows)) * (length - spans + 1)).long()
        positions = torch.arange(length)[None, :]
        inside = ((positions >= starts[:, None]) & (positions < (starts + spans)[:, None])).to(inputs.device)
        if config.length == "event":
            # Shift each donor so that its event (its first `span` steps) begins where the stretch does.
            source = ((positions - starts[:, None]) % length).to(inputs.device)
            index = source[:, :, None].expand(-1, -1, donors.shape[2]) if donors.dim() == 3 else source
            donors = torch.gather(donors, 1, index)
        low, high = config.gain_db
        gain_db = (low + (high - low) * torch.rand(len(rows))).to(inputs.device)
        base = inputs[rows.to(inputs.device)]
        if self.features:
            mixed = add_in_power(base, donors, gain_db)
            mixed = torch.where(inside[:, :, None], mixed, base)
        else:
            amplitude = torch.pow(10.0, gain_db / 20.0)[:, None]
            mixed = base + torch.where(inside, donors * amplitude, torch.zeros_like(donors))
        out_inputs, out_labels = inputs.clone(), labels.clone()
        out_inputs[rows.to(inputs.device)] = mixed.to(inputs.dtype)
        for row, kind in zip(rows.tolist(), added):
            out_labels[row] = combined_label(int(labels[row]), kind)
        return Mixed(out_inputs, out_labels, rows, added, inside.cpu())


@dataclass(frozen=True)
class EventRemovalConfig:
    probability: float = 0.0
    """Share of eligible windows (an annotated crackle or wheeze, and enough of the window outside it) whose
    events are replaced; 0 turns removal off."""
    margin_frames: int = 10
    """Frames (10 ms each) either side of an annotated event replaced too: annotators' edges are approximate, and
    a wheeze's tail left in would keep the window's answer."""
    min_normal_fraction: float = 0.25
    """Least share of the window outside every event and its margins (the breathing the events are replaced
    with); a window with less is left alone."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"event removal probability must lie in [0, 1], got {self.probability}")
        if self.margin_frames < 0:
            raise ValueError(f"event removal margin_frames must be 0 or more, got {self.margin_frames}")
        if not 0.0 < self.min_normal_fraction <= 1.0:
            raise ValueError(f"event removal min_normal_fraction must lie in (0, 1], got {self.min_normal_fraction}")


def remove_events(
    inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, config: EventRemovalConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows with their crackles and wheezes replaced by the rest of the window, relabelled normal.

    Why: on the test patients the window model called as many windows wheeze once their annotated wheeze was
    replaced by the breathing beside it as before (issue 16): it answers from the event's surroundings, not the
    event. A window seen both with its event (and the event's class) and without it (normal) can only be told
    apart by the event. Inputs are log-mel frames [B, frames, mels]; `targets` [B, frames, 2] are the per-frame
    crackle/wheeze presence of training.timing (1 inside an event). The replacement is the window's frames outside
    every event and its margins, in their order from a random start, repeated as needed: annotated normal breathing
    and the unannotated stretches between events, which the window rule (qlung_edge.windows.window_label) counts
    as normal too. Draws use torch's generator, so a resumed run continues the same draws."""
    if inputs.dim() != 3 or targets.shape[:2] != inputs.shape[:2]:
        raise ValueError(f"event removal needs log-mel frames and their targets, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")  # fmt: skip
    frames = inputs.shape[1]
    chosen = torch.rand(len(labels)) < config.probability
    if not chosen.any():
        return inputs, labels, targets
    event = (targets == 1).any(dim=2)
    if config.margin_frames:
        width = 2 * config.margin_frames + 1
        event = F.max_pool1d(event[:, None].float(), width, 1, config.margin_frames)[:, 0] > 0
    normal = ~event
    least = max(1, math.ceil(config.min_normal_fraction * frames))
    eligible = chosen & (labels.cpu() > 0) & event.any(dim=1) & (normal.sum(dim=1) >= least)
    rows = torch.nonzero(eligible).flatten().tolist()
    if not rows:
        return inputs, labels, targets
    out_inputs, out_labels, out_targets = inputs.clone(), labels.clone(), targets.clone()
    for row in rows:
        sources = torch.nonzero(normal[row]).flatten()
        places = torch.nonzero(event[row]).flatten()
        offset = int(torch.randint(len(sources), ()))
        picked = sources[(offset + torch.arange(len(places))) % len(sources)]
        out_inputs[row, places] = inputs[row, picked.to(inputs.device)]
        out_targets[row, places] = 0
        out_labels[row] = CLASS_NAMES.index("normal")
    return out_inputs, out_labels, out_targets

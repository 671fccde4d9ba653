"""Where each respiratory event begins and ends: a frame-level event segmenter, and the window calls composed from
its segments.

On SPRSound the window model hears an event among other breathing far less well than the same network hears it
cut at the annotators' edges and repeated (the cycle level), and the window rule applied to the cycle-level calls
of the events a window overlaps comes within 2 points of the cycle level on the validation patients (issue 16,
`scripts/window_gap.py`). What the device lacks is the edges. This small network, trained on SPRSound's event
onsets and offsets, says for every 10 ms frame whether it lies inside an annotated event (of any kind); its runs of
frames are the segments a cycle-level classifier can hear as it was trained to, and the window rule composes
their calls into the window's class.

It reads the cached log-mel frames of the daemon's windows (each band's mean over the window taken off first), is
made of 1-D convolutions only (exportable at a fixed window length, no recurrence), and its convolutions see about a
breath either side of a frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qlung_edge import FRAME_HOP, MODEL_SAMPLE_RATE, frames_in
from training.records import Recording
from training.timing import frame_centres, window_frame_times

SECONDS_PER_FRAME = FRAME_HOP / MODEL_SAMPLE_RATE


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmenter's size, training and decoding, with the defaults measured on SPRSound in one place."""

    mels: int = 128
    channels: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Dilations of the residual convolutions (kernel 3): the receptive field is about ±(2 + sum) frames, here
    ±1.3 s, a breath either side. On SPRSound's validation patients, frame F1 0.72 and onset F1 0.69, against 0.675
    and 0.665 with dilations up to 16 (±0.33 s; also trained on recordings with no annotated event)."""
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    freq_mask: int = 16
    """Widest band of mels blanked per training window (SpecAugment's frequency mask)."""
    threshold: float = 0.5
    """P(inside an event) at which a frame counts as inside, for choosing the epoch (decoding into segments is
    `segments_from`'s, with its own settings)."""
    seed: int = 0


def _inside_events(recording: Recording, times: np.ndarray) -> np.ndarray:
    """float32 per time: 1 inside an annotated event of any kind (a rhonchus, whose class the classifier leaves
    out, is still an event to cut), 0 elsewhere."""
    out = np.zeros(len(times), np.float32)
    for begin, end in [(c.start, c.end) for c in recording.cycles] + list(recording.unlabelled):
        out[(times >= begin) & (times < end)] = 1.0
    return out


def activity_targets(recording: Recording, start: float, seconds: float) -> np.ndarray:
    """[frames] training targets of the window starting at `start`, cut as the daemon cuts it."""
    return _inside_events(recording, window_frame_times(recording, start, seconds))


class EventSegmenter(nn.Module):
    """Log-mel frames [B, frames, mels] -> logit of 'inside an event' per frame [B, frames]."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.inputs = nn.BatchNorm1d(config.mels)
        self.stem = nn.Sequential(nn.Conv1d(config.mels, c, 5, padding=2, bias=False), nn.BatchNorm1d(c), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(c, c, 3, padding=d, dilation=d, bias=False), nn.BatchNorm1d(c), nn.ReLU())
            for d in config.dilations
        )
        self.out = nn.Conv1d(c, 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.transpose(1, 2).float()
        # Each band's mean over the window off: the microphone's and the chest's colouring are not events.
        x = self.inputs(x - x.mean(dim=2, keepdim=True))
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x).squeeze(1)


def stitch(window_probabilities: np.ndarray, first_frames: Sequence[int], total_frames: int) -> np.ndarray:
    """One probability per frame of a recording from its overlapping windows' [W, frames] frame probabilities,
    each laid at its first frame and averaged where windows overlap. Frames past the last window's end (the tail
    shorter than a hop, which the daemon does not cut) and past the recording's end (where a short recording was
    repeated) are dropped."""
    total = np.zeros(total_frames, np.float64)
    count = np.zeros(total_frames, np.float64)
    for probabilities, first in zip(window_probabilities, first_frames, strict=True):
        last = min(first + len(probabilities), total_frames)
        total[first:last] += probabilities[: last - first]
        count[first:last] += 1
    covered = int(np.flatnonzero(count)[-1]) + 1 if count.any() else 0
    if (count[:covered] == 0).any() or not covered:
        raise ValueError(f"{int((count[:covered] == 0).sum()) or total_frames} of {total_frames} frames before the "
                         "last window's end lie in no window")  # fmt: skip
    return (total[:covered] / count[:covered]).astype(np.float32)


@dataclass(frozen=True)
class Segment:
    """A detected event: seconds from the start of the recording."""

    start: float
    end: float


def segments_from(
    probabilities: np.ndarray, threshold: float = 0.5, min_event_seconds: float = 0.1, min_gap_seconds: float = 0.0
) -> list[Segment]:
    """Runs of frames at or above `threshold` as segments (a frame stands for the 10 ms about its centre): gaps
    shorter than `min_gap_seconds` filled first, then runs shorter than `min_event_seconds` dropped."""
    inside = np.asarray(probabilities) >= threshold
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    runs = list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))  # [first, stop)
    # Lengths compared in whole frames: 0.5 s is 50 frames wherever the run lies, not 49.999... seconds.
    min_gap, min_event = round(min_gap_seconds / SECONDS_PER_FRAME), round(min_event_seconds / SECONDS_PER_FRAME)
    merged: list[list[int]] = []
    for first, stop in runs:
        if merged and first - merged[-1][1] < min_gap:
            merged[-1][1] = stop
        else:
            merged.append([first, stop])
    centre = float(frame_centres(0.0, 1)[0])  # the first frame's centre, 12.5 ms in
    out = []
    for first, stop in merged:
        if stop - first < min_event:
            continue
        start = 0.0 if first == 0 else centre + (first - 0.5) * SECONDS_PER_FRAME  # from the first: from the start
        end = centre + (stop - 0.5) * SECONDS_PER_FRAME
        out.append(Segment(round(start, 4), round(end, 4)))
    return out


@dataclass(frozen=True)
class SegmentScores:
    """How well detected segments match the annotated events: frame-level and by event onset."""

    frame_precision: float
    frame_recall: float
    frame_f1: float
    onset_precision: float
    onset_recall: float
    onset_f1: float
    """An annotated event is found when a detected segment begins within `collar` seconds of its onset (each
    segment matches one event at most), as sed_eval's onset-only event-based metric counts."""
    collar: float
    events: int
    segments: int


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _frame_precision_recall(truth: np.ndarray, called: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the frames called inside against the frames truly inside (both bool); 0 where
    nothing is called, or nothing is inside."""
    hits = float(np.sum(truth & called))
    precision = hits / float(called.sum()) if called.any() else 0.0
    recall = hits / float(truth.sum()) if truth.any() else 0.0
    return precision, recall  # plain floats: they go into a history that torch.load(weights_only=True) reads


def onset_matches(predicted: Sequence[float], truth: Sequence[float], collar: float) -> int:
    """Pairs of (detected onset, annotated onset) no more than `collar` apart, each used once: greedy by distance,
    which is optimal for points on a line at a fixed tolerance only approximately, as sed_eval also does."""
    pairs = sorted(
        (abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth) if abs(p - t) <= collar
    )
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def segment_scores(
    frame_truth: Sequence[np.ndarray],
    frame_probabilities: Sequence[np.ndarray],
    segments: Sequence[Sequence[Segment]],
    events: Sequence[Sequence[float]],
    threshold: float,
    collar: float = 0.2,
) -> SegmentScores:
    """Frame precision/recall/F1 at `threshold` and onset precision/recall/F1 within `collar`, pooled over
    recordings (`events`: each recording's annotated onsets)."""
    truth = np.concatenate([np.asarray(t) > 0.5 for t in frame_truth])
    called = np.concatenate([np.asarray(p) >= threshold for p in frame_probabilities])
    fp, fr = _frame_precision_recall(truth, called)
    matched = sum(onset_matches([s.start for s in segs], onsets, collar) for segs, onsets in zip(segments, events))
    n_segments = sum(len(s) for s in segments)
    n_events = sum(len(e) for e in events)
    op = matched / n_segments if n_segments else 0.0
    orc = matched / n_events if n_events else 0.0
    return SegmentScores(fp, fr, _f1(fp, fr), op, orc, _f1(op, orc), collar, n_events, n_segments)


def recording_frame_truth(recording: Recording, total_frames: int) -> np.ndarray:
    """[total_frames] 1 inside an annotated event of any kind, 0 elsewhere, over the whole recording."""
    return _inside_events(recording, frame_centres(0.0, total_frames))


@dataclass
class TrainedSegmenter:
    model: EventSegmenter
    config: SegmenterConfig
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0

    def save(self, path: str | Path) -> None:
        torch.save({"config": asdict(self.config), "state": self.model.state_dict(), "history": self.history,
                    "best_epoch": self.best_epoch}, path)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> TrainedSegmenter:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        known = {f.name for f in fields(SegmenterConfig)}  # a setting since dropped is ignored
        values = {k: v for k, v in payload["config"].items() if k in known}
        config = SegmenterConfig(**{**values, "dilations": tuple(values.get("dilations", SegmenterConfig.dilations))})
        model = EventSegmenter(config)
        model.load_state_dict(payload["state"])
        model.eval()
        return cls(model, config, payload["history"], payload["best_epoch"])


@torch.no_grad()
def frame_probabilities(model: EventSegmenter, inputs: np.ndarray, batch: int = 128) -> np.ndarray:
    """[N, frames] P(inside an event) of cached log-mel windows [N, frames, mels]."""
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(np.asarray(inputs[i : i + batch], np.float32)))).numpy()
           for i in range(0, len(inputs), batch)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, inputs.shape[1]), np.float32)


def train_segmenter(
    train_inputs: np.ndarray,
    train_targets: np.ndarray,
    validation_inputs: np.ndarray,
    validation_targets: np.ndarray,
    config: SegmenterConfig = SegmenterConfig(),
    progress: Callable[[str], None] = print,
) -> TrainedSegmenter:
    """Binary cross-entropy per frame on the training windows; the epoch kept is the one with the best frame F1 on
    the validation patients' windows (at `config.threshold`)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = EventSegmenter(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, len(train_inputs) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=steps, pct_start=0.1)
    positive = float(np.mean(train_targets))
    weight = torch.tensor((1 - positive) / max(positive, 1e-6))  # inside and outside weigh the same in total
    trained = TrainedSegmenter(model, config)
    best, best_state = -1.0, None
    for epoch in range(1, config.epochs + 1):
        model.train()
        began, losses = time.monotonic(), []
        order = rng.permutation(len(train_inputs))
        for first in range(0, len(order) - config.batch_size + 1, config.batch_size):
            rows = np.sort(order[first : first + config.batch_size])  # sorted: memory-mapped reads stay local
            x = torch.from_numpy(np.asarray(train_inputs[rows], np.float32))
            y = torch.from_numpy(np.asarray(train_targets[rows], np.float32))
            x = _mask_bands(x, config.freq_mask, rng)
            loss = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        called = frame_probabilities(model, validation_inputs) >= config.threshold
        f1 = _f1(*_frame_precision_recall(np.asarray(validation_targets) > 0.5, called))
        trained.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "validation_frame_f1": f1,
                                "seconds": time.monotonic() - began})  # fmt: skip
        progress(f"segmenter epoch {epoch}/{config.epochs}: loss {np.mean(losses):.4f}, "
                 f"validation frame F1 {f1:.4f} ({time.monotonic() - began:.0f} s)")  # fmt: skip
        if f1 > best:
            best, best_state, trained.best_epoch = f1, {k: v.clone() for k, v in model.state_dict().items()}, epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return trained


def _mask_bands(x: torch.Tensor, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Each window's one band of up to `width` mels set to that window's mean level (SpecAugment's frequency
    mask): an event must be found from the bands left."""
    if width <= 0:
        return x
    x = x.clone()
    mels = x.shape[2]
    for row in range(len(x)):
        w = int(rng.integers(0, width + 1))
        if w:
            lo = int(rng.integers(0, mels - w + 1))
            x[row, :, lo : lo + w] = x[row].mean()
    return x


def called_segments(
    model: EventSegmenter, inputs: np.ndarray, windows: Sequence[Any], recordings: dict[str, Recording],
    window_seconds: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Each recording's stitched frame probabilities from its cached windows (`windows`: the
    `recording_windows` of each recording, in order, with `inputs` their cached frames)."""
    from training.dataset import indices_by_recording

    probabilities = frame_probabilities(model, inputs)
    window_samples = int(round(window_seconds * MODEL_SAMPLE_RATE))
    out = {}
    for recording_id, indices in indices_by_recording(w.recording for w in windows).items():
        recorded = int(round((recordings[recording_id].duration or 0.0) * MODEL_SAMPLE_RATE))
        firsts = [int(round(windows[i].start * MODEL_SAMPLE_RATE)) // FRAME_HOP for i in indices]
        track = stitch(probabilities[indices], firsts, frames_in(max(recorded, window_samples)))
        out[recording_id] = track[: max(frames_in(recorded), 1)]  # a short recording's repeats dropped
    return out

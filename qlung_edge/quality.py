"""Audio Quality Score (AQS) and the quality gate's reasons, numpy only.

QLung's no-reference score: `AQS = clip(1 - alpha * H_norm + beta * R_norm, 0, 1)`, where `H_norm` is the
spectral entropy of each 25 ms frame divided by log(bins), averaged over frames, and `R_norm` maps the RMS
level to [0, 1]. Noise-like audio has a flat spectrum (entropy near 1) and scores low; quiet audio scores low.

The paper does not pin the RMS mapping, so it is a named option (`rms_norm`) recorded in the model manifest.
Beyond the score, the gate needs reasons a clinician can act on: too quiet, clipped, noise-like, dropout.

Frames sit at multiples of the hop from the first sample, whether a signal comes whole (`assess`) or in
blocks (`StreamingQuality`), so both give the same numbers; the device computes each frame once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

from qlung_edge import FRAME_HOP, FRAME_LENGTH, FRAMES_PER_WINDOW, MODEL_SAMPLE_RATE
from qlung_edge.audio import as_float32
from qlung_edge.config import from_dict
from qlung_edge.filterbank import FrameBuffer, frame_view

try:  # scipy's FFT is about 3x numpy's on batches of short frames, which is what reaches 2000x real time
    from scipy.fft import rfft as _rfft
except ImportError:  # numpy alone gives the same numbers, slower
    from numpy.fft import rfft as _rfft

RMS_NORMS = ("dbfs", "linear")
REASONS = ("too_quiet", "clipped", "noise_like", "dropout", "low_quality")
"""Why the gate refuses a window, in the order they are reported."""


class QualityInputError(ValueError):
    """Audio the quality score cannot be computed on, with what is wrong with it."""


@dataclass(frozen=True)
class QualityConfig:
    """The score's definition and the gate's thresholds; the model manifest stores all of it."""

    sample_rate: int = MODEL_SAMPLE_RATE
    frame_length: int = FRAME_LENGTH
    """25 ms at 16 kHz."""
    hop_length: int = FRAME_HOP
    """10 ms at 16 kHz."""
    n_fft: int = 512
    alpha: float = 0.7
    beta: float = 0.3
    rms_norm: str = "dbfs"
    """'dbfs': R_norm rises linearly from `rms_floor_dbfs` to `rms_ceil_dbfs`; 'linear': RMS / 10^(ceil/20)."""
    entropy_band_hz: float = 0.0
    """0: spectral entropy over the whole 0-8 kHz spectrum (the paper). Above 0: over the band the device
    records (4000 for an 8 kHz stethoscope, whose upsampled audio leaves the rest empty), normalised by the
    log of that band's bin count."""
    entropy_floor: float = 0.0
    entropy_ceil: float = 1.0
    """H_norm is the mean normalised entropy mapped linearly from [floor, ceil] to [0, 1] (identity by default);
    calibrated, floor and ceil are the 1st and 99th percentiles of acceptable training recordings, so that AQS
    spans its range on real audio instead of saturating."""
    # The level range and the gate thresholds below were chosen on the 780 real SPRSound training
    # recordings only (`qlung-edge quality-scan DATA --calibrate-on train`, training/quality_report.py:
    # 1st-99th percentile of the levels of records not labelled "Poor Quality", and thresholds that refuse
    # at most 1 % of those per reason).
    rms_floor_dbfs: float = -57.0
    rms_ceil_dbfs: float = -29.0
    # Gate thresholds.
    min_aqs: float = 0.0
    """Off by default: on SPRSound the score alone does not separate poor records (see the README)."""
    quiet_dbfs: float = -57.0
    """Below this RMS level (over the window) a window is too quiet."""
    clip_level: float = 0.999
    """A sample at or above this magnitude counts as clipped (full scale is 1.0)."""
    max_clipped_fraction: float = 0.001
    max_entropy: float = 0.9
    """Mean normalised entropy above this is noise-like: white noise over the whole 8 kHz band gives 0.92.
    Not learnt from SPRSound, whose 8 kHz recordings leave half the band empty (entropy about 0.35)."""
    dead_level: float = 1.0 / 32768.0
    """A frame whose samples all stay below one 16-bit step is digital silence."""
    max_dropout_seconds: float = 0.1

    def __post_init__(self) -> None:
        if self.rms_norm not in RMS_NORMS:
            raise ValueError(f"rms_norm must be one of {RMS_NORMS}, got {self.rms_norm!r}")
        if not self.rms_floor_dbfs < self.rms_ceil_dbfs:
            raise ValueError("rms_floor_dbfs must be below rms_ceil_dbfs")
        if not 0 < self.hop_length <= self.frame_length <= self.n_fft:
            raise ValueError("need 0 < hop_length <= frame_length <= n_fft")
        if not 0 <= self.entropy_floor < self.entropy_ceil <= 1:
            raise ValueError("need 0 <= entropy_floor < entropy_ceil <= 1")
        if not 0 <= self.entropy_band_hz <= self.sample_rate / 2:
            raise ValueError(f"entropy_band_hz must lie in [0, {self.sample_rate / 2:g}]")

    @property
    def entropy_bins(self) -> int:
        """FFT bins the entropy is taken over (DC up to the band's edge)."""
        full = self.n_fft // 2 + 1
        if self.entropy_band_hz <= 0:
            return full
        return min(full, int(self.entropy_band_hz * self.n_fft / self.sample_rate) + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "quality") -> QualityConfig:
        return from_dict(cls, values, where)


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame quantities; any run of frames summarises into a `QualityReport`."""

    entropy: np.ndarray
    """Spectral entropy / log(bins), in [0, 1]."""
    power: np.ndarray
    """Mean square after removing the frame's DC."""
    clipped: np.ndarray
    """Fraction of the frame's samples at or above the clip level."""
    dead: np.ndarray
    """True where the frame is digital silence."""

    def __len__(self) -> int:
        return len(self.entropy)

    @staticmethod
    def concatenate(parts: list[FrameFeatures]) -> FrameFeatures:
        if not parts:
            return _empty_features()
        return FrameFeatures(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(FrameFeatures)))


@dataclass(frozen=True)
class QualityReport:
    aqs: float
    entropy: float
    live_entropy: float
    """Entropy over the frames that are not digital silence: what 'noise-like' looks at."""
    rms_dbfs: float
    r_norm: float
    clipped_fraction: float
    dropout_seconds: float
    frames: int
    reasons: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return not self.reasons


def _empty_features() -> FrameFeatures:
    return FrameFeatures(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool))


def _checked(samples: np.ndarray, sample_rate: int, config: QualityConfig) -> np.ndarray:
    if sample_rate != config.sample_rate:
        raise QualityInputError(
            f"quality is defined at {config.sample_rate} Hz, got {sample_rate} Hz: resample first "
            "(qlung_edge.audio.resample)"
        )
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise QualityInputError(f"expected mono 1-D samples, got shape {samples.shape}")
    try:
        samples = as_float32(samples)
    except TypeError as err:
        raise QualityInputError(str(err)) from None
    bad = np.count_nonzero(~np.isfinite(samples))
    if bad:
        raise QualityInputError(f"{bad} NaN or infinite samples")
    return samples


def _per_frame(values: np.ndarray, count: int, n: int, hop: int, reduce: np.ufunc) -> np.ndarray:
    """`reduce` (np.add, np.maximum) of `values` over each frame, through runs of gcd(n, hop) samples: a frame
    is a whole number of runs, so each sample is reduced once, not once per frame it lies in."""
    run = math.gcd(n, hop)
    runs = reduce.reduce(values[: (count - 1) * hop + n].reshape(-1, run), axis=1)
    return reduce.reduce(frame_view(runs, count, n // run, hop // run), axis=1)


@lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    window = np.hanning(n).astype(np.float32)
    window.flags.writeable = False
    return window


def frame_features(samples: np.ndarray, config: QualityConfig, buffer: FrameBuffer | None = None) -> FrameFeatures:
    """Features of every whole frame of a float32 signal (frames start at multiples of the hop); a streaming
    caller passes the `buffer` it keeps."""
    n, hop = config.frame_length, config.hop_length
    if len(samples) < n:
        return _empty_features()
    count = 1 + (len(samples) - n) // hop
    used = samples[: (count - 1) * hop + n]
    magnitude = np.abs(used)
    peaks = _per_frame(magnitude, count, n, hop, np.maximum)
    dead = peaks < config.dead_level
    if peaks.max() >= config.clip_level:
        clipped = _per_frame(magnitude >= config.clip_level, count, n, hop, np.add).astype(np.float32) / n
    else:
        clipped = np.zeros(count, np.float32)
    frames = frame_view(used, count, n, hop)
    means = (_per_frame(used.astype(np.float64), count, n, hop, np.add) / n).astype(np.float32)
    padded = (buffer or FrameBuffer()).take(count, config.n_fft, np.float32)
    centred = padded[:, :n]
    np.subtract(frames, means[:, None], out=centred)
    power = np.einsum("ij,ij->i", centred, centred) / np.float32(n)
    centred *= _hann(n)
    spectrum = _rfft(padded, axis=1)
    spectrum = spectrum[:, : config.entropy_bins]
    bins = np.square(spectrum.real, dtype=np.float32) + np.square(spectrum.imag, dtype=np.float32)
    bins += np.float32(1e-20)  # silence becomes a flat spectrum: entropy 1, not 0/0
    total = bins.sum(axis=1)
    entropy = np.log(total) - np.einsum("ij,ij->i", bins, np.log(bins)) / total
    entropy = np.clip(entropy / np.log(bins.shape[1]), 0.0, 1.0).astype(np.float32)
    return FrameFeatures(entropy=entropy, power=power.astype(np.float32), clipped=clipped, dead=dead)


def _unit(value: float) -> float:
    """`value` clipped to [0, 1] (NaN stays NaN, as np.clip leaves it) without numpy's call overhead: this runs
    several times for every window."""
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else float(value)


def _mean(values: np.ndarray) -> float:
    return float(values.sum(dtype=np.float64)) / len(values)  # np.mean's arithmetic, less of its overhead


def rms_norm(rms_dbfs: float, config: QualityConfig) -> float:
    """R_norm in [0, 1] by the configured mapping."""
    if config.rms_norm == "dbfs":
        span = config.rms_ceil_dbfs - config.rms_floor_dbfs
        return _unit((rms_dbfs - config.rms_floor_dbfs) / span)
    rms = 10.0 ** (rms_dbfs / 20.0)
    return _unit(rms / 10.0 ** (config.rms_ceil_dbfs / 20.0))


def summarize(features: FrameFeatures, config: QualityConfig) -> QualityReport:
    """AQS and gate reasons of a run of frames."""
    if len(features) == 0:
        raise QualityInputError(f"shorter than one frame ({config.frame_length} samples)")
    live = ~features.dead
    return judge(
        entropy=_mean(features.entropy),
        # Digital silence has a flat spectrum too; it is a dropout, not noise.
        live_entropy=_mean(features.entropy[live]) if live.any() else 0.0,
        rms_dbfs=10.0 * math.log10(_mean(features.power) + 1e-20),
        clipped_fraction=_mean(features.clipped),
        dropout_seconds=float(np.count_nonzero(features.dead) * config.hop_length / config.sample_rate),
        frames=len(features),
        config=config,
    )


def judge(
    *,
    entropy: float,
    live_entropy: float,
    rms_dbfs: float,
    clipped_fraction: float,
    dropout_seconds: float,
    frames: int,
    config: QualityConfig,
) -> QualityReport:
    """Score and reasons from a window's summary numbers; rescoring under another config needs no audio."""
    r = rms_norm(rms_dbfs, config)
    h = _unit((entropy - config.entropy_floor) / (config.entropy_ceil - config.entropy_floor))
    score = _unit(1.0 - config.alpha * h + config.beta * r)
    flags = {
        "too_quiet": rms_dbfs < config.quiet_dbfs,
        "clipped": clipped_fraction > config.max_clipped_fraction,
        "noise_like": live_entropy > config.max_entropy,
        "dropout": dropout_seconds > config.max_dropout_seconds,
        "low_quality": score < config.min_aqs,
    }
    return QualityReport(
        aqs=score,
        entropy=entropy,
        live_entropy=live_entropy,
        rms_dbfs=rms_dbfs,
        r_norm=r,
        clipped_fraction=clipped_fraction,
        dropout_seconds=dropout_seconds,
        frames=frames,
        reasons=tuple(reason for reason in REASONS if flags[reason]),
    )


def rejudge(report: QualityReport, config: QualityConfig) -> QualityReport:
    """The same window under other thresholds (a recalibration, the gate's hysteresis), without its audio."""
    return judge(
        entropy=report.entropy,
        live_entropy=report.live_entropy,
        rms_dbfs=report.rms_dbfs,
        clipped_fraction=report.clipped_fraction,
        dropout_seconds=report.dropout_seconds,
        frames=report.frames,
        config=config,
    )


def assess(
    samples: np.ndarray, sample_rate: int = MODEL_SAMPLE_RATE, config: QualityConfig | None = None
) -> QualityReport:
    """AQS and gate reasons of a whole signal (one cycle, one window, one recording)."""
    config = config or QualityConfig()
    return summarize(frame_features(_checked(samples, sample_rate, config), config), config)


def aqs(samples: np.ndarray, sample_rate: int = MODEL_SAMPLE_RATE, config: QualityConfig | None = None) -> float:
    """Just the score, as the training loss needs it."""
    return assess(samples, sample_rate, config).aqs


class StreamingQuality:
    """Frame features of a stream fed in blocks of any size, each frame computed once.

    `push` returns the frames that the block completed; `window(frames)` summarises the most recent ones,
    kept in a ring as long as `history_frames`.
    """

    def __init__(self, config: QualityConfig | None = None, history_frames: int = FRAMES_PER_WINDOW) -> None:
        self.config = config or QualityConfig()
        self.history_limit = history_frames
        self.buffer = FrameBuffer()
        self.reset()

    def reset(self) -> None:
        """Forget the stream, as after a device gap that must not be bridged."""
        self._tail = np.zeros(0, np.float32)
        self._history: list[FrameFeatures] = []
        self._history_frames = 0
        self.frames_seen = 0

    def push(self, block: np.ndarray, sample_rate: int | None = None) -> FrameFeatures:
        samples = _checked(block, sample_rate or self.config.sample_rate, self.config)
        buffer = np.concatenate([self._tail, samples]) if len(self._tail) else samples
        features = frame_features(buffer, self.config, self.buffer)
        consumed = len(features) * self.config.hop_length
        self._tail = np.array(buffer[consumed:], dtype=np.float32)
        if len(features):
            self.frames_seen += len(features)
            self._history.append(features)
            self._history_frames += len(features)
            while self._history_frames - len(self._history[0]) >= self.history_limit:
                self._history_frames -= len(self._history.pop(0))
        return features

    def recent(self, frames: int) -> FrameFeatures:
        """The last `frames` frame features (fewer if fewer were seen)."""
        joined = FrameFeatures.concatenate(self._history)
        return FrameFeatures(*(getattr(joined, f.name)[-frames:] for f in fields(FrameFeatures)))

    def window(self, frames: int) -> QualityReport:
        return summarize(self.recent(frames), self.config)

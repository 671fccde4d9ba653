"""The Kaldi log-mel filterbank AST expects, defined once in numpy: the model's front end in every form.

25 ms frames every 10 ms, DC removal, pre-emphasis 0.97 (the first sample repeats), Hann window, 512-point
DFT, 128 HTK mel bands from 20 Hz to Nyquist, natural log with a float32-epsilon floor, AST's normalisation.
`training.frontend` builds the torch modules from these matrices (a Conv1d for TensorRT 8.x, a MatMul, an FFT);
`pocketfft_logmel` runs it on the device without any graph, checked against the bundle's graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from qlung_edge import FRAME_HOP, FRAME_LENGTH, MODEL_SAMPLE_RATE

AST_MEAN = -4.2677393
"""AST's AudioSet log-mel mean and standard deviation: inputs become (x - mean) / (2 * std)."""
AST_STD = 4.5689974
LOG_FLOOR = float(np.finfo(np.float32).eps)
"""Kaldi clamps mel energies at float32 epsilon before the log."""


@dataclass(frozen=True)
class FrontEndConfig:
    sample_rate: int = MODEL_SAMPLE_RATE
    frame_length: int = FRAME_LENGTH
    hop_length: int = FRAME_HOP
    n_fft: int = 512
    n_mels: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0
    """0 or less: that far below Nyquist, as Kaldi reads it."""
    preemphasis: float = 0.97
    normalize: bool = True
    """Apply AST's normalisation (needed to use AudioSet-pretrained AST weights)."""

    def frames(self, samples: int) -> int:
        """Number of frames for a signal of `samples` (Kaldi's snip_edges=True)."""
        return 0 if samples < self.frame_length else 1 + (samples - self.frame_length) // self.hop_length


def _mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


def kaldi_mel_banks(config: FrontEndConfig) -> np.ndarray:
    """Triangular HTK-mel filters over the FFT bins, [n_mels, n_fft // 2 + 1], last (Nyquist) column zero."""
    nyquist = 0.5 * config.sample_rate
    high = config.high_freq if config.high_freq > 0 else nyquist + config.high_freq
    if not 0.0 <= config.low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist, got {config.low_freq}, {high}")
    mel_low, mel_high = _mel(np.float64(config.low_freq)), _mel(np.float64(high))
    delta = (mel_high - mel_low) / (config.n_mels + 1)
    left = mel_low + delta * np.arange(config.n_mels)[:, None]
    centre, right = left + delta, left + 2 * delta
    bin_mel = _mel(config.sample_rate / config.n_fft * np.arange(config.n_fft // 2))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


def folded_frame_kernel(config: FrontEndConfig) -> np.ndarray:
    """[2 * bins, frame_length] matrix: real rows then imaginary rows of DFT(window * preemph(frame - mean))."""
    n = config.frame_length
    dc_removal = np.eye(n) - 1.0 / n
    preemphasis = np.eye(n) - config.preemphasis * np.eye(n, k=-1)
    preemphasis[0, 0] = 1.0 - config.preemphasis  # Kaldi repeats the first sample
    window = np.hanning(n)
    bins = np.arange(config.n_fft // 2 + 1)[:, None]
    angle = 2.0 * np.pi * bins * np.arange(n)[None, :] / config.n_fft
    dft = np.concatenate([np.cos(angle), -np.sin(angle)])
    return dft @ (window[:, None] * preemphasis) @ dc_removal


def reference_logmel(samples: np.ndarray, config: FrontEndConfig | None = None) -> np.ndarray:
    """The filterbank in float64 numpy, frame by frame: the yardstick both exported front ends are held to.

    Float32 arithmetic strays from it by up to ~1e-4 (normalised) in bands 100 dB below a frame's peak
    (a resampled 4 kHz recording has nothing above 2 kHz): that, not the algorithm, bounds any comparison.
    """
    config = config or FrontEndConfig()
    x = np.asarray(samples, np.float64)
    count = config.frames(len(x))
    starts = np.arange(count)[:, None] * config.hop_length
    frames = x[starts + np.arange(config.frame_length)[None, :]]
    spectrum = frames @ folded_frame_kernel(config).T
    half = config.n_fft // 2 + 1
    power = spectrum[:, :half] ** 2 + spectrum[:, half:] ** 2
    logmel = np.log(np.maximum(power @ kaldi_mel_banks(config).T, LOG_FLOOR))
    return (logmel - AST_MEAN) / (2.0 * AST_STD) if config.normalize else logmel


@lru_cache(maxsize=4)
def _pocketfft_tables(config: FrontEndConfig) -> tuple[Any, np.ndarray, int, int]:
    from scipy import sparse

    banks = kaldi_mel_banks(config)
    used = np.flatnonzero(banks.any(axis=0))
    low, high = int(used[0]), int(used[-1]) + 1
    # Each FFT bin feeds at most two triangles: as a sparse matrix the mel sum is ~50x fewer operations than a
    # dense product, and never reaches a multithreaded BLAS that would spin against the rest of the device.
    mel = sparse.csr_matrix(banks[:, low:high].astype(np.float32))
    hann = np.hanning(config.frame_length)
    hann.flags.writeable = False
    return mel, hann, low, high


def frame_view(x: np.ndarray, count: int, length: int, hop: int) -> np.ndarray:
    """[count, length] read-only view of a 1-D signal, row k starting at sample k * hop, without a copy and
    without `sliding_window_view`'s checks (about 40 us a call here, paid several times every hop)."""
    x = np.ascontiguousarray(x)
    if count < 0 or (count and (count - 1) * hop + length > len(x)):
        raise ValueError(f"{count} frames of {length} every {hop} do not fit in {len(x)} samples")
    view = np.ndarray((count, length), x.dtype, x, 0, (hop * x.itemsize, x.itemsize))
    view.flags.writeable = False
    return view


class FrameBuffer:
    """A zero-padded frame matrix kept from call to call by a streaming caller: a fresh block of a few hundred
    kilobytes each hop may come straight from the kernel (glibc hands large freed blocks back), page faults and
    all, which can take longer than the FFT itself."""

    def __init__(self) -> None:
        self._array: np.ndarray | None = None

    def take(self, count: int, columns: int, dtype: type) -> np.ndarray:
        """[count, columns] of zeros beyond whatever the previous caller wrote into its first columns: callers
        always write the same leading columns (the frame) and never the padding."""
        array = self._array
        if array is None or array.shape[0] < count or array.shape[1] != columns or array.dtype != dtype:
            array = self._array = np.zeros((max(count, 128), columns), dtype)
        return array[:count]


def pocketfft_logmel(
    samples: np.ndarray, config: FrontEndConfig | None = None, buffer: FrameBuffer | None = None
) -> np.ndarray:
    """The filterbank with scipy's FFT (pocketfft), float64 up to the power spectrum: [frames, mels] float32.

    About half the CPU of the dense-DFT graph for a hop's frames, and within ~1e-7 of `reference_logmel`.
    """
    from scipy import fft

    config = config or FrontEndConfig()
    mel, hann, low, high = _pocketfft_tables(config)
    x = np.asarray(samples, np.float64)
    count = config.frames(len(x))
    if count == 0:
        return np.zeros((0, config.n_mels), np.float32)
    n, hop, p = config.frame_length, config.hop_length, config.preemphasis
    x = x[: (count - 1) * hop + n]
    means = _frame_sums(x, count, n, hop) / n
    # Pre-emphasis of the frame with its mean removed, e[k] = c[k] - p c[k-1], is x[k] - p x[k-1] - (1 - p) mean:
    # filtered once over the signal, not once per frame it lies in.
    filtered = x[1:] - p * x[:-1]
    padded = (buffer or FrameBuffer()).take(count, config.n_fft, np.float64)
    emphasised = padded[:, :n]
    np.subtract(frame_view(filtered, count, n - 1, hop), ((1.0 - p) * means)[:, None], out=emphasised[:, 1:])
    emphasised[:, 0] = (1.0 - p) * (x[: (count - 1) * hop + 1 : hop] - means)  # Kaldi repeats the first sample
    emphasised *= hann
    spectrum = fft.rfft(padded, axis=1, workers=1)[:, low:high]  # padded here, not by scipy (n=): fewer copies
    power = (spectrum.real * spectrum.real + spectrum.imag * spectrum.imag).astype(np.float32)
    energies = np.maximum((mel @ power.T).T, np.float32(LOG_FLOOR))
    logmel = np.log(energies)
    if config.normalize:
        logmel = (logmel - np.float32(AST_MEAN)) / np.float32(2.0 * AST_STD)
    return logmel.astype(np.float32, copy=False)


def _frame_sums(x: np.ndarray, count: int, n: int, hop: int) -> np.ndarray:
    """Each frame's sum, through runs of gcd(n, hop) samples: a frame is a whole number of runs, so each sample
    is added once, not once per frame it lies in."""
    run = math.gcd(n, hop)
    runs = x[: (count - 1) * hop + n].reshape(-1, run).sum(axis=1)
    return frame_view(runs, count, n // run, hop // run).sum(axis=1)

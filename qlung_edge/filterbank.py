"""The Kaldi log-mel filterbank AST expects, defined once in numpy: the model's front end in every form.

25 ms frames every 10 ms, DC removal, pre-emphasis 0.97 (the first sample repeats), Hann window, 512-point
DFT, 128 HTK mel bands from 20 Hz to Nyquist, natural log with a float32-epsilon floor, AST's normalisation.
`training.frontend` builds the torch modules from these matrices (a Conv1d for TensorRT 8.x, a MatMul, an FFT);
`pocketfft_logmel` runs it on the device without any graph, checked against the bundle's graphs.
"""

from __future__ import annotations

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


def pocketfft_logmel(samples: np.ndarray, config: FrontEndConfig | None = None) -> np.ndarray:
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
    step = x.strides[0]
    frames = np.lib.stride_tricks.as_strided(
        x, (count, config.frame_length), (step * config.hop_length, step), writeable=False
    )
    centred = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.empty_like(centred)
    np.subtract(centred[:, 1:], config.preemphasis * centred[:, :-1], out=emphasised[:, 1:])
    emphasised[:, 0] = centred[:, 0] * (1.0 - config.preemphasis)
    emphasised *= hann
    spectrum = fft.rfft(emphasised, n=config.n_fft, axis=1, workers=1)[:, low:high]
    power = (spectrum.real * spectrum.real + spectrum.imag * spectrum.imag).astype(np.float32)
    energies = np.maximum((mel @ power.T).T, np.float32(LOG_FLOOR))
    logmel = np.log(energies)
    if config.normalize:
        logmel = (logmel - np.float32(AST_MEAN)) / np.float32(2.0 * AST_STD)
    return logmel.astype(np.float32, copy=False)

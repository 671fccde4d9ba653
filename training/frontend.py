"""The Kaldi log-mel filterbank AST expects, as ops every inference backend has.

`torchaudio.compliance.kaldi.fbank` (25 ms frames, 10 ms shift, DC removal, pre-emphasis 0.97, Hann window,
512-point FFT, 128 HTK mel bins from 20 Hz to Nyquist, natural log) computes frame by frame and needs an FFT.
TensorRT on JetPack 5/6 has no DFT op, so here everything up to the power spectrum, all linear in the frame,
is folded into one strided `Conv1d` kernel: rows of the real and imaginary DFT, times the window, times the
pre-emphasis, times the DC removal. Then power, a constant mel matrix, log with a floor and AST's
normalisation. The front end thus travels inside the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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


class KaldiFbank(nn.Module):
    """Raw 16 kHz waveform [B, T] to (normalised) log-mel [B, frames, n_mels], as one conv and two matmuls."""

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.config = config or FrontEndConfig()
        banks = kaldi_mel_banks(self.config)
        used = np.flatnonzero(banks.any(axis=0))  # bins no filter touches (DC, Nyquist) are not computed
        kernel = folded_frame_kernel(self.config)
        half = self.config.n_fft // 2 + 1
        kernel = np.concatenate([kernel[used], kernel[half + used]])
        self.register_buffer("kernel", torch.from_numpy(kernel).float().unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.from_numpy(banks[:, used]).float(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform, got shape {tuple(waveform.shape)}")
        frames = F.conv1d(waveform.unsqueeze(1), self.kernel, stride=self.config.hop_length)
        bins = frames.shape[1] // 2  # slices, not chunk(): ONNX Split changed in opset 18 and JetPack 5 reads 17
        real, imag = frames[:, :bins], frames[:, bins:]
        power = real * real + imag * imag
        logmel = torch.matmul(self.mel, power).clamp_min(LOG_FLOOR).log().transpose(1, 2)
        if self.config.normalize:
            logmel = (logmel - AST_MEAN) / (2.0 * AST_STD)
        return logmel


class SpecAugment(nn.Module):
    """Random frequency and time masks on [B, frames, mels], in training mode only."""

    def __init__(self, freq_mask: int = 24, time_mask: int = 96, freq_masks: int = 1, time_masks: int = 1) -> None:
        super().__init__()
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.freq_masks, self.time_masks = freq_masks, time_masks

    @staticmethod
    def _mask(x: torch.Tensor, dim: int, width: int, count: int) -> torch.Tensor:
        size = x.shape[dim]
        for _ in range(count):
            widths = torch.randint(0, width + 1, (x.shape[0], 1), device=x.device)
            starts = (torch.rand(x.shape[0], 1, device=x.device) * (size - widths + 1)).long()
            positions = torch.arange(size, device=x.device)[None, :]
            hit = (positions >= starts) & (positions < starts + widths)  # [B, size]
            x = x.masked_fill(hit.unsqueeze(1) if dim == 2 else hit.unsqueeze(2), 0.0)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        x = self._mask(x, 2, self.freq_mask, self.freq_masks)
        return self._mask(x, 1, self.time_mask, self.time_masks)

"""The Kaldi log-mel filterbank AST expects, as ops every inference backend has.

`torchaudio.compliance.kaldi.fbank` (25 ms frames, 10 ms shift, DC removal, pre-emphasis 0.97, Hann window,
512-point FFT, 128 HTK mel bins from 20 Hz to Nyquist, natural log) computes frame by frame and needs an FFT.
TensorRT on JetPack 5/6 has no DFT op, so here everything up to the power spectrum, all linear in the frame,
is folded into one strided `Conv1d` kernel: rows of the real and imaginary DFT, times the window, times the
pre-emphasis, times the DC removal. Then power, a constant mel matrix, log with a floor and AST's
normalisation. The front end thus travels inside the exported graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qlung_edge.filterbank import (  # the filterbank's definition is numpy, shared with the device
    AST_MEAN,
    AST_STD,
    LOG_FLOOR,
    FrontEndConfig,
    folded_frame_kernel,
    kaldi_mel_banks,
    reference_logmel,
)

__all__ = [
    "AST_MEAN",
    "AST_STD",
    "LOG_FLOOR",
    "FrontEndConfig",
    "KaldiFbank",
    "KaldiFbankFFT",
    "KaldiFbankFramed",
    "SpecAugment",
    "folded_frame_kernel",
    "frames_of",
    "kaldi_mel_banks",
    "reference_logmel",
]


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
    def _mask(x: torch.Tensor, dim: int, width: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[dim]
        masked = torch.zeros(x.shape[0], size, dtype=torch.bool, device=x.device)
        for _ in range(count):
            widths = torch.randint(0, width + 1, (x.shape[0], 1), device=x.device)
            starts = (torch.rand(x.shape[0], 1, device=x.device) * (size - widths + 1)).long()
            positions = torch.arange(size, device=x.device)[None, :]
            hit = (positions >= starts) & (positions < starts + widths)  # [B, size]
            x = x.masked_fill(hit.unsqueeze(1) if dim == 2 else hit.unsqueeze(2), 0.0)
            masked |= hit
        return x, masked

    def with_time_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked input and which of its frames the time masks blanked ([B, frames] bool): a per-frame target
        there names a sound the network was not let hear (`training.timing`)."""
        if not self.training:
            return x, torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        x, _ = self._mask(x, 2, self.freq_mask, self.freq_masks)
        return self._mask(x, 1, self.time_mask, self.time_masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_time_mask(x)[0] if self.training else x  # nothing made in eval: nothing to export


def frames_of(waveform: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """[B, samples] to its frames [B, frames, frame_length], as one gather (exports to ONNX for any length)."""
    count = (waveform.shape[1] - config.frame_length) // config.hop_length + 1
    starts = torch.arange(count, device=waveform.device) * config.hop_length
    return waveform[:, starts[:, None] + torch.arange(config.frame_length, device=waveform.device)[None, :]]


class KaldiFbankFramed(KaldiFbank):
    """The same filterbank with the frames gathered first and the folded DFT as one MatMul.

    For the daemon's front-end graph: ONNX Runtime's Conv picks its algorithm by output length, so a hop's
    few frames and a whole window's come out a few float32 ulps apart (~1e-4 in quiet bands); a MatMul
    computes every frame the same way whatever the count, so frames made block by block equal the window's.
    """

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform, got shape {tuple(waveform.shape)}")
        spectrum = torch.matmul(frames_of(waveform, self.config), self.kernel[:, 0, :].t())  # [B, F, 2 * bins]
        bins = spectrum.shape[2] // 2
        real, imag = spectrum[..., :bins], spectrum[..., bins:]
        logmel = torch.matmul(real * real + imag * imag, self.mel.t()).clamp_min(LOG_FLOOR).log()
        if self.config.normalize:
            logmel = (logmel - AST_MEAN) / (2.0 * AST_STD)
        return logmel


class KaldiFbankFFT(KaldiFbank):
    """The same filterbank with a real FFT in place of the dense DFT: about a fifth of the front end's FLOPs.

    Up to the power spectrum it computes in float64: a DFT of a frame whose bands span 100 dB cancels, and in
    float32 either algorithm strays ~1e-4 (normalised log-mel) from exact arithmetic in the quiet bands.
    The FFT is cheap enough to do it exactly; the mel sum of positive powers is well conditioned in float32.

    For runtimes with an FFT (ONNX Runtime's DFT op); TensorRT 8.5/8.6 have none and keep `KaldiFbank`.
    Framing is a gather, then per frame: DC removal, pre-emphasis (the first sample repeats, as in Kaldi),
    the Hann window, a zero-padded `n_fft` real FFT, power of the bins the mel filters use.
    """

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__(config)
        banks = kaldi_mel_banks(self.config)
        self.register_buffer("hann", torch.from_numpy(np.hanning(self.config.frame_length)), persistent=False)
        self.register_buffer("used", torch.from_numpy(np.flatnonzero(banks.any(axis=0))), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform, got shape {tuple(waveform.shape)}")
        k = self.config.preemphasis
        frames = frames_of(waveform.double(), self.config)  # [B, F, n], float64 up to the power spectrum
        frames = frames - frames.mean(dim=2, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1.0 - k), frames[..., 1:] - k * frames[..., :-1]], dim=2)
        spectrum = torch.view_as_real(torch.fft.rfft(frames * self.hann.double(), n=self.config.n_fft, dim=2))
        power = (spectrum * spectrum).sum(dim=3).float()  # [B, F, bins]; a sum of positives keeps float32 exact
        logmel = torch.matmul(self.mel, power[:, :, self.used].transpose(1, 2)).clamp_min(LOG_FLOOR).log()
        logmel = logmel.transpose(1, 2)
        if self.config.normalize:
            logmel = (logmel - AST_MEAN) / (2.0 * AST_STD)
        return logmel

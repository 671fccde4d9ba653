from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qlung_edge.audio import read_audio, resample
from training.frontend import AST_MEAN, AST_STD, FrontEndConfig, KaldiFbank, SpecAugment, kaldi_mel_banks


def reference_fbank(x: np.ndarray) -> np.ndarray:
    """The Kaldi recipe step by step in float64, one frame at a time, with its own mel filters."""
    n, hop, nfft, nmels = 400, 160, 512, 128
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    step = (hi - lo) / (nmels + 1)
    filters = np.zeros((nmels, nfft // 2 + 1))
    for m in range(nmels):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        for k in range(nfft // 2):
            f = mel(k * 16000 / nfft)
            if left < f < right:
                filters[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    out = []
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)])
    for start in range(0, len(x) - n + 1, hop):
        frame = x[start : start + n].astype(np.float64)
        frame = frame - frame.mean()
        frame = np.append(frame[0] - 0.97 * frame[0], frame[1:] - 0.97 * frame[:-1])
        power = np.abs(np.fft.rfft(frame * window, n=nfft)) ** 2
        out.append(np.log(np.maximum(filters @ power, np.finfo(np.float32).eps)))
    return (np.array(out) - AST_MEAN) / (2 * AST_STD)


def _torch_fbank(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return KaldiFbank()(torch.from_numpy(x[None].astype(np.float32)))[0].numpy()


def test_output_shape_for_an_8s_window() -> None:
    out = KaldiFbank()(torch.zeros(2, 128_000))
    assert out.shape == (2, 798, 128) and FrontEndConfig().frames(128_000) == 798


def test_matches_the_step_by_step_reference_on_random_audio() -> None:
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000).astype(np.float32)
    diff = np.abs(_torch_fbank(x) - reference_fbank(x)).max()
    assert diff < 1e-3


def test_matches_the_reference_on_real_icbhi_audio(shared_data: Path) -> None:
    for name in ("102_1b1_Ar_sc_Meditron", "104_1b1_Al_sc_Litt3200"):
        audio = read_audio(shared_data / "icbhi-sample" / f"{name}.wav")
        x = resample(audio.samples, audio.sample_rate, 16_000)[: 4 * 16_000]
        diff = np.abs(_torch_fbank(x) - reference_fbank(x)).max()
        assert diff < 1e-3, name


def test_mel_banks_are_triangles_that_cover_the_band() -> None:
    banks = kaldi_mel_banks(FrontEndConfig())
    assert banks.shape == (128, 257) and banks[:, 0].max() == 0 and banks[:, -1].max() == 0
    assert np.all(banks <= 1.0)
    assert np.all(banks[40:].max(axis=1) > 0.5)  # the lowest filters are narrower than a bin, as in Kaldi
    peaks = banks[banks.any(axis=1)].argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)
    with pytest.raises(ValueError):
        kaldi_mel_banks(FrontEndConfig(low_freq=9000.0))


def test_frontend_ops_are_conv_and_matmul_only() -> None:
    """No FFT op in the graph: what TensorRT on JetPack 5/6 cannot run never gets there."""
    program = torch.export.export(KaldiFbank(), (torch.zeros(1, 16_000),))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not {c for c in called if "fft" in c or "stft" in c}
    assert any("conv1d" in c for c in called)


def test_spec_augment_masks_in_training_only() -> None:
    torch.manual_seed(0)
    aug = SpecAugment(freq_mask=10, time_mask=20)
    x = torch.ones(4, 100, 128)
    aug.eval()
    assert torch.equal(aug(x), x)
    aug.train()
    y = aug(x)
    zeros = (y == 0).float()
    assert 0 < zeros.sum() < x.numel()
    for b in range(4):  # each mask is a band of whole rows/columns of at most the maximum width
        full_cols = int((zeros[b].sum(0) == 100).sum())
        full_rows = int((zeros[b].sum(1) == 128).sum())
        assert full_cols <= 10 and full_rows <= 20


def test_the_time_mask_says_which_frames_it_blanked_and_draws_as_before() -> None:
    aug = SpecAugment(freq_mask=10, time_mask=20, time_masks=2)
    x = torch.ones(6, 100, 128)
    torch.manual_seed(3)
    plain = aug(x)
    torch.manual_seed(3)
    masked, blanked = aug.with_time_mask(x)
    assert torch.equal(masked, plain)  # the same draws: a recipe without event timing trains as it did
    assert blanked.shape == (6, 100) and blanked.any()
    assert torch.equal(blanked, (masked == 0).all(dim=2))  # exactly the whole rows the time masks zeroed
    aug.eval()
    same, none = aug.with_time_mask(x)
    assert torch.equal(same, x) and not none.any()


@pytest.mark.gpu
def test_matches_torchaudio_kaldi_fbank() -> None:
    """Needs torchaudio, whose wheels need CUDA torch: runs on the GPU machine."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    rng = np.random.default_rng(1)
    for x in (rng.uniform(-0.5, 0.5, 32_000), 0.01 * rng.standard_normal(32_000)):
        wave = torch.from_numpy(x.astype(np.float32))
        expected = kaldi.fbank(
            wave[None],
            htk_compat=True,
            sample_frequency=16000,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        )
        expected = (expected - AST_MEAN) / (2 * AST_STD)
        got = KaldiFbank()(wave[None])[0]
        assert (got - expected).abs().max().item() < 1e-3


def test_frame_view_is_the_sliding_window_it_replaces() -> None:
    from qlung_edge.filterbank import frame_view

    x = np.arange(2000, dtype=np.float64)[3:]  # a slice that starts inside its base
    view = frame_view(x, 10, 400, 160)  # 1997 samples: 10 whole frames
    np.testing.assert_array_equal(view, np.lib.stride_tricks.sliding_window_view(x, 400)[::160])
    assert not view.flags.writeable and frame_view(x, 0, 400, 160).shape == (0, 400)
    with pytest.raises(ValueError, match="do not fit"):
        frame_view(x, 11, 400, 160)

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlung_edge.errors import ConfigError
from qlung_edge.quality import (
    FrameFeatures,
    QualityConfig,
    QualityInputError,
    StreamingQuality,
    assess,
    frame_features,
    rms_norm,
)

RATE = 16_000


def _reference(x: np.ndarray, cfg: QualityConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame normalised entropy and power, one frame at a time in float64."""
    entropies, powers = [], []
    for start in range(0, len(x) - cfg.frame_length + 1, cfg.hop_length):
        frame = x[start : start + cfg.frame_length].astype(np.float64)
        frame = frame - frame.mean()
        powers.append(np.mean(frame**2))
        spectrum = np.abs(np.fft.rfft(frame * np.hanning(len(frame)), n=cfg.n_fft)) ** 2 + 1e-20
        p = spectrum / spectrum.sum()
        entropies.append(-(p * np.log(p)).sum() / np.log(len(p)))
    return np.array(entropies), np.array(powers)


def _breath_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    noise = np.convolve(rng.standard_normal(n), np.ones(16) / 4, mode="same")  # below about 1 kHz, like breath
    x = 0.05 * noise * (0.3 + np.sin(np.pi * t / 1.5) ** 2)
    x += 0.1 * np.sin(2 * np.pi * 300 * t) * (t > 1.0) * (t < 1.5)
    return x.astype(np.float32)


def test_features_match_a_frame_by_frame_reference() -> None:
    cfg = QualityConfig()
    x = _breath_like()
    features = frame_features(x, cfg)
    entropy, power = _reference(x, cfg)
    assert len(features) == 1 + (len(x) - 400) // 160 == len(entropy)
    np.testing.assert_allclose(features.entropy, entropy, atol=2e-4)
    np.testing.assert_allclose(features.power, power, rtol=1e-4)


def test_aqs_is_the_papers_formula() -> None:
    cfg = QualityConfig()
    x = _breath_like(seed=1)
    entropy, power = _reference(x, cfg)
    level = 10 * np.log10(power.mean())
    r = np.clip((level - cfg.rms_floor_dbfs) / (cfg.rms_ceil_dbfs - cfg.rms_floor_dbfs), 0, 1)
    expected = np.clip(1 - 0.7 * entropy.mean() + 0.3 * r, 0, 1)
    report = assess(x)
    assert report.aqs == pytest.approx(expected, abs=2e-4)
    assert report.rms_dbfs == pytest.approx(level, abs=1e-3) and report.entropy == pytest.approx(
        entropy.mean(), abs=2e-4
    )


def test_tone_scores_above_noise_and_loud_above_quiet() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2 * RATE) / RATE
    tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.1 * rng.standard_normal(len(t))).astype(np.float32)
    assert assess(tone).entropy < 0.3 < 0.85 < assess(noise).entropy
    assert assess(tone).aqs > assess(noise).aqs
    assert assess(tone).aqs > assess(tone * np.float32(0.001)).aqs


def test_rms_normalisation_options() -> None:
    cfg = QualityConfig(rms_floor_dbfs=-60, rms_ceil_dbfs=-20)
    assert rms_norm(-60, cfg) == 0.0 and rms_norm(-40, cfg) == pytest.approx(0.5) and rms_norm(0, cfg) == 1.0
    lin = QualityConfig(rms_norm="linear", rms_ceil_dbfs=-20)
    assert rms_norm(-26.0206, lin) == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ValueError, match="rms_norm"):
        QualityConfig(rms_norm="peak")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.integers(0, 10_000))
def test_streaming_equals_whole_signal_for_any_blocks(blocks: list[int], seed: int) -> None:
    x = _breath_like(seconds=2.5, seed=seed)
    cfg = QualityConfig()
    stream = StreamingQuality(cfg, history_frames=10_000)
    parts, position = [], 0
    for size in blocks * 20:
        if position >= len(x):
            break
        parts.append(stream.push(x[position : position + size]))
        position += size
    streamed = FrameFeatures.concatenate(parts)
    whole = frame_features(x[:position], cfg)
    assert len(streamed) == len(whole) == stream.frames_seen
    np.testing.assert_allclose(streamed.entropy, whole.entropy, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(streamed.power, whole.power, rtol=1e-5)
    np.testing.assert_array_equal(streamed.clipped, whole.clipped)
    np.testing.assert_array_equal(streamed.dead, whole.dead)
    if len(whole) >= 100:  # the last 100 frames, summarised, equal the score of the samples they cover
        start = (len(whole) - 100) * 160
        windowed, direct = stream.window(100), assess(x[start : start + 99 * 160 + 400])
        assert (windowed.aqs, windowed.rms_dbfs) == pytest.approx((direct.aqs, direct.rms_dbfs), abs=1e-5)
        assert windowed.frames == direct.frames == 100 and windowed.reasons == direct.reasons


def test_stream_keeps_a_bounded_history() -> None:
    stream = StreamingQuality(history_frames=300)
    x = _breath_like(seconds=10.0)
    for i in range(0, len(x), 1000):
        stream.push(x[i : i + 1000])
    assert 300 <= sum(len(p) for p in stream._history) < 300 + 10
    assert len(stream.recent(300)) == 300 and stream.frames_seen == 998
    stream.reset()
    assert stream.frames_seen == 0 and len(stream.recent(10)) == 0


def test_gate_reasons() -> None:
    x = _breath_like(seconds=4.0)
    assert assess(x).accepted
    clipped = np.clip(x * 40, -1, 1)
    assert "clipped" in assess(clipped).reasons
    assert "too_quiet" in assess(x * np.float32(1e-4)).reasons
    gap = x.copy()
    gap[RATE : 2 * RATE] = 0.0
    report = assess(gap)
    assert report.reasons == ("dropout",) and report.dropout_seconds == pytest.approx(0.98, abs=0.03)
    noise = np.random.default_rng(0).standard_normal(4 * RATE).astype(np.float32) * 0.05
    assert "noise_like" in assess(noise, config=QualityConfig(max_entropy=0.9)).reasons
    assert "low_quality" in assess(x, config=QualityConfig(min_aqs=0.99)).reasons


def test_bad_input_is_a_clear_error_or_a_defined_score() -> None:
    with pytest.raises(QualityInputError, match="NaN"):
        assess(np.array([0.0, np.nan] * 400, np.float32))
    with pytest.raises(QualityInputError, match="shorter than one frame"):
        assess(np.zeros(0, np.float32))
    with pytest.raises(QualityInputError, match="16000 Hz, got 8000 Hz"):
        assess(np.zeros(8000, np.float32), 8000)
    with pytest.raises(QualityInputError, match="mono"):
        assess(np.zeros((2, 8000), np.float32))
    with pytest.raises(QualityInputError, match="integer PCM or float"):
        assess(np.array(["a"] * 500))
    silent = assess(np.zeros(RATE, np.float32))  # digital silence: flat spectrum, no level
    assert silent.aqs == pytest.approx(0.3, abs=1e-5) and set(silent.reasons) == {"too_quiet", "dropout"}
    x = _breath_like()
    as_int16 = (x * 32768).astype(np.int16)
    assert assess(as_int16).aqs == pytest.approx(assess(x).aqs, abs=1e-3)


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    cfg = QualityConfig(rms_norm="linear", quiet_dbfs=-50)
    assert QualityConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key quality\.colour"):
        QualityConfig.from_dict({**cfg.to_dict(), "colour": 1})


def test_numpy_fft_fallback_gives_the_same_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import qlung_edge.quality as quality

    x = _breath_like(seed=3)
    fast = frame_features(x, QualityConfig())
    monkeypatch.setattr(quality, "_rfft", np.fft.rfft)
    plain = frame_features(x, QualityConfig())
    np.testing.assert_allclose(fast.entropy, plain.entropy, atol=1e-6)
    np.testing.assert_allclose(fast.power, plain.power, rtol=1e-6)


def test_clipped_and_dead_frames_match_a_frame_by_frame_count() -> None:
    cfg = QualityConfig()
    x = _breath_like(seed=4)
    x[5000:5300] = 1.0  # clipped
    x[9000:9700] = 0.0  # digital silence, long enough for whole frames
    features = frame_features(x, cfg)
    starts = np.arange(len(features)) * cfg.hop_length
    frames = np.stack([x[s : s + cfg.frame_length] for s in starts])
    counted = (np.abs(frames) >= cfg.clip_level).sum(axis=1) / cfg.frame_length
    np.testing.assert_allclose(features.clipped, counted, rtol=1e-6)
    np.testing.assert_array_equal(features.dead, (np.abs(frames) >= cfg.dead_level).sum(axis=1) == 0)
    assert features.clipped.any() and features.dead.any()

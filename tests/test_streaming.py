"""The daemon's signal path, piece by piece: resampler, window cutter, gate hysteresis, exam smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from qlung_edge.quality import QualityConfig, assess
from qlung_edge.streaming import ExamSmoother, Gate, GateConfig, StreamResampler, Window, WindowCutter


def _chunks(signal: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(signal)), size=40, replace=False))
    return np.split(signal, cuts)


def test_stream_resampler_equals_resampling_the_whole_signal() -> None:
    x = np.random.default_rng(0).standard_normal(4000 * 12).astype(np.float32) * 0.1
    resampler = StreamResampler(16_000)
    out = np.concatenate([resampler.push(c, 4000) for c in _chunks(x, 1)] + [resampler.flush()])
    np.testing.assert_array_equal(out, soxr.resample(x, 4000, 16_000, "HQ"))


def test_stream_resampler_restarts_on_a_rate_change_and_passes_16k_through() -> None:
    resampler = StreamResampler(16_000)
    a = resampler.push(np.zeros(8000, np.float32), 8000)
    b = resampler.push(np.ones(1600, np.float32), 16_000)  # flushes the 8 kHz tail, then passes through
    assert len(a) + len(b) == 16_000 + 1600
    np.testing.assert_array_equal(b[-1600:], 1.0)


@pytest.mark.parametrize("hop_seconds", [0.5, 1.0, 2.0])
def test_windows_are_the_signal_cut_every_hop_with_the_quality_of_each(hop_seconds: float) -> None:
    config = QualityConfig()
    rate, window, hop = 16_000, 128_000, int(hop_seconds * 16_000)
    rng = np.random.default_rng(2)
    signal = (0.05 * rng.standard_normal(rate * 13)).astype(np.float32)
    signal[rate * 9 : rate * 10] *= 0.001  # one quiet second changes the windows that hold it
    cutter = WindowCutter(window, hop, config)
    windows: list[Window] = []
    for part in _chunks(signal, 3):
        windows += cutter.push(part)
    assert len(windows) == (len(signal) - window) // hop + 1
    for i, w in enumerate(windows):
        begin = i * hop
        np.testing.assert_array_equal(w.samples, signal[begin : begin + window])
        assert (w.start, w.end) == (begin / rate, (begin + window) / rate)
        offline = assess(signal[begin : begin + window], rate, config)
        assert w.report.frames == offline.frames == 798
        assert w.report.aqs == pytest.approx(offline.aqs, abs=1e-9)
        assert w.report.rms_dbfs == pytest.approx(offline.rms_dbfs, abs=1e-6)
        assert w.report.reasons == offline.reasons
        assert w.gap_seconds == 0


def test_concealed_device_silence_is_measured_per_window() -> None:
    cutter = WindowCutter(128_000, 16_000, QualityConfig())
    noise = (0.05 * np.random.default_rng(4).standard_normal(16_000 * 10)).astype(np.float32)
    windows = cutter.push(noise[: 16_000 * 5])
    windows += cutter.push(np.zeros(4000, np.float32), gap=True)  # 0.25 s lost on the link
    windows += cutter.push(noise[16_000 * 5 :])
    gaps = [w.gap_seconds for w in windows]
    assert gaps[0] == pytest.approx(0.25) and all(g == pytest.approx(0.25) for g in gaps[:6])
    assert len(windows) == 3 and cutter.total == 16_000 * 10 + 4000


def _window(rms_dbfs: float, entropy: float = 0.3, gap: float = 0.0, index: int = 0) -> Window:
    from qlung_edge.quality import judge

    report = judge(
        entropy=entropy,
        live_entropy=entropy,
        rms_dbfs=rms_dbfs,
        clipped_fraction=0.0,
        dropout_seconds=0.0,
        frames=798,
        config=QualityConfig(),
    )
    return Window(index, index, index + 8, np.zeros(0, np.float32), gap, report)


def test_gate_reopens_only_after_clear_passes_and_does_not_flicker() -> None:
    gate = Gate(QualityConfig(), GateConfig(reopen_after=2, level_margin_db=3.0))
    quiet = QualityConfig().quiet_dbfs
    assert gate.decide(_window(-30)) == ()
    assert gate.decide(_window(quiet - 1)) == ("too_quiet",)
    # Just above the threshold is not enough while closed: the margin applies.
    assert gate.decide(_window(quiet + 1)) == ("too_quiet",)
    assert gate.decide(_window(quiet + 4)) == ("settling",)
    assert gate.decide(_window(quiet + 4)) == ()
    # Open again: the plain threshold applies.
    assert gate.decide(_window(quiet + 1)) == ()
    # A signal wavering around the threshold gives one refusal run, not a flicker.
    decisions = [gate.decide(_window(quiet + d)) for d in (-0.5, 0.5, -0.5, 0.5, 0.5)]
    assert all(decisions), decisions
    assert gate.decide(_window(-40, entropy=0.95)) == ("noise_like",)
    assert gate.decide(_window(-30, gap=0.1))[0] == "device_gap"


def test_exam_smoother_averages_the_last_accepted_windows() -> None:
    exam = ExamSmoother(("normal", "crackle", "wheeze", "both"), windows=3)
    assert exam.state().windows == 0
    for p in ([1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0.4, 0.6, 0]):
        state = exam.add(np.array(p, float))
    assert state.windows == 3 and state.accepted_total == 4
    assert state.label == "crackle"
    assert state.probabilities is not None
    assert state.probabilities["crackle"] == pytest.approx(0.8) and state.probabilities["wheeze"] == pytest.approx(0.2)


def test_block_positions_follow_the_input_not_soxr_bursts() -> None:
    """soxr returns output in bursts (some calls give nothing); gaps are placed by input position."""
    resampler = StreamResampler(16_000)
    x = np.random.default_rng(5).standard_normal(4000 * 5).astype(np.float32)
    lengths = []
    for i in range(0, len(x), 400):
        assert resampler.position() == 4 * i
        lengths.append(len(resampler.push(x[i : i + 400], 4000)))
    assert 0 in lengths or len(set(lengths)) > 1, "soxr should not hand back exactly 4x each call"
    resampler.flush()
    assert resampler.produced == 4 * len(x)
    # After a rate change the old tail is flushed first, and positions continue from there.
    assert resampler.position() == 4 * len(x)
    resampler.push(np.zeros(1600, np.float32), 16_000)
    assert resampler.position() == 4 * len(x) + 1600


def test_a_reconnect_ends_the_examination_and_no_window_spans_it() -> None:
    """The link receiver flags a reconnect of unknown length (AudioBlock.discontinuity); before, the daemon
    ignored the flag and classified windows mixing audio from before and after."""
    from firmware_bridge.blocks import AudioBlock
    from qlung_edge.bench import breath_like
    from qlung_edge.streaming import Decision, ExamBoundary, SignalPath

    rate = 16000
    audio = breath_like(30.0, rate)
    path = SignalPath(4 * rate, rate, QualityConfig(), rate=rate)
    outputs = []
    restart_at = 12.4  # seconds: a block boundary, not on the hop grid
    for start in range(0, len(audio), 1600):
        block = AudioBlock(
            audio[start : start + 1600], rate, start / rate, discontinuity=start == round(restart_at * rate)
        )
        outputs += path.push(block)
    outputs += path.finish()
    windows = [o.window for o in outputs if isinstance(o, Decision)]
    ends = [o for o in outputs if isinstance(o, ExamBoundary) and not o.start]
    assert any(b.reason == "the stethoscope link restarted" and b.time == pytest.approx(restart_at) for b in ends)
    assert windows and not any(w.start < restart_at < w.end for w in windows)
    after = [w for w in windows if w.start >= restart_at]
    assert after and after[0].start == 13.0 and all(w.start == round(w.start) for w in windows), "on the hop grid"
    assert [w.index for w in windows] == list(range(len(windows)))
    starts = [o for o in outputs if isinstance(o, ExamBoundary) and o.start]
    # The next examination starts with the first sound after the reconnect (a 25 ms quality frame may straddle it).
    assert len(starts) == 2 and starts[1].time >= restart_at - 0.025
    assert any("restarted at 12.40 s" in note for note in path.take_notes())

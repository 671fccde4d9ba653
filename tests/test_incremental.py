"""The incremental path: each log-mel frame computed once as audio arrives, the network run on a window's frames.

Frames made block by block must equal the front end run on each whole window (<= 1e-5, normalised log-mel)
on the ten real ICBHI recordings, on random block sizes, across device gaps and a front-end swap (a reload);
the daemon's events must be the whole-window path's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from firmware_bridge.blocks import AudioBlock
from firmware_bridge.sources import FileSource
from qlung_edge import MODEL_SAMPLE_RATE, frames_in
from qlung_edge.backends import BackendError, open_backend
from qlung_edge.bundle import FRONTEND_FFT_FILE, FRONTEND_FILE, MANIFEST, NETWORK_FILE, BundleError, load_bundle
from qlung_edge.daemon import Daemon, DaemonConfig, DaemonError, check_setup
from qlung_edge.filterbank import pocketfft_logmel
from qlung_edge.frontend import FRAME_TOLERANCE, OnnxFrontEnd, block_by_block_difference, open_frontend
from qlung_edge.sinks import CollectSink
from qlung_edge.streaming import Decision, FrameRing, SignalPath
from training.frontend import KaldiFbank, KaldiFbankFFT, KaldiFbankFramed, reference_logmel

RATE = MODEL_SAMPLE_RATE


def _numpy_frontend(samples: np.ndarray) -> np.ndarray:
    return reference_logmel(samples).astype(np.float32)


# --------------------------------------------------------------------------- the ring itself


@pytest.mark.parametrize("seed", range(5))
def test_the_ring_holds_the_frames_of_the_whole_signal(seed: int) -> None:
    """Any block sizes (1 sample up to more than the ring holds): the latest frames are the whole signal's."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 0.1, 3 * RATE).astype(np.float32)
    whole = _numpy_frontend(signal)
    ring = FrameRing(_numpy_frontend, capacity=150)
    position = 0
    while position < len(signal):
        size = int(rng.choice([1, 7, 159, 160, 161, 399, 400, 1234, 30000]))
        ring.push(signal[position : position + size])
        position += size
        if ring.count >= 120:
            first = ring.count - 120
            np.testing.assert_array_equal(ring.window(first, 120), whole[first : ring.count])
    assert ring.count == len(whole)
    with pytest.raises(ValueError, match="not in the ring"):
        ring.window(0, 10)  # long overwritten


def test_frames_are_computed_once_each() -> None:
    calls: list[int] = []

    def counting(samples: np.ndarray) -> np.ndarray:
        frames = _numpy_frontend(samples)
        calls.append(len(frames))
        return frames

    ring = FrameRing(counting, capacity=500)
    signal = np.random.default_rng(0).normal(0, 0.1, 2 * RATE).astype(np.float32)
    for start in range(0, len(signal), 1000):
        ring.push(signal[start : start + 1000])
    count = ring.count  # computes the frames still pending
    assert sum(calls) == count == len(_numpy_frontend(signal))


# --------------------------------------------------------------------------- the front ends


def _real_windows(shared_data: Path, seconds: float = 4.0) -> list[np.ndarray]:
    from qlung_edge.audio import read_audio, resample

    windows = []
    for path in sorted((shared_data / "icbhi-sample").glob("*.wav")):
        audio = read_audio(path)
        windows.append(resample(audio.samples, audio.sample_rate, RATE)[: int(seconds * RATE)].astype(np.float32))
    return windows


def test_every_front_end_is_the_kaldi_filterbank(shared_data: Path) -> None:
    """Against the float64 filterbank on the ten real recordings: the FFT variants (float64 to the power
    spectrum) within 1e-5; the float32 DFT ones within what float32 allows in bands 100 dB down."""
    for window in _real_windows(shared_data):
        exact = reference_logmel(window)
        x = torch.from_numpy(window)[None]
        with torch.no_grad():
            fft, framed, conv = (m(x)[0].numpy() for m in (KaldiFbankFFT(), KaldiFbankFramed(), KaldiFbank()))
        assert np.abs(fft - exact).max() <= 1e-5 and np.abs(pocketfft_logmel(window) - exact).max() <= 1e-5
        assert np.abs(framed - exact).max() <= 1e-3 and np.abs(conv - exact).max() <= 1e-3
        assert np.abs(framed - conv).max() <= 1e-3


@pytest.mark.parametrize("variant", ["dft", "fft", "pocketfft"])
def test_the_front_ends_compute_each_frame_the_same_whatever_the_block(
    bundle: Path, shared_data: Path, variant: str
) -> None:
    frontend = open_frontend(load_bundle(bundle), variant)
    windows = np.stack(_real_windows(shared_data))
    assert block_by_block_difference(frontend, windows) <= FRAME_TOLERANCE
    assert np.abs(frontend(windows[0]) - reference_logmel(windows[0])).max() <= 1e-3


# --------------------------------------------------------------------------- the signal path


def _features_match(decisions: list[Decision], frontend: OnnxFrontEnd) -> int:
    for d in decisions:
        assert d.window.features is not None
        worst = np.abs(d.window.features - frontend(d.window.samples)).max()
        assert worst <= FRAME_TOLERANCE, f"window {d.window.index}: {worst:.1e}"
    return len(decisions)


@pytest.mark.parametrize("hop_seconds", [1.0, 0.25])
def test_the_path_cuts_the_frames_of_each_window_on_real_recordings(
    bundle: Path, shared_data: Path, hop_seconds: float
) -> None:
    loaded = load_bundle(bundle)
    frontend = open_frontend(loaded)
    checked = 0
    for wav in sorted((shared_data / "icbhi-sample").glob("*.wav")):
        path = SignalPath(loaded.window_samples, round(hop_seconds * RATE), loaded.quality_config(),
                          frontend=frontend)  # fmt: skip
        decisions = [d for d in path.feed(FileSource(name="f", path=wav).blocks()) if isinstance(d, Decision)]
        checked += _features_match(decisions, frontend)
    assert checked > 40


def test_random_blocks_gaps_and_a_front_end_swap(bundle: Path, shared_data: Path) -> None:
    """44.1 kHz audio in random blocks with concealed gaps and NaN blocks; half way the front end changes
    (a reload): every window's frames are still those of its samples."""
    from qlung_edge.audio import read_audio

    loaded = load_bundle(bundle)
    dft, fft = OnnxFrontEnd(bundle / FRONTEND_FILE), OnnxFrontEnd(bundle / FRONTEND_FFT_FILE, variant="fft")
    audio = read_audio(sorted((shared_data / "icbhi-sample").glob("*Meditron.wav"))[0])
    rng = np.random.default_rng(3)
    path = SignalPath(loaded.window_samples, RATE // 2, loaded.quality_config(), frontend=dft)
    decisions: list[Decision] = []
    position, t, swapped = 0, 0.0, False
    while position < len(audio.samples):
        size = int(rng.integers(1, 9000))
        samples = audio.samples[position : position + size].astype(np.float32)
        kind = rng.choice(["audio", "gap", "nan"], p=[0.9, 0.05, 0.05])
        if kind == "gap":
            samples = np.zeros_like(samples)
        elif kind == "nan":
            samples = samples.copy()
            samples[::3] = np.nan
        out = path.push(AudioBlock(samples, audio.sample_rate, t, gap=kind == "gap"))
        decisions += [d for d in out if isinstance(d, Decision)]
        position, t = position + size, t + size / audio.sample_rate
        if not swapped and len(decisions) >= 4:
            _features_match(decisions, dft)
            decisions, swapped = [], True
            path.set_frontend(fft)
    assert swapped and len(decisions) >= 4
    _features_match(decisions, fft)


# --------------------------------------------------------------------------- the backend and the daemon


def test_backends_pick_the_pieces(bundle: Path, tmp_path: Path) -> None:
    loaded = load_bundle(bundle)
    assert open_backend(loaded).details["file"] == NETWORK_FILE
    assert open_backend(loaded, incremental=False).details["file"] == "model.onnx"
    for variant in ("dft", "fft", "pocketfft"):
        assert open_backend(loaded, frontend=variant).frontend.variant == variant  # type: ignore[union-attr]
    with pytest.raises(BackendError, match="FP32"):
        open_backend(loaded, precision="int8", incremental=True)
    whole = open_backend(loaded, incremental=False)
    split = open_backend(loaded)
    windows = np.load(bundle / "check_inputs.npz")["waveform"]
    np.testing.assert_allclose(split.run(windows), whole.run(windows), atol=1e-5)
    # A bundle exported before the pieces existed runs whole windows, and says why when asked for more.
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest.pop("incremental")
    from qlung_edge.bundle import write_manifest

    for name in (FRONTEND_FILE, FRONTEND_FFT_FILE, NETWORK_FILE):
        (old / name).unlink()
    write_manifest(old, {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256", "format")})
    assert open_backend(load_bundle(old)).details["file"] == "model.onnx"
    with pytest.raises(BundleError, match="incremental"):
        open_backend(load_bundle(old), incremental=True)


def _events(bundle: Path, wav: Path, **options: Any) -> list[dict[str, Any]]:
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file", sinks=[], **options)
    Daemon(config, source=FileSource(name=f"file:{wav}", path=wav), sinks=[sink]).run()
    return [e for e in sink.events if e["type"] == "window"]


def test_the_daemon_says_the_same_either_way(bundle: Path, shared_data: Path) -> None:
    for wav in sorted((shared_data / "icbhi-sample").glob("*.wav"))[:4]:
        incremental = _events(bundle, wav, hop_seconds=0.5)
        whole = _events(bundle, wav, hop_seconds=0.5, incremental=False)
        assert len(incremental) == len(whole) > 0
        for a, b in zip(incremental, whole):
            span = ("index", "start", "end")  # the UTC times differ: the runs start at different moments
            assert [a["window"][k] for k in span] == [b["window"][k] for k in span]
            assert (a["status"], a.get("reasons")) == (b["status"], b.get("reasons"))
            if a["status"] == "classified":
                pa, pb = a["prediction"]["probabilities"], b["prediction"]["probabilities"]
                assert a["prediction"]["label"] == b["prediction"]["label"]
                assert max(abs(pa[k] - pb[k]) for k in pa) <= 2e-4  # events round to 4 decimals


def test_check_refuses_a_front_end_that_drifts_block_by_block(
    bundle: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wav = next((shared_data / "icbhi-sample").glob("*.wav"))
    config = DaemonConfig(bundle=bundle, source=f"file:{wav}", frontend="dft")
    assert any("block by block" in line for line in check_setup(config))
    real = OnnxFrontEnd.__call__

    def length_dependent(self: OnnxFrontEnd, samples: np.ndarray) -> np.ndarray:
        frames = real(self, samples)
        return frames + (1e-3 if len(frames) < 50 else 0.0)  # what a kernel chosen by size could do

    monkeypatch.setattr(OnnxFrontEnd, "__call__", length_dependent)
    with pytest.raises(DaemonError, match="block by block"):
        check_setup(config)
    # A front end that computes something else (a damaged scipy, a wrong filterbank) is caught too.
    monkeypatch.setattr("qlung_edge.frontend.pocketfft_logmel", lambda samples, *settings: real(
        OnnxFrontEnd(bundle / FRONTEND_FILE), samples) + 0.01)  # fmt: skip
    with pytest.raises(DaemonError, match="differs from the bundle's FFT graph"):
        check_setup(DaemonConfig(bundle=bundle, source=f"file:{wav}", frontend="pocketfft"))


def test_the_manifest_describes_and_verifies_the_pieces(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    record = loaded.manifest["incremental"]
    assert record["frontend"] in record["frontend_variants"]
    assert record["frontend_choice"].startswith(record["frontend"])
    assert set(record["frontend_variants"]) == {"dft", "fft", "pocketfft"}
    for variant in record["frontend_variants"].values():
        assert variant["max_abs_block_by_block_vs_whole"] <= FRAME_TOLERANCE
        assert variant["file"] is None or loaded.has(variant["file"])
    assert record["frontend_variants"]["fft"]["max_abs_vs_float64"] <= 1e-5
    assert record["frontend_variants"]["pocketfft"]["max_abs_vs_float64"] <= 1e-5
    assert record["network"]["op_audit"]["ok"] and loaded.has(NETWORK_FILE)
    assert record["frames_per_window"] == frames_in(loaded.window_samples)

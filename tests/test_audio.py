from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlung_edge.audio import as_float32, audio_info, read_audio, resample
from qlung_edge.errors import AudioFileError


def _tone(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_reads_every_bit_depth_as_float32_mono(tmp_path: Path, subtype: str) -> None:
    x = _tone(8000)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, 8000, subtype=subtype)
    audio = read_audio(path)
    assert audio.samples.dtype == np.float32
    assert audio.sample_rate == 8000 and audio.info.subtype == subtype
    tolerance = {"PCM_16": 1e-4, "PCM_24": 1e-6, "PCM_32": 1e-7, "FLOAT": 0.0}[subtype]
    assert np.max(np.abs(audio.samples - x)) <= tolerance + 1e-9


def test_stereo_is_downmixed_and_says_so(tmp_path: Path) -> None:
    x = np.stack([_tone(8000), np.zeros(8000, np.float32)], axis=1)
    sf.write(tmp_path / "st.wav", x, 8000, subtype="PCM_16")
    audio = read_audio(tmp_path / "st.wav")
    assert audio.downmixed and audio.info.channels == 2
    assert np.allclose(audio.samples, x[:, 0] / 2, atol=1e-4)
    with pytest.raises(AudioFileError, match="2 channels"):
        read_audio(tmp_path / "st.wav", allow_multichannel=False)


def test_truncated_wav_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(8000), 8000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = audio_info(path)
    assert info.truncated and info.declared_frames == 8000 and info.frames < 8000
    assert len(read_audio(path).samples) == info.frames
    with pytest.raises(AudioFileError, match=r"cut\.wav: truncated"):
        read_audio(path, allow_truncated=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"this is not audio at all" * 10, "not a readable audio file")],
)
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match=message) as err:
        read_audio(path)
    assert "bad.wav" in str(err.value)


def test_header_only_wav_has_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "hdr.wav"
    sf.write(path, np.zeros(0, np.float32), 8000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="no audio samples"):
        read_audio(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="does not exist"):
        audio_info(tmp_path / "nope.wav")


def test_nan_samples_are_refused(tmp_path: Path) -> None:
    x = _tone(8000)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="1 NaN or infinite"):
        read_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize(("rate_in", "rate_out"), [(4000, 16000), (44100, 16000), (8000, 16000), (16000, 16000)])
def test_resample_keeps_length_and_pitch(rate_in: int, rate_out: int) -> None:
    x = _tone(rate_in, seconds=2.0, freq=300.0)
    y = resample(x, rate_in, rate_out)
    assert y.dtype == np.float32
    assert abs(len(y) - 2 * rate_out) <= 1
    spectrum = np.abs(np.fft.rfft(y[rate_out // 2 : rate_out // 2 + rate_out]))
    assert np.argmax(spectrum) == pytest.approx(300, abs=1)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_as_float32() -> None:
    assert as_float32(np.array([-32768, 0, 16384], np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert as_float32(np.array([0.25], np.float64)).dtype == np.float32
    with pytest.raises(TypeError):
        as_float32(np.array(["a"]))
    with pytest.raises(ValueError):
        resample(np.zeros(10), 0, 16000)


FUZZ_EXAMPLES = int(os.environ.get("QLUNG_FUZZ_EXAMPLES", "0"))
"""scripts/fuzz.sh raises the example counts of the property tests here and in test_link.py."""


@settings(max_examples=FUZZ_EXAMPLES or 60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["101_1b1_Al_sc_Meditron.wav", "104_1b1_Al_sc_Litt3200.wav", "103_2b2_Ar_mc_LittC2SE.wav"]),
    st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, 2**31)), max_size=8),
)
def test_a_mutated_real_wav_reads_as_finite_audio_or_a_named_error(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, name: str, damage: list[tuple[str, int]]
) -> None:
    data = bytearray((shared_data / "icbhi-sample" / name).read_bytes())
    for kind, where in damage:
        at = where % (len(data) if where % 3 else min(64, len(data)))  # a third lands in the header
        if kind == "flip":
            data[at] ^= 1 << (where % 8)
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes((where >> s) & 0xFF for s in range(0, 24, 8))
        else:
            data[at : at + 16] = bytes(16)
        if not data:
            break
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(bytes(data))
    try:
        audio = read_audio(path)
    except AudioFileError as err:
        assert name in str(err)  # the problem names the file
        return
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1 and audio.sample_rate > 0
    assert np.isfinite(audio.samples).all()

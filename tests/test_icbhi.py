from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qlung_edge.errors import DataError
from training.icbhi import parse_recording_name, read_diagnosis_file, read_split_file, scan_icbhi


def _quiet_scan(root: Path, **kwargs):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_icbhi(root, progress=False, **kwargs)


def test_parse_recording_name() -> None:
    name = parse_recording_name("103_2b2_Ar_mc_LittC2SE")
    assert (name.patient, name.index, name.location, name.mode, name.device) == ("103", "2b2", "Ar", "mc", "LittC2SE")
    with pytest.raises(ValueError, match="not an ICBHI recording name"):
        parse_recording_name("103_2b2_Ar_xx_LittC2SE")


def test_published_bookkeeping_from_all_920_annotation_files(shared_data: Path) -> None:
    scan = _quiet_scan(shared_data / "icbhi-annotations")
    assert scan.problems == []
    assert len(scan.recordings) == 920
    assert len(scan.recordings_in("train")) == 539 and len(scan.recordings_in("test")) == 381
    train, test = scan.cycles("train"), scan.cycles("test")
    assert (len(train), len(test)) == (4142, 2756)
    assert [Counter(c.label for c in train)[k] for k in range(4)] == [2063, 1215, 501, 363]
    assert [Counter(c.label for c in test)[k] for k in range(4)] == [1579, 649, 385, 143]
    assert len({r.patient for r in scan.recordings}) == 126
    assert {r.extra.get("diagnosis") for r in scan.recordings} >= {"COPD", "Healthy", "URTI"}


def test_ten_real_recordings_give_exactly_their_annotated_cycles(shared_data: Path) -> None:
    root = shared_data / "icbhi-sample"
    scan = _quiet_scan(root)
    assert scan.problems == []
    assert len(scan.recordings) == 10
    for rec in scan.recordings:
        table = np.loadtxt(root / f"{rec.id}.txt", ndmin=2)
        assert len(rec.cycles) == len(table)
        for cycle, (start, end, crackle, wheeze) in zip(rec.cycles, table):
            assert cycle.start == pytest.approx(start) and cycle.end == pytest.approx(min(end, rec.duration))
            assert cycle.label == int(crackle) + 2 * int(wheeze)
        info = sf.info(str(root / f"{rec.id}.wav"))
        assert rec.sample_rate == info.samplerate and rec.duration == pytest.approx(info.duration)
    assert {r.sample_rate for r in scan.recordings} == {4000, 44100}
    assert {r.extra["subtype"] for r in scan.recordings} == {"PCM_16", "PCM_24", "PCM_32"}


def test_annotation_only_scan_of_the_sample(shared_data: Path) -> None:
    scan = _quiet_scan(shared_data / "icbhi-sample", with_audio=False)
    assert len(scan.recordings) == 10 and all(r.audio_path is None for r in scan.recordings)


@pytest.fixture()
def small_icbhi(tmp_path: Path, shared_data: Path) -> Path:
    """Three real recordings copied into a scratch folder that tests may break."""
    root = tmp_path / "icbhi"
    root.mkdir()
    for name in ("102_1b1_Ar_sc_Meditron", "104_1b1_Al_sc_Litt3200", "104_1b1_Ar_sc_Litt3200"):
        for ext in (".wav", ".txt"):
            shutil.copy(shared_data / "icbhi-sample" / f"{name}{ext}", root / f"{name}{ext}")
    (root / "official_split.txt").write_text(
        "102_1b1_Ar_sc_Meditron\ttest\n104_1b1_Al_sc_Litt3200\ttrain\n104_1b1_Ar_sc_Litt3200\ttrain\n"
    )
    return root


def _problems(scan) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(p) for p in scan.problems]


def test_wav_without_annotation_is_reported(small_icbhi: Path) -> None:
    (small_icbhi / "104_1b1_Ar_sc_Litt3200.txt").unlink()
    scan = _quiet_scan(small_icbhi)
    assert len(scan.recordings) == 2
    assert any("104_1b1_Ar_sc_Litt3200.wav: audio has no annotation" in p for p in _problems(scan))
    assert any("split lists 104_1b1_Ar_sc_Litt3200" in p for p in _problems(scan))


def test_annotation_without_wav_is_reported(small_icbhi: Path) -> None:
    (small_icbhi / "104_1b1_Ar_sc_Litt3200.wav").unlink()
    scan = _quiet_scan(small_icbhi)
    assert [r.id for r in scan.recordings] == ["102_1b1_Ar_sc_Meditron", "104_1b1_Al_sc_Litt3200"]
    assert any("104_1b1_Ar_sc_Litt3200.txt: annotation has no .wav" in p for p in _problems(scan))


def test_bad_annotation_line_names_file_and_line(small_icbhi: Path) -> None:
    txt = small_icbhi / "104_1b1_Al_sc_Litt3200.txt"
    lines = txt.read_text().splitlines()
    lines[2] = "1.0 abc 0 0"
    lines[3] = "2.0 1.0 0 0"
    lines[4] = "1.0 2.0 0 7"
    txt.write_text("\n".join(lines) + "\n")
    scan = _quiet_scan(small_icbhi)
    rec = next(r for r in scan.recordings if r.id == "104_1b1_Al_sc_Litt3200")
    assert len(rec.cycles) == len(lines) - 3
    found = _problems(scan)
    for number in (3, 4, 5):
        assert any(f"104_1b1_Al_sc_Litt3200.txt:{number}: annotation line does not parse" in p for p in found)
    with pytest.raises(DataError, match=r"104_1b1_Al_sc_Litt3200.txt:3: annotation line does not parse"):
        scan_icbhi(small_icbhi, strict=True, progress=False)


def test_cycle_outside_the_audio(small_icbhi: Path) -> None:
    txt = small_icbhi / "104_1b1_Al_sc_Litt3200.txt"  # 15.86 s of audio
    txt.write_text(txt.read_text() + "15.0\t17.0\t1\t0\n30.0\t32.0\t0\t0\n")
    scan = _quiet_scan(small_icbhi)
    rec = next(r for r in scan.recordings if r.id == "104_1b1_Al_sc_Litt3200")
    assert rec.cycles[-1].start == 15.0 and rec.cycles[-1].end == pytest.approx(rec.duration)
    found = _problems(scan)
    assert any("runs past the end of the audio" in p and "clipped" in p for p in found)
    assert any("30.000-32.000 s lies outside the audio" in p and "skipped line" in p for p in found)


def test_empty_and_truncated_files(small_icbhi: Path) -> None:
    (small_icbhi / "104_1b1_Ar_sc_Litt3200.wav").write_bytes(b"")
    wav = small_icbhi / "102_1b1_Ar_sc_Meditron.wav"
    wav.write_bytes(wav.read_bytes()[: 44 + 2 * 44100 * 5])  # 5 s of a 20 s recording
    (small_icbhi / "104_1b1_Al_sc_Litt3200.txt").write_text("")
    scan = _quiet_scan(small_icbhi)
    found = _problems(scan)
    assert any("104_1b1_Ar_sc_Litt3200.wav: file is empty" in p for p in found)
    assert any("102_1b1_Ar_sc_Meditron.wav: truncated" in p for p in found)
    assert any("104_1b1_Al_sc_Litt3200.txt: annotation lists no usable cycles" in p for p in found)
    rec = scan.recordings[0]
    assert rec.id == "102_1b1_Ar_sc_Meditron" and rec.duration == pytest.approx(5.0, abs=0.01)
    assert all(c.start < 5.0 for c in rec.cycles)
    assert sum("lies outside the audio" in p for p in found) == 13 - len(rec.cycles)


def test_stereo_file_is_downmixed_with_a_warning(small_icbhi: Path) -> None:
    wav = small_icbhi / "104_1b1_Al_sc_Litt3200.wav"
    x, rate = sf.read(wav)
    sf.write(wav, np.stack([x, x], axis=1), rate, subtype="PCM_16")
    with pytest.warns(UserWarning, match="2 channels"):
        scan = scan_icbhi(small_icbhi, progress=False)
    assert len(scan.recordings) == 3


def test_split_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "split.txt"
    path.write_text("101_1b1_Al_sc_Meditron\ttrain\n101_1b1_Pr_sc_Meditron\tvalidation\n")
    with pytest.raises(DataError, match=r"split.txt:2: unknown split name 'validation'"):
        read_split_file(path)
    path.write_text("101_1b1_Al_sc_Meditron train extra\n")
    with pytest.raises(DataError, match=r"split.txt:1: expected"):
        read_split_file(path)


def test_diagnosis_files(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("ID,CLASS\n101,URTI\n102,Healthy\n")
    assert read_diagnosis_file(tmp_path / "d.csv") == {"101": "URTI", "102": "Healthy"}
    (tmp_path / "d.txt").write_text("101\tURTI\n102\tHealthy\n")
    assert read_diagnosis_file(tmp_path / "d.txt") == {"101": "URTI", "102": "Healthy"}


def test_missing_folder_and_no_annotations(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_icbhi(tmp_path / "nope", progress=False)
    with pytest.raises(DataError, match="no ICBHI annotation files"):
        scan_icbhi(tmp_path, progress=False)

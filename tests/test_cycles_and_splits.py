from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from qlung_edge.windows import apply_edge_fades, repeat_to_length
from training.cycles import CycleAudioConfig, CycleAudioLoader
from training.icbhi import scan_icbhi
from training.splits import patient_holdout, patient_kfold


def test_repeat_to_length() -> None:
    x = np.arange(5, dtype=np.float32)
    assert repeat_to_length(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert repeat_to_length(x, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        repeat_to_length(np.zeros(0), 3)


def test_edge_fades() -> None:
    y = apply_edge_fades(np.ones(100, np.float32), 10)
    assert y[0] == 0.0 and y[-1] == 0.0 and y[-2] == pytest.approx(0.1) and np.all(y[10:90] == 1.0)
    assert np.all(np.diff(y[:10]) > 0) and np.all(np.diff(y[90:]) < 0)
    short = apply_edge_fades(np.ones(6, np.float32), 10)  # fades shrink to half the signal
    assert short.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 2 / 3, 1 / 3, 0.0])


def test_real_cycles_become_8s_16k_inputs_decoding_each_file_once(shared_data: Path, tmp_path: Path) -> None:
    scan = scan_icbhi(shared_data / "icbhi-sample", progress=False)
    loader = CycleAudioLoader(scan.recordings, cache_dir=tmp_path / "cache")
    cycles = scan.cycles()
    first = [loader(c) for c in cycles]
    assert loader.decodes == 10
    assert all(x.shape == (128_000,) and x.dtype == np.float32 for x in first)
    again = [loader(c) for c in cycles]  # a second epoch decodes nothing
    assert loader.decodes == 10
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # A new loader finds the disk cache and decodes nothing either.
    fresh = CycleAudioLoader(scan.recordings, cache_dir=tmp_path / "cache")
    assert np.array_equal(fresh(cycles[5]), first[5]) and fresh.decodes == 0
    # The segment is the annotated span at 16 kHz.
    c = cycles[0]
    assert len(loader.cycle_segment(c)) == pytest.approx(round(c.duration * 16000), abs=1)


def test_memory_cache_is_bounded(shared_data: Path) -> None:
    scan = scan_icbhi(shared_data / "icbhi-sample", progress=False)
    loader = CycleAudioLoader(scan.recordings, memory_cache_bytes=1)
    cycles = scan.cycles()
    loader(cycles[0])
    loader(cycles[-1])
    loader(cycles[0])
    assert loader.decodes == 3  # only one recording kept at a time


def test_cycle_config_length() -> None:
    assert CycleAudioConfig().length == 128_000
    assert CycleAudioConfig(sample_rate=8000, seconds=2.0).length == 16_000


def test_patient_kfold_on_real_icbhi(shared_data: Path) -> None:
    scan = scan_icbhi(shared_data / "icbhi-annotations", progress=False)
    train = scan.recordings_in("train")
    folds = patient_kfold(train, k=5, seed=3)
    patient_of = {r.id: r.patient for r in train}
    held_all: list[str] = []
    sizes = []
    for tr, te in folds:
        assert not {patient_of[i] for i in tr} & {patient_of[i] for i in te}
        assert len(tr) + len(te) == len(train)
        held_all += te
        sizes.append(sum(len(r.cycles) for r in train if r.id in set(te)))
    assert sorted(held_all) == sorted(r.id for r in train)  # each recording held out exactly once
    assert max(sizes) - min(sizes) < 0.2 * np.mean(sizes)
    assert folds == patient_kfold(train, k=5, seed=3)
    assert folds != patient_kfold(train, k=5, seed=4)
    tr, val = patient_holdout(train, 0.2, seed=0)
    assert not {patient_of[i] for i in tr} & {patient_of[i] for i in val}
    share = sum(len(r.cycles) for r in train if r.id in set(val)) / len(scan.cycles("train"))
    assert 0.15 < share < 0.25


def test_kfold_needs_enough_patients(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    root.mkdir()
    for ext in (".wav", ".txt"):
        shutil.copy(shared_data / "icbhi-sample" / f"104_1b1_Al_sc_Litt3200{ext}", root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_icbhi(root, progress=False)
    with pytest.raises(ValueError, match="1 patients into 2"):
        patient_kfold(scan.recordings, k=2)


def test_holdout_with_few_patients_still_holds_one_out(shared_data: Path) -> None:
    scan = scan_icbhi(shared_data / "icbhi-sample", progress=False)  # patients 101, 102, 103, 104
    train, held = patient_holdout(scan.recordings, 0.2, seed=0)
    patients = {r.id: r.patient for r in scan.recordings}
    assert held and train and not {patients[i] for i in train} & {patients[i] for i in held}

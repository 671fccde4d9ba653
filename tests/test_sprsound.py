from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from qlung_edge.errors import DataError
from training.dataset import NO_LABEL, Geometry, recording_windows
from training.sprsound import DEFAULT_EVENT_MAPPING, parse_recording_name, scan_sprsound


def _quiet_scan(root: Path, **kwargs):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_sprsound(root, progress=False, **kwargs)


def test_parse_recording_name() -> None:
    assert parse_recording_name("40069321_15.3_0_p1_981") == {
        "patient": "40069321",
        "age": "15.3",
        "gender": "0",
        "location": "p1",
        "number": "981",
    }
    with pytest.raises(ValueError):
        parse_recording_name("40069321_15.3_0_x1_981")


def test_every_real_recording_is_read(shared_data: Path) -> None:
    scan = _quiet_scan(shared_data / "sprsound")
    assert scan.problems == []
    train, test = scan.recordings_in("train"), scan.recordings_in("test")
    assert (len(train), len(test)) == (1537, 355)
    assert all(r.sample_rate == 8000 and r.duration and r.duration > 0 for r in scan.recordings)
    assert Counter(r.record_label for r in train) == {
        "Normal": 1046,
        "DAS": 194,
        "Poor Quality": 144,
        "CAS": 84,
        "CAS & DAS": 69,
    }
    assert Counter(r.record_label for r in test) == {
        "Normal": 241,
        "CAS": 65,
        "DAS": 24,
        "CAS & DAS": 17,
        "Poor Quality": 8,
    }
    # Events: train Normal 4165, Fine 755 + Coarse 46, Wheeze 305, Wheeze+Crackle 20 (Rhonchi 34, Stridor 15 left out).
    assert Counter(c.label for c in scan.cycles("train")) == {0: 4165, 1: 801, 2: 305, 3: 20}
    assert Counter(c.label for c in scan.cycles("test")) == {0: 1040, 1: 83, 2: 305, 3: 1}
    excluded = Counter()
    for r in scan.recordings:
        excluded.update({k: int(v) for k, v in r.extra.items() if k.startswith("excluded:")})
    assert excluded == {"excluded:Rhonchi": 34, "excluded:Stridor": 15}
    # Their spans are kept: a window over a rhonchus is not a normal window, whatever else it overlaps.
    assert sum(len(r.unlabelled) for r in scan.recordings) == 49
    with_rhonchi = [r for r in train if r.unlabelled and r.duration]
    windows = [w for r in with_rhonchi for w in recording_windows(r, Geometry("window", 4.0, 1.0))]
    by_id = {r.id: r for r in with_rhonchi}
    over = [
        w for w in windows if any(min(w.end, e) - max(w.start, s) >= 0.05 for s, e in by_id[w.recording].unlabelled)
    ]
    assert over and all(w.label == NO_LABEL for w in over)
    assert any(w.label != NO_LABEL for w in windows), "the rest of those recordings is still labelled"
    assert all(not r.cycles for r in scan.recordings if r.record_label == "Poor Quality")
    # No patient is in both the training and the inter-patient test set.
    assert not {r.patient for r in train} & {r.patient for r in test}


def test_mapping_is_configurable(shared_data: Path) -> None:
    mapping = {**DEFAULT_EVENT_MAPPING, "Rhonchi": 2, "Stridor": 2}
    scan = _quiet_scan(shared_data / "sprsound", event_mapping=mapping, with_audio=False)
    assert Counter(c.label for c in scan.cycles("train"))[2] == 305 + 34 + 15
    assert not any(r.unlabelled for r in scan.recordings), "mapped events are labelled spans, not unknown ones"


@pytest.fixture()
def small_spr(tmp_path: Path, shared_data: Path) -> Path:
    src = shared_data / "sprsound"
    root = tmp_path / "spr"
    (root / "train_wav").mkdir(parents=True)
    (root / "train_json").mkdir(parents=True)
    for path in sorted((src / "train_json").glob("*.json"))[:6]:
        shutil.copy(path, root / "train_json" / path.name)
        shutil.copy(src / "train_wav" / f"{path.stem}.wav", root / "train_wav" / f"{path.stem}.wav")
    return root


def test_bad_inputs_are_reported_by_file(small_spr: Path) -> None:
    jsons = sorted((small_spr / "train_json").glob("*.json"))
    jsons[0].write_text("{not json")
    (small_spr / "train_wav" / f"{jsons[1].stem}.wav").unlink()
    doc = {
        "record_annotation": "CAS",
        "event_annotation": [
            {"start": "100", "end": "900", "type": "Squeak"},
            {"start": "1000", "end": "1500", "type": "Wheeze"},
        ],
    }
    jsons[2].write_text(json.dumps(doc))
    jsons[3].write_text(json.dumps({"record_annotation": "Great", "event_annotation": []}))
    rhonchus = {"start": 2000, "end": "2600", "type": "Rhonchi"}
    jsons[5].write_text(json.dumps({"record_annotation": "CAS", "event_annotation": [
        {"start": 0, "end": 2000, "type": "Normal"}, rhonchus]}))  # fmt: skip
    shutil.copy(small_spr / "train_wav" / f"{jsons[4].stem}.wav", small_spr / "train_wav" / "40000000_1.0_0_p1_1.wav")
    scan = _quiet_scan(small_spr)
    found = [str(p) for p in scan.problems]
    assert any(f"{jsons[0].name}: not valid JSON" in p for p in found)
    assert any(f"{jsons[1].name}: annotation has no audio" in p for p in found)
    assert any(f"{jsons[2].name}: event 0 does not parse: unknown event type 'Squeak'" in p for p in found)
    assert any(f"{jsons[3].name}: unknown record annotation 'Great'" in p for p in found)
    assert any("40000000_1.0_0_p1_1.wav: audio has no annotation" in p for p in found)
    rec = next(r for r in scan.recordings if r.id == jsons[2].stem)
    assert [(c.start, c.end, c.label) for c in rec.cycles] == [(1.0, 1.5, 2)]
    rec = next(r for r in scan.recordings if r.id == jsons[5].stem)
    assert [(c.start, c.end, c.label) for c in rec.cycles] == [(0.0, 2.0, 0)] and rec.unlabelled == [(2.0, 2.6)]
    assert rec.extra["excluded:Rhonchi"] == "1"
    assert {r.id for r in scan.recordings} == {jsons[2].stem, jsons[4].stem, jsons[5].stem}
    with pytest.raises(DataError, match="not valid JSON"):
        scan_sprsound(small_spr, strict=True, progress=False)


def test_not_an_sprsound_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no SPRSound annotations"):
        scan_sprsound(tmp_path, progress=False)

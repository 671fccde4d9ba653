"""SPRSound (SJTU Paediatric Respiratory Sound Database).

Layout as released: `train_wav/` + `train_json/`, `test_wav/` + `test_json/inter_test_json/`
(and `intra_test_json/` where present). Each JSON holds a record annotation
(Normal, CAS, DAS, CAS & DAS, Poor Quality) and events with start/end in
milliseconds, sometimes written as strings. Events map onto ICBHI's four
classes; Rhonchi and Stridor have no ICBHI class and are left out by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from qlung_edge.audio import AudioInfo
from qlung_edge.errors import DataError
from training.records import Cycle, DatasetScan, Recording

DEVICE = "Yunting-II"
RECORD_LABELS = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
POOR_QUALITY = "Poor Quality"

DEFAULT_EVENT_MAPPING: dict[str, int | None] = {
    "Normal": 0,
    "Fine Crackle": 1,
    "Coarse Crackle": 1,
    "Wheeze": 2,
    "Wheeze+Crackle": 3,
    "Rhonchi": None,
    "Stridor": None,
}
"""Event type to ICBHI class index; None leaves the event out (counted, not silently dropped)."""

SPLIT_DIRS: tuple[tuple[str, str, str], ...] = (
    ("train", "train_wav", "train_json"),
    ("test", "test_wav", "test_json/inter_test_json"),
    ("test-intra", "test_wav", "test_json/intra_test_json"),
)
"""(split name, audio folder, annotation folder) relative to the data root."""

_NAME = re.compile(r"^(?P<patient>\d+)_(?P<age>[0-9.]+)_(?P<gender>[01])_(?P<location>p\d)_(?P<number>\d+)$")


def parse_recording_name(name: str) -> dict[str, str]:
    """`<patient>_<age>_<gender 0=M 1=F>_<location p1..p4>_<recording>` into its fields."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not an SPRSound recording name (<patient>_<age>_<gender>_<p1..p4>_<number>)")
    return m.groupdict()


def _read_annotation(path: Path) -> tuple[str, list[dict[str, object]]]:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"not valid JSON ({err})", path=path) from err
    if not isinstance(doc, dict) or "record_annotation" not in doc:
        raise DataError("missing 'record_annotation'", path=path)
    record = doc["record_annotation"]
    if record not in RECORD_LABELS:
        raise DataError(f"unknown record annotation {record!r} (expected one of {', '.join(RECORD_LABELS)})", path=path)
    events = doc.get("event_annotation", [])
    if not isinstance(events, list):
        raise DataError("'event_annotation' is not a list", path=path)
    return record, events


def _event_cycles(
    scan: DatasetScan,
    path: Path,
    rec: Recording,
    events: list[dict[str, object]],
    mapping: Mapping[str, int | None],
    audio: AudioInfo | None,
) -> list[Cycle]:
    cycles: list[Cycle] = []
    for number, event in enumerate(events):
        try:
            kind = str(event["type"])
            start = float(event["start"]) / 1000.0  # type: ignore[arg-type]
            end = float(event["end"]) / 1000.0  # type: ignore[arg-type]
            if kind not in mapping:
                raise ValueError(f"unknown event type {kind!r}")
            if not (0.0 <= start < end):
                raise ValueError(f"start {start} s and end {end} s do not make an event")
        except (KeyError, TypeError, ValueError) as err:
            scan.report(path, f"event {number} does not parse: {err}", "skipped event")
            continue
        label = mapping[kind]
        if label is None:
            rec.extra[f"excluded:{kind}"] = str(int(rec.extra.get(f"excluded:{kind}", "0")) + 1)
            rec.unlabelled.append((start, end))
            continue
        fitted = scan.fit_to_audio(path, f"event {number}", start, end, audio.duration if audio else None)
        if fitted is not None:
            cycles.append(rec.cycle(start, fitted, label, f"{path}#event{number}"))
    return cycles


def scan_sprsound(
    root: str | Path,
    *,
    event_mapping: Mapping[str, int | None] | None = None,
    with_audio: bool = True,
    strict: bool = False,
    progress: bool = True,
) -> DatasetScan:
    """Scan an SPRSound folder into recordings (with record labels) and event cycles.

    Every record is kept, "Poor Quality" ones (which have no events) included,
    because they are what the quality gate is measured against.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("SPRSound data folder does not exist", path=root)
    mapping = dict(DEFAULT_EVENT_MAPPING if event_mapping is None else event_mapping)
    scan = DatasetScan("sprsound", root, strict=strict)
    pairs: list[tuple[str, Path, Path]] = []
    for split, wav_dir, json_dir in SPLIT_DIRS:
        if (root / json_dir).is_dir():
            pairs += [(split, root / wav_dir, j) for j in sorted((root / json_dir).glob("*.json"))]
    if not pairs:
        raise DataError("no SPRSound annotations found (expected train_json/ or test_json/inter_test_json/)", path=root)

    annotated_wavs: set[Path] = set()
    for split, wav_dir, path in tqdm(pairs, desc="scan SPRSound", unit="rec", disable=not progress):
        try:
            fields = parse_recording_name(path.stem)
            record, events = _read_annotation(path)
        except ValueError as err:
            scan.report(path, str(err), "skipped recording")
            continue
        except DataError as err:
            scan.report(path, err.problem, "skipped recording")
            continue
        rec = Recording(
            id=path.stem,
            dataset="sprsound",
            patient=fields["patient"],
            device=DEVICE,
            location=fields["location"],
            annotation_path=path,
            split=split,
            record_label=record,
            extra={"age": fields["age"], "gender": "F" if fields["gender"] == "1" else "M", "order": fields["number"]},
        )
        info: AudioInfo | None = None
        if with_audio:
            wav = wav_dir / f"{path.stem}.wav"
            annotated_wavs.add(wav)
            if not wav.exists():
                scan.report(path, f"annotation has no audio {wav.name} in {wav_dir}", "skipped recording")
                continue
            info = scan.attach_audio(rec, wav)
            if info is None:
                continue
        rec.cycles = _event_cycles(scan, path, rec, events, mapping, info)
        if record != POOR_QUALITY and not events:
            scan.report(path, f"record labelled {record!r} has no events", "kept with no cycles")
        scan.recordings.append(rec)

    if with_audio:
        wav_dirs = sorted({root / wav_dir for _, wav_dir, _ in SPLIT_DIRS if (root / wav_dir).is_dir()})
        for wav in (w for d in wav_dirs for w in sorted(d.glob("*.wav"))):
            if wav not in annotated_wavs:
                scan.report(wav, "audio has no annotation .json", "skipped recording")
    return scan

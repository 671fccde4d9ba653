"""ICBHI 2017 Respiratory Sound Database: file names, annotations, official split.

Layout as released: `<patient>_<index>_<location>_<mode>_<device>.wav` beside a
`.txt` with one respiratory cycle a line (`start end crackle wheeze`), the
official split `<recording>\\t{train|test}` and a diagnosis table. A scan works
on annotations alone too (no audio), which is what reproduces the published
bookkeeping from the 920 annotation files.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from qlung_edge.audio import AudioInfo
from qlung_edge.errors import DataError
from training.records import Cycle, DatasetScan, Recording, label_from_flags

SPLIT_FILE_NAMES = ("official_split.txt", "ICBHI_challenge_train_test.txt")
DIAGNOSIS_FILE_NAMES = ("patient_diagnosis.csv", "ICBHI_Challenge_diagnosis.txt", "ICBHI_challenge_diagnosis.txt")
SPLIT_NAMES = ("train", "test")
CHEST_LOCATIONS = {
    "Tc": "trachea",
    "Al": "anterior left",
    "Ar": "anterior right",
    "Pl": "posterior left",
    "Pr": "posterior right",
    "Ll": "lateral left",
    "Lr": "lateral right",
}
ACQUISITION_MODES = {"sc": "sequential/single channel", "mc": "simultaneous/multichannel"}

_NAME = re.compile(
    r"^(?P<patient>\d+)_(?P<index>[0-9A-Za-z]+)_(?P<location>[A-Za-z]{2})_(?P<mode>sc|mc)_(?P<device>[0-9A-Za-z]+)$"
)


@dataclass(frozen=True)
class RecordingName:
    patient: str
    index: str
    location: str
    mode: str
    device: str


def parse_recording_name(name: str) -> RecordingName:
    """Split an ICBHI recording name (file stem) into its five fields."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not an ICBHI recording name (<patient>_<index>_<location>_<sc|mc>_<device>)")
    return RecordingName(**m.groupdict())


def read_split_file(path: str | Path) -> dict[str, str]:
    """Recording name to split; an unknown split name or a malformed line is an error."""
    path = Path(path)
    splits: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"expected '<recording> <split>', got {line.strip()!r}", path=path, line=number)
        name, split = fields
        if split not in SPLIT_NAMES:
            raise DataError(
                f"unknown split name {split!r} (expected one of {', '.join(SPLIT_NAMES)})", path=path, line=number
            )
        if name in splits and splits[name] != split:
            raise DataError(f"recording {name} is listed in both {splits[name]} and {split}", path=path, line=number)
        splits[name] = split
    return splits


def read_diagnosis_file(path: str | Path) -> dict[str, str]:
    """Patient id to diagnosis, from the CSV (with header) or the original tab-separated file."""
    path = Path(path)
    text = path.read_text()
    rows = list(csv.reader(text.splitlines(), delimiter="," if path.suffix == ".csv" else "\t"))
    out: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and not row[0].strip().isdigit()):
            continue  # blank line or header
        if len(row) < 2:
            raise DataError(f"expected '<patient>,<diagnosis>', got {','.join(row)!r}", path=path, line=number)
        out[row[0].strip()] = row[1].strip()
    return out


def _find_first(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    return None


def _parse_cycles(
    scan: DatasetScan,
    path: Path,
    rec: Recording,
    audio: AudioInfo | None,
) -> list[Cycle]:
    cycles: list[Cycle] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 4:
                raise ValueError(f"expected 4 fields 'start end crackle wheeze', got {len(fields)}")
            start, end = float(fields[0]), float(fields[1])
            label = label_from_flags(int(fields[2]), int(fields[3]))
            if not (0.0 <= start < end):
                raise ValueError(f"start {start} and end {end} do not make a cycle")
        except ValueError as err:
            scan.report(path, f"annotation line does not parse: {err}", "skipped line", number)
            continue
        fitted = scan.fit_to_audio(path, "cycle", start, end, audio.duration if audio else None, number)
        if fitted is not None:
            cycles.append(rec.cycle(start, fitted, label, f"{path}:{number}"))
    return cycles


def scan_icbhi(
    root: str | Path,
    *,
    split_file: str | Path | None = None,
    diagnosis_file: str | Path | None = None,
    with_audio: bool | None = None,
    strict: bool = False,
    progress: bool = True,
) -> DatasetScan:
    """Scan an ICBHI folder (searched recursively) into recordings and cycles.

    `with_audio=None` uses audio when the folder has any `.wav`; `False` scans
    annotations only. Problems are collected in `scan.problems` (and warned),
    or raised when `strict`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("ICBHI data folder does not exist", path=root)
    scan = DatasetScan("icbhi", root, strict=strict)

    annotations: dict[str, Path] = {}
    for txt in sorted(root.rglob("*.txt")):
        if _NAME.match(txt.stem):
            annotations.setdefault(txt.stem, txt)
    wavs = {p.stem: p for p in sorted(root.rglob("*.wav"))}
    if with_audio is None:
        with_audio = bool(wavs)
    if not annotations:
        raise DataError("no ICBHI annotation files (<patient>_<index>_<location>_<mode>_<device>.txt) found", path=root)

    split_path = Path(split_file) if split_file is not None else _find_first(root, SPLIT_FILE_NAMES)
    splits = read_split_file(split_path) if split_path is not None else {}
    diag_path = Path(diagnosis_file) if diagnosis_file is not None else _find_first(root, DIAGNOSIS_FILE_NAMES)
    diagnoses = read_diagnosis_file(diag_path) if diag_path is not None else {}

    for name, txt in tqdm(sorted(annotations.items()), desc="scan ICBHI", unit="rec", disable=not progress):
        fields = parse_recording_name(name)
        split = splits.get(name)
        if split_path is not None and split is None:
            scan.report(txt, f"recording {name} is not in the split file {split_path}", "kept without a split")
        rec = Recording(
            id=name,
            dataset="icbhi",
            patient=fields.patient,
            device=fields.device,
            location=fields.location,
            annotation_path=txt,
            split=split,
            extra={"index": fields.index, "mode": fields.mode},
        )
        if fields.patient in diagnoses:
            rec.extra["diagnosis"] = diagnoses[fields.patient]
        info: AudioInfo | None = None
        if with_audio:
            wav = wavs.get(name)
            if wav is None:
                scan.report(txt, "annotation has no .wav beside it", "skipped recording")
                continue
            info = scan.attach_audio(rec, wav)
            if info is None:
                continue
        rec.cycles = _parse_cycles(scan, txt, rec, info)
        if not rec.cycles:
            scan.report(txt, "annotation lists no usable cycles", "skipped recording")
            continue
        scan.recordings.append(rec)

    if with_audio:
        for name, wav in sorted(wavs.items()):
            if name not in annotations:
                scan.report(wav, "audio has no annotation .txt beside it", "skipped recording")
    for name in sorted(set(splits) - set(annotations)):
        scan.report(split_path or root, f"split lists {name}, which has no annotation file", "ignored")
    return scan

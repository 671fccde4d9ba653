"""The record and cycle types that every data set loader returns.

ICBHI and SPRSound differ in layout and vocabulary; after loading they are the
same thing: recordings of one patient on one device, each holding labelled
time spans ("cycles": respiratory cycles for ICBHI, events for SPRSound).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qlung_edge import CLASS_NAMES
from qlung_edge.audio import AudioInfo, audio_info
from qlung_edge.errors import AudioFileError, DataError

END_TOLERANCE_S = 0.01
"""Annotations that overrun the audio by less than this are clipped without a report (rounding in releases)."""


def label_from_flags(crackle: int, wheeze: int) -> int:
    """ICBHI's (crackle, wheeze) flags to the class index: normal, crackle, wheeze, both."""
    if crackle not in (0, 1) or wheeze not in (0, 1):
        raise ValueError(f"crackle and wheeze flags must be 0 or 1, got {crackle}, {wheeze}")
    return crackle + 2 * wheeze


@dataclass(frozen=True)
class Cycle:
    """One labelled span of a recording."""

    recording: str
    patient: str
    device: str
    start: float
    """Seconds from the start of the recording."""
    end: float
    label: int
    """Index into `CLASS_NAMES`."""
    split: str | None = None
    source: str = ""
    """Where the label came from, `file:line` or `file#event`, for error messages."""

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def label_name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclass
class Recording:
    id: str
    dataset: str
    patient: str
    device: str
    location: str
    annotation_path: Path
    audio_path: Path | None = None
    split: str | None = None
    sample_rate: int | None = None
    duration: float | None = None
    """Seconds of readable audio; None in an annotation-only scan."""
    record_label: str | None = None
    """SPRSound's record-level annotation (Normal, CAS, DAS, CAS & DAS, Poor Quality)."""
    cycles: list[Cycle] = field(default_factory=list)
    unlabelled: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) seconds of annotated events whose type the event mapping leaves out (SPRSound's Rhonchi and
    Stridor by default): a window overlapping one is neither trained on nor scored, since its label is unknown."""
    extra: dict[str, str] = field(default_factory=dict)
    """Dataset-specific fields; "order" (an integer as text), where the dataset gives it, is the recording's place
    in the order the recordings were made (SPRSound numbers its recordings so)."""

    def cycle(self, start: float, end: float, label: int, source: str) -> Cycle:
        return Cycle(self.id, self.patient, self.device, start, end, label, self.split, source)


@dataclass(frozen=True)
class Problem:
    """Something a scan skipped, changed or doubts, and where it is."""

    path: Path
    reason: str
    action: str
    """What the scan did about it: 'skipped recording', 'skipped line', 'clipped cycle', 'downmixed', ..."""
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.reason} ({self.action})"


@dataclass
class DatasetScan:
    """The outcome of scanning a data set folder: what was loaded and what was not."""

    dataset: str
    root: Path
    recordings: list[Recording] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    strict: bool = False

    def report(self, path: Path, reason: str, action: str, line: int | None = None) -> None:
        """Record a problem; in strict mode it is an error instead."""
        if self.strict:
            raise DataError(reason, path=path, line=line)
        problem = Problem(path=path, reason=reason, action=action, line=line)
        self.problems.append(problem)
        warnings.warn(str(problem), stacklevel=2)

    def attach_audio(self, rec: Recording, wav: Path) -> AudioInfo | None:
        """Check a recording's audio header and report what is wrong; None when the recording must be skipped."""
        try:
            info = audio_info(wav)
        except AudioFileError as err:
            self.report(wav, err.problem, "skipped recording")
            return None
        if info.frames == 0:
            self.report(wav, "holds no audio samples", "skipped recording")
            return None
        if info.truncated:
            found = f"truncated: header declares {info.declared_frames} frames, file holds {info.frames}"
            self.report(wav, found, "used the frames that are there")
        if info.channels > 1:
            self.report(wav, f"has {info.channels} channels, expected mono", "downmixed to mono")
        rec.audio_path, rec.sample_rate, rec.duration = wav, info.sample_rate, info.duration
        rec.extra["subtype"] = info.subtype
        return info

    def fit_to_audio(
        self, path: Path, what: str, start: float, end: float, duration: float | None, line: int | None = None
    ) -> float | None:
        """The span's end within the audio, or None when it starts past the end; either way reported."""
        if duration is None:
            return end
        action = "skipped line" if line is not None else "skipped event"
        if start >= duration:
            self.report(path, f"{what} {start:.3f}-{end:.3f} s lies outside the audio ({duration:.3f} s)", action, line)
            return None
        if end > duration + END_TOLERANCE_S:
            found = f"{what} {start:.3f}-{end:.3f} s runs past the end of the audio ({duration:.3f} s)"
            self.report(path, found, "clipped to the audio", line)
        return min(end, duration)

    def cycles(self, split: str | None = None) -> list[Cycle]:
        return [c for r in self.recordings if split is None or r.split == split for c in r.cycles]

    def recordings_in(self, split: str | None) -> list[Recording]:
        return [r for r in self.recordings if split is None or r.split == split]

    def splits(self) -> list[str]:
        return sorted({r.split for r in self.recordings if r.split is not None})

    def subset(self, recording_ids: Iterable[str]) -> DatasetScan:
        keep = set(recording_ids)
        return DatasetScan(self.dataset, self.root, [r for r in self.recordings if r.id in keep], list(self.problems))

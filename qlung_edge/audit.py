"""Audit recording: the last minutes of raw audio in memory, written out around abnormal findings.

A clinician or an auditor can listen to what the model heard. Clips are the source's own samples at its own
rate (not the model's 16 kHz copy), saved as WAV beside a JSON file with the event, readable by the daemon's
user only (0600: patient audio), named by capture time and run id so that a restart never overwrites a clip;
the folder is kept under a size cap by deleting the oldest clips.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np


def clip_name(event: dict[str, Any]) -> str:
    """`<stream>-<UTC capture time>-<run id>-<window>-<label>`: unique across restarts (the window index starts
    at 0 on every run) and sortable by when the sound was heard."""
    when = event["window"].get("start_utc") or event["time"]
    stamp = re.sub(r"[^0-9T]", "", when.split("+")[0].replace("Z", ""))
    window, label = event["window"]["index"], event["prediction"]["label"]
    return f"{event['stream']}-{stamp}Z-{event['run_id'][:8]}-{window:07d}-{label}"


@contextmanager
def _private(path: Path) -> Iterator[IO[bytes]]:
    """A new file only its owner can read: clips are patient audio, whatever the process umask says."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        yield f


@dataclass
class AuditRecorder:
    folder: Path
    keep_seconds: float = 120.0
    margin_seconds: float = 1.0
    max_bytes: int = 200_000_000
    labels: tuple[str, ...] = ("crackle", "wheeze", "both")
    min_probability: float = 0.5
    _blocks: deque[tuple[float, int, np.ndarray]] = field(default_factory=deque)
    _held: float = 0.0
    written: int = 0
    deleted: int = 0

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def add(self, start: float, rate: int, samples: np.ndarray) -> None:
        self._blocks.append((start, rate, samples))
        self._held += len(samples) / rate
        while self._blocks and self._held - len(self._blocks[0][2]) / self._blocks[0][1] >= self.keep_seconds:
            _, r, old = self._blocks.popleft()
            self._held -= len(old) / r

    def clip(self, start: float, end: float) -> tuple[np.ndarray, int] | None:
        """The raw audio between two stream times, at the rate of the latest block in that span."""
        parts = [(t, r, s) for t, r, s in self._blocks if t < end and t + len(s) / r > start]
        if not parts:
            return None
        rate = parts[-1][1]
        pieces = []
        for t, r, s in parts:
            if r != rate:
                continue
            a = max(0, round((start - t) * r))
            b = min(len(s), round((end - t) * r))
            pieces.append(s[a:b])
        return np.concatenate(pieces), rate

    def wants(self, event: dict[str, Any]) -> bool:
        prediction = event.get("prediction") or {}
        label = prediction.get("label")
        return label in self.labels and prediction.get("probabilities", {}).get(label, 0) >= self.min_probability

    def record(self, event: dict[str, Any]) -> Path | None:
        """Write the event's window (plus margins) if it is an abnormal finding; returns the WAV path."""
        import soundfile as sf

        if not self.wants(event):
            return None
        window = event["window"]
        got = self.clip(window["start"] - self.margin_seconds, window["end"] + self.margin_seconds)
        if got is None:
            return None
        samples, rate = got
        stem = self.folder / clip_name(event)
        wav, sidecar = stem.with_suffix(".wav"), stem.with_suffix(".json")
        clip_start = max(window["start"] - self.margin_seconds, 0.0)
        with _private(wav) as f:
            sf.write(f, samples, rate, subtype="FLOAT", format="WAV")
        with _private(sidecar) as f:
            f.write(json.dumps({"event": event, "clip_start": clip_start, "sample_rate": rate}, indent=1).encode())
        self.written += 1
        self._enforce_cap()
        return wav

    def _enforce_cap(self) -> None:
        files = sorted(self.folder.glob("*.wav"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            oldest.with_suffix(".json").unlink(missing_ok=True)
            self.deleted += 1

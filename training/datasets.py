"""The one entry point to a data folder: which layout it has, and the loader that reads it.

Every command that takes `--data DIR` (train, eval, eval-stream, quality-scan, data-summary, export's
calibration) comes through here, so a folder is always read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from qlung_edge.errors import DataError
from training.icbhi import scan_icbhi
from training.records import DatasetScan
from training.sprsound import DEFAULT_EVENT_MAPPING, scan_sprsound

LAYOUTS = ("icbhi", "sprsound")


def detect_layout(root: str | Path) -> str:
    """'sprsound' for a folder with SPRSound's json folders, else 'icbhi'."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("data folder does not exist", path=root)
    if (root / "train_json").is_dir() or (root / "test_json").is_dir():
        return "sprsound"
    return "icbhi"


def scan_folder(
    root: str | Path,
    dataset: str = "auto",
    *,
    with_audio: bool | None = None,
    split_file: str | Path | None = None,
    event_mapping: Mapping[str, int | None] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> DatasetScan:
    """Scan a data folder with the loader its layout calls for.

    `event_mapping` (SPRSound) changes the default mapping of event types to classes for the keys it names.
    """
    layout = detect_layout(root) if dataset == "auto" else dataset
    if layout == "icbhi":
        return scan_icbhi(root, split_file=split_file, with_audio=with_audio, strict=strict, progress=progress)
    if layout == "sprsound":
        mapping = {**DEFAULT_EVENT_MAPPING, **(event_mapping or {})}
        return scan_sprsound(
            root, event_mapping=mapping, with_audio=with_audio is not False, strict=strict, progress=progress
        )
    raise DataError(f"unknown dataset {dataset!r} (expected auto, {' or '.join(LAYOUTS)})", path=root)

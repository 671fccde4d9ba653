"""What the per-run report scripts share: their command line (measure each run given, write its JSON, print its
lines) and the window figures they report."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def report_runs(
    doc: str, file_name: str, measure: Callable[[Path], dict[str, Any]], describe: Callable[[dict[str, Any]], list[str]]
) -> None:
    """`python scripts/X.py RUN [RUN ...]`: RUN/file_name from measure(RUN), and a printed block per run.

    Each run's file is written before the next run is measured, so a long series stopped part way keeps what it did.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        result = measure(run)
        (run / file_name).write_text(json.dumps(result, indent=1))
        print("\n  ".join([f"{run}:", *describe(result)]), flush=True)


def scorer(model: Any, prepare: Callable[[list[Any], Any, str], Any]) -> Callable[[list[Any], Any, str], np.ndarray]:
    """(examples, geometry, name) -> class probabilities [N, C] of a checkpoint's model on CPU, the inputs prepared
    (and cached) by `prepare` (`training.verdicts.preparer`)."""
    import torch

    from training.dataset import ExampleDataset
    from training.engine import predict

    def probabilities(examples: list[Any], geometry: Any, name: str) -> np.ndarray:
        return predict(model, ExampleDataset(prepare(examples, geometry, name)), torch.device("cpu"), 64)

    return probabilities


def window_figures(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """ICBHI Score of window classes (normal, crackle, wheeze, both) and each class's recall (None if absent)."""
    from training.window_decision import window_score

    return {
        "score": window_score(truth, predicted),
        "recall": [float(np.mean(predicted[truth == k] == k)) if np.any(truth == k) else None for k in range(4)],
    }


def class_recalls(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Share of each class's items called that class, by class name, for the classes the truth holds."""
    from qlung_edge import CLASS_NAMES

    return {CLASS_NAMES[k]: float(np.mean(predicted[truth == k] == k)) for k in np.unique(truth)}


def own_and_abnormal(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Share of items called their own class, share called any abnormal class, and own class by class."""
    return {"own_class": float(np.mean(predicted == truth)), "abnormal": float(np.mean(predicted > 0)),
            "own_class_by_class": class_recalls(truth, predicted)}  # fmt: skip

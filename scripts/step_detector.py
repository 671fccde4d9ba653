"""Would the per-step event detector (train.event_timing, training/timing.py) call windows better than the window
head it was trained beside?

The detector is trained and never exported; this asks whether it should be. Every labelled window of the
validation and of the test patients is scored offline with the run's best.pt (no gate), three ways fixed in
advance: the window head's argmax (what the daemon does), the detector alone (a window holds a crackle or a wheeze
where any of its steps says so with probability at least 0.5), and the union of the two (a sound either finds).
Writes RUN/step_detector.json, prints a line per run.
Usage: python scripts/step_detector.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import report_runs, window_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLD = 0.5


def _class_of(crackle: np.ndarray, wheeze: np.ndarray) -> np.ndarray:
    """Class index (normal, crackle, wheeze, both) from presence of each sound."""
    return crackle.astype(int) + 2 * wheeze.astype(int)


def measure(run: Path) -> dict[str, Any]:
    import torch

    from qlung_edge import CLASS_NAMES
    from qlung_edge.batches import in_batches
    from training.dataset import recording_windows
    from training.engine import geometry_of, load_trained
    from training.verdicts import preparer

    if CLASS_NAMES != ("normal", "crackle", "wheeze", "both"):
        raise SystemExit(f"this script reads classes as normal, crackle, wheeze, both; the toolkit has {CLASS_NAMES}")
    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    geometry = geometry_of(config, "window")
    prepare = preparer(config, splits, progress=True)
    model.eval()

    @torch.no_grad()
    def called(x: np.ndarray) -> dict[str, np.ndarray]:
        """The head's probabilities and each sound's highest step probability, for a batch of cached inputs."""
        logits, step_logits = model.step_logits(torch.from_numpy(x))
        return {"head": logits.softmax(dim=1).numpy(), "steps": torch.sigmoid(step_logits).amax(dim=2).numpy()}

    result: dict[str, Any] = {"run": str(run), "threshold": THRESHOLD}
    for split in ("validation", "test"):
        recordings = [r for r in splits.recordings[split] if r.audio_path is not None]
        windows = [w for r in recordings for w in recording_windows(r, geometry) if w.label >= 0]
        truth = np.array([w.label for w in windows])
        out = in_batches(called, prepare(windows, geometry, f"{split} windows").inputs, 64)
        head_p, found = out["head"], out["steps"] >= THRESHOLD
        plain = head_p.argmax(axis=1)
        head_crackle, head_wheeze = np.isin(plain, (1, 3)), np.isin(plain, (2, 3))
        result[split] = {
            "windows": len(windows),
            "plain": window_figures(truth, plain),
            "detector": window_figures(truth, _class_of(found[:, 0], found[:, 1])),
            "union": window_figures(truth, _class_of(head_crackle | found[:, 0], head_wheeze | found[:, 1])),
        }
    return result


def _describe(r: dict[str, Any]) -> list[str]:
    return [
        f"{split}: " + ", ".join(f"{k} {100 * r[split][k]['score']:.2f}" for k in ("plain", "detector", "union"))
        for split in ("validation", "test")
    ]


def main() -> None:
    report_runs(__doc__, "step_detector.json", measure, _describe)


if __name__ == "__main__":
    main()

"""QLung's quality margin from a learned quality estimate instead of the AQS formula.

The paper's margin uses AQS, which on real stethoscope audio barely tells annotated poor recordings from good
ones (issue 17). A bundle that ships the learned estimate (`poor`, P(poor recording) per window) can score each
training example once before training; the margin then uses `1 - P(poor)` where the recipe names that bundle
(`data.quality_teacher`). The scores come from ONNX Runtime on the bundle's own graphs, the numbers the daemon
would compute, so a teacher is any verified bundle whose window matches the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlung_edge.bundle import load_bundle
from qlung_edge.errors import QLungError
from qlung_edge.onnx_sessions import onnx_session, run_onnx
from training.dataset import Prepared


@dataclass(frozen=True)
class TeacherScores:
    quality: np.ndarray
    """1 - P(poor) per example, float32 in [0, 1]."""
    model_id: str
    """The teacher bundle's manifest hash: which estimate shaped the margins."""
    graph: str
    """The bundle graph that scored the examples (network.onnx on cached log-mel, model.onnx on waveforms)."""


def teacher_quality(bundle_path: str | Path, prepared: Prepared, threads: int = 2, batch: int = 64) -> TeacherScores:
    """Score `prepared`'s examples with the teacher bundle's quality estimate."""
    bundle = load_bundle(bundle_path)
    graph = "network.onnx" if prepared.features else "model.onnx"
    if not bundle.has(graph):
        raise QLungError(f"has no {graph}, needed to score {'log-mel' if prepared.features else 'waveform'} inputs",
                         path=bundle.path)  # fmt: skip
    session = onnx_session(bundle.file(graph), threads=threads)
    if "poor" not in [o.name for o in session.get_outputs()]:
        raise QLungError("has no learned quality estimate (no `poor` output) to serve as a quality teacher",
                         path=bundle.path)  # fmt: skip
    expected = tuple(session.get_inputs()[0].shape[1:])
    given = tuple(prepared.inputs.shape[1:])
    if expected != given:
        raise QLungError(f"its {graph} takes inputs of shape {list(expected)}, this recipe's examples are "
                         f"{list(given)} (window length or front end differ)", path=bundle.path)  # fmt: skip
    if len(prepared) == 0:
        return TeacherScores(np.zeros(0, np.float32), bundle.manifest["manifest_sha256"], graph)
    poor = run_onnx(session, prepared.inputs, batch)["poor"].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(poor))
    if bad.size:
        first = prepared.examples[int(bad[0])]
        where = f"{first.recording} at {first.start:g}-{first.end:g} s"
        raise QLungError(f"its quality estimate is not finite on {bad.size} examples (first: {where})",
                         path=bundle.path)  # fmt: skip
    quality = np.clip(1.0 - poor, 0.0, 1.0).astype(np.float32)
    return TeacherScores(quality, bundle.manifest["manifest_sha256"], graph)

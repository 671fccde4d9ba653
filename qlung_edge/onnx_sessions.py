"""ONNX Runtime sessions for bundle models, set up the way an edge box wants them.

One thread by default and no spinning: the device also has to capture audio, and a spinning pool burns a
core waiting for the next window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qlung_edge.batches import in_batches

OUTPUT_NAMES = ("logits", "probabilities", "embedding")
"""Every bundle model's outputs; a model with a fitted quality estimate adds `poor` (P(poor recording))."""


def onnx_session(path: str | Path, threads: int = 1, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=chosen)


def run_onnx(session: Any, windows: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """Outputs by name for `windows` [N, samples], run `batch` windows at a time."""
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def run(chunk: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, {name: chunk})))

    return in_batches(run, windows, batch)

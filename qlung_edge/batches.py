"""Running a model over many windows a batch at a time: the one loop every backend and tool shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, Union

import numpy as np

Outputs = TypeVar("Outputs", bound=Union[np.ndarray, "dict[str, np.ndarray]"])


def in_batches(run: Callable[[np.ndarray], Outputs], windows: np.ndarray, batch: int) -> Outputs:
    """`run` on `windows` [N, ...] `batch` rows at a time (contiguous float32), outputs joined along rows.

    `run` returns an array or a dict of arrays; the result has the same form.
    """
    if len(windows) == 0:
        raise ValueError("no windows to run")
    batch = max(int(batch), 1)
    parts = [run(np.ascontiguousarray(windows[i : i + batch], dtype=np.float32)) for i in range(0, len(windows), batch)]
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # type: ignore[return-value]
    return np.concatenate(parts)  # type: ignore[return-value]

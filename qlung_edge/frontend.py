"""The model's front end on the CPU: audio of any length in, its log-mel frames out.

The incremental path runs it on each hop's new samples only (`streaming.FrameRing`). Three ways to run the one
filterbank: the bundle's dense-DFT graph (`dft`), its FFT graph (`fft`, ONNX Runtime's DFT op) and scipy's
FFT on the manifest's filterbank settings (`pocketfft`, no graph); the export measures them and names the
fastest, and `daemon --check` holds the one in use to the bundle's graphs on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from qlung_edge.bundle import Bundle, BundleError
from qlung_edge.filterbank import FrameBuffer, FrontEndConfig, pocketfft_logmel
from qlung_edge.onnx_sessions import onnx_session
from qlung_edge.streaming import FrameRing, FrontEnd

FRONTEND_VARIANTS = ("dft", "fft", "pocketfft")
FRAME_TOLERANCE = 1e-5
"""Normalised log-mel: frames computed block by block vs the same front end on the whole window, and the
float64 front ends (fft, pocketfft) vs each other."""
DFT_AGREEMENT = 1e-3
"""The float32 dense DFT vs the float64 ones: float32 rounding in bands 100 dB below a frame's peak reaches
~2e-4 on real recordings; a wrong kernel differs by 1e-1 and more."""


class OnnxFrontEnd:
    """Callable: samples [n] at the model's rate (n >= one frame) to frames [(n - 400) // 160 + 1, mels]."""

    def __init__(self, path: str | Path, threads: int = 1, variant: str = "dft") -> None:
        self.path, self.variant = Path(path), variant
        self._session: Any = onnx_session(self.path, threads=threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        audio = np.ascontiguousarray(samples, dtype=np.float32)[None]
        return self._session.run([self._output], {self._input: audio})[0][0]


class PocketFFTFrontEnd:
    """The filterbank in numpy and scipy's FFT, with the settings the bundle records."""

    def __init__(self, config: FrontEndConfig, path: str | Path) -> None:
        self.config, self.path, self.variant = config, Path(path), "pocketfft"
        self.buffer = FrameBuffer()
        pocketfft_logmel(np.zeros(config.frame_length, np.float32), config)  # tables and imports now, not mid-stream

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return pocketfft_logmel(samples, self.config, self.buffer)


AnyFrontEnd = Union[OnnxFrontEnd, PocketFFTFrontEnd]


def incremental_record(bundle: Bundle) -> dict[str, Any] | None:
    """The manifest's description of the split model (front end + network), if the bundle has one."""
    return bundle.manifest.get("incremental")


def open_frontend(bundle: Bundle, variant: str | None = None, threads: int = 1) -> AnyFrontEnd:
    """The bundle's front end; `variant` None takes the one the export measured fastest."""
    record = incremental_record(bundle)
    if record is None:
        raise BundleError("has no front-end graph for the incremental path (re-export it)", path=bundle.path)
    chosen = variant or record["frontend"]
    variants = record["frontend_variants"]
    if chosen not in variants:
        raise BundleError(f"has no {chosen!r} front end (it has {', '.join(sorted(variants))})", path=bundle.path)
    if chosen == "pocketfft":
        return PocketFFTFrontEnd(FrontEndConfig(**record["frontend_config"]), bundle.path)
    return OnnxFrontEnd(bundle.file(variants[chosen]["file"]), threads=threads, variant=chosen)


def frames_block_by_block(frontend: FrontEnd, samples: np.ndarray, rng: np.random.Generator,
                          frames: int) -> np.ndarray:  # fmt: skip
    """The last `frames` frames of `samples` as the daemon computes them: audio arriving in random-sized blocks
    (1 to 4000 samples), each frame computed once by `frontend`."""
    ring = FrameRing(frontend, frames + 1)
    position = 0
    while position < len(samples):
        size = int(rng.integers(1, 4000))
        ring.push(samples[position : position + size])
        position += size
    return ring.window(ring.count - frames, frames)


def block_by_block_difference(frontend: FrontEnd, windows: np.ndarray, seed: int = 0) -> float:
    """Max |frames block by block - frames of the whole window| over `windows` [N, samples]."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for window in windows:
        whole = frontend(window)
        worst = max(worst, float(np.abs(frames_block_by_block(frontend, window, rng, len(whole)) - whole).max()))
    return worst

"""qlung-edge: QLung respiratory-sound classification on the edge.


The on-device runtime lives here and never imports torch at module level, so a
stethoscope box can run it with numpy and onnxruntime alone. The constants below
are the one place the model's input geometry is written down.
"""

from __future__ import annotations

__version__ = "0.2.0"

CLASS_NAMES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")
"""The four ICBHI classes, in the order every model and metric uses."""

MODEL_SAMPLE_RATE = 16_000
"""Rate of the waveform the models see (the AST/Kaldi front end assumes 16 kHz)."""

WINDOW_SECONDS = 8.0
"""Length of one model input: cycles and streaming windows are cut or repeat-padded to this."""

WINDOW_SAMPLES = int(WINDOW_SECONDS * MODEL_SAMPLE_RATE)
"""128 000 samples at 16 kHz."""

FRAME_LENGTH = 400
"""25 ms analysis frames at 16 kHz, for both the log-mel front end and the quality score."""

FRAME_HOP = 160
"""10 ms between frames at 16 kHz."""


def frames_in(samples: int) -> int:
    """Whole 25 ms frames at a 10 ms hop in `samples` (Kaldi's snip_edges): 798 for an 8 s window."""
    return 0 if samples < FRAME_LENGTH else 1 + (samples - FRAME_LENGTH) // FRAME_HOP


FRAMES_PER_WINDOW = frames_in(WINDOW_SAMPLES)
"""798 log-mel (and quality) frames per 8 s window."""


def __getattr__(name: str) -> object:
    """`from qlung_edge import Classifier` without loading ONNX Runtime for those who only need the constants."""
    if name in ("Classifier", "Classification", "ClassifierStream"):
        from qlung_edge import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'qlung_edge' has no attribute {name!r}")

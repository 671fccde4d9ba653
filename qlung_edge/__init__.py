"""qlung-edge: QLung respiratory-sound classification on the edge.

The on-device runtime lives here and never imports torch at module level, so a
stethoscope box can run it with numpy and onnxruntime alone.
"""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")
"""The four ICBHI classes, in the order every model and metric uses."""

MODEL_SAMPLE_RATE = 16_000
"""Rate of the waveform the models see (the AST/Kaldi front end assumes 16 kHz)."""

WINDOW_SECONDS = 8.0
"""Length of one model input: cycles and streaming windows are cut or repeat-padded to this."""

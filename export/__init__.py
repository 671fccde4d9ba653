"""Turning a trained checkpoint into a model bundle the device can verify: ONNX, INT8, TensorRT."""

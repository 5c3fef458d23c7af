"""Execution backends: ``reference`` (ONNX Runtime, the numeric oracle) and ``tvm`` (Lamina's
compiled path)."""

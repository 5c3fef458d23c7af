"""The ONNX frontend: loading, validation, opset conversion and input-shape specification."""

from __future__ import annotations

from lamina.compiler.frontend.loader import TARGET_OPSET, load_model, load_proto, save_model
from lamina.compiler.frontend.shapes import (
    apply_shapes,
    parse_dim,
    parse_input_shape,
    specialize,
    symbolic_dims,
)

__all__ = [
    "TARGET_OPSET",
    "apply_shapes",
    "load_model",
    "load_proto",
    "parse_dim",
    "parse_input_shape",
    "save_model",
    "specialize",
    "symbolic_dims",
]

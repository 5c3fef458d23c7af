"""Lowering from a static, canonical ONNX graph (``onnx_ir.Model``) to Relax.

- :mod:`.registry`: ``@converter(op, domain=...)`` and the :class:`Const` value kind.
- :mod:`.context`: :class:`LowerContext`, what a converter sees.
- :mod:`.graph`: :func:`lower_function`, one graph to one Relax function.
- :mod:`.module`: :func:`lower_buckets`, one function per (batch, seq) bucket in one module.
- :mod:`.ops`: the built-in converters, one file per operator group.
"""

from __future__ import annotations

from .graph import FunctionInfo, TensorSpec, lower_function
from .module import LoweredModule, bucket_function_name, lower_buckets
from .registry import Const, converter, supported_ops

__all__ = ["Const", "FunctionInfo", "LoweredModule", "TensorSpec", "bucket_function_name",
           "converter", "lower_buckets", "lower_function", "supported_ops"]

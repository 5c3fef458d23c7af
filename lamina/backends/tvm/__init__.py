"""TVM backend: lower static canonical graphs to Relax, build for the host CPU, run artifacts.

Public API (``import tvm`` happens only inside this package):

- :func:`build_artifact` (``api``): ``{(batch, seq): onnx_ir.Model}`` -> ``NAME.lamina/``.
- :func:`load` (``runtime``): verify and load an artifact; ``.run(feeds) -> outputs``.
- :func:`parse_buckets`, :func:`default_buckets` (``buckets``, no TVM import).
- :func:`resolve_target` (``target``): ``auto`` / ``host`` / ISA presets / TVM target JSON.

Modules: ``lower/`` (ONNX -> Relax converters), ``build`` (TVM stages), ``artifact`` (format,
atomic write, verification), ``runtime`` (buckets, padding, feeds), ``target``; ``kernels/`` and
``tuning/`` hold hand-written kernels and MetaSchedule tuning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .buckets import default_buckets, format_buckets, parse_buckets

if TYPE_CHECKING:  # pragma: no cover
    from .api import build_artifact, check_precision_target, int8_weight_bits, io_dims_from_model
    from .runtime import CompiledModel, load
    from .target import resolve_target

__all__ = ["CompiledModel", "build_artifact", "check_precision_target", "default_buckets",
           "format_buckets",
           "int8_weight_bits", "io_dims_from_model", "load", "parse_buckets", "resolve_target"]

_LAZY = {"build_artifact": "api", "check_precision_target": "api", "io_dims_from_model": "api",
         "int8_weight_bits": "api",
         "load": "runtime", "CompiledModel": "runtime", "resolve_target": "target"}


def __getattr__(name: str) -> Any:
    # Lazy: loading an artifact must not import the lowering (onnx_ir) or build machinery.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

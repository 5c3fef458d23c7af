"""Converter registry: ``(domain, op_type) -> function`` lowering one ONNX node to Relax.

A converter is a plain function ``fn(ctx, node, inputs) -> outputs`` where ``inputs`` holds one
value per node input (``None`` for an omitted optional input) and ``outputs`` is one value or a
list of values, one per node output. A value is either a Relax expression or a :class:`Const`
(a NumPy array known at compile time: shape arithmetic folds on these without reaching TVM).

Adding an operator, including a fused ``lamina``-domain op, is one decorated function::

    @converter("Attention", domain="lamina")
    def attention(ctx, node, inputs):
        q, k, v, mask = inputs
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir
    from tvm import relax

    from .context import LowerContext


@dataclass(frozen=True, eq=False)
class Const:
    """A compile-time tensor; ``name`` is the initializer it came from verbatim, if any.

    Named constants with more than one element become Relax function parameters (weights kept
    out of the library); the others are embedded as Relax constants when an op needs them.
    """

    value: np.ndarray
    name: str | None = None


# What flows between converters: a Relax expression, or a compile-time constant.
Value = Union["relax.Expr", Const]  # noqa: UP007 - a runtime alias with a forward reference
# A converter's result: one value, or one per node output (None for an output nobody computes,
# e.g. LayerNormalization's optional Mean / InvStdDev).
ConverterResult = Union[Value, Sequence[Union[Value, None]]]  # noqa: UP007
ConverterFn = Callable[["LowerContext", "ir.Node", list[Union[Value, None]]], ConverterResult]  # noqa: UP007

_DEFAULT_DOMAINS = ("", "ai.onnx")
_REGISTRY: dict[tuple[str, str], ConverterFn] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in _DEFAULT_DOMAINS else domain


def converter(*op_types: str, domain: str = "") -> Callable[[ConverterFn], ConverterFn]:
    """Register ``fn`` as the converter of ``op_types`` in ``domain`` (default: ONNX)."""

    def register(fn: ConverterFn) -> ConverterFn:
        for op_type in op_types:
            key = (_norm_domain(domain), op_type)
            if key in _REGISTRY:
                raise ValueError(f"converter for {domain or 'ai.onnx'}::{op_type} registered twice")
            _REGISTRY[key] = fn
        return fn

    return register


def lookup(domain: str, op_type: str) -> ConverterFn | None:
    """The converter for ``domain::op_type``, or None."""
    _load_builtin_ops()
    return _REGISTRY.get((_norm_domain(domain), op_type))


def supported_ops() -> list[str]:
    """Sorted ``domain::op`` names (``op`` alone for ONNX) that the lowering handles."""
    _load_builtin_ops()
    return sorted(f"{d}::{o}" if d else o for d, o in _REGISTRY)


_loaded = False


def _load_builtin_ops() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers the built-in converters)

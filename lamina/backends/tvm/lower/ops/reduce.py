"""Reductions: ReduceMean/Sum/Max/Min/Prod/SumSquare/L2, ArgMax/ArgMin."""

from __future__ import annotations

import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, normalize_axis
from ..registry import converter

_REDUCE = {
    "ReduceMean": relax.op.mean,
    "ReduceSum": relax.op.sum,
    "ReduceMax": relax.op.max,
    "ReduceMin": relax.op.min,
    "ReduceProd": relax.op.prod,
}
# Opset from which `axes` is an input rather than an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _axes(ctx: LowerContext, node: ir.Node, inputs, rank: int) -> list[int] | None:
    if ctx.opset() >= _AXES_INPUT_SINCE.get(node.op_type, 18):
        axes_in = inputs[1] if len(inputs) > 1 else None
        axes = None if axes_in is None else ctx.const_ints(axes_in, "axes")
    else:
        axes = ctx.attr_ints(node, "axes")
    if not axes:
        return None
    return sorted(normalize_axis(ctx, a, rank) for a in axes)


@converter("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
           "ReduceSumSquare", "ReduceL2")
def reduce(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    rank = ctx.rank(x)
    axes = _axes(ctx, node, inputs, rank)
    keepdims = bool(ctx.attr(node, "keepdims", 1))
    if axes is None:
        if ctx.attr(node, "noop_with_empty_axes", 0):
            return x
        axes = list(range(rank))
    data = ctx.expr(x)
    if node.op_type in ("ReduceSumSquare", "ReduceL2"):
        data = ctx.emit(relax.op.multiply(data, data))
        out = ctx.emit(relax.op.sum(data, axes, keepdims))
        return ctx.emit(relax.op.sqrt(out)) if node.op_type == "ReduceL2" else out
    return ctx.emit(_REDUCE[node.op_type](data, axes, keepdims))


@converter("ArgMax", "ArgMin")
def arg_reduce(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 0)), ctx.rank(x))
    keepdims = bool(ctx.attr(node, "keepdims", 1))
    fn = relax.op.argmax if node.op_type == "ArgMax" else relax.op.argmin
    if ctx.attr(node, "select_last_index", 0):
        # The last of tied extremes: the first one along the reversed axis, counted from the end.
        n = ctx.shape(x)[axis]
        first = ctx.emit(fn(relax.op.flip(ctx.expr(x), axis), axis, keepdims))
        out = ctx.emit(
            relax.op.subtract(relax.const(n - 1, "int64"), relax.op.astype(first, "int64"))
        )
        return out
    out = ctx.emit(fn(ctx.expr(x), axis, keepdims))
    return ctx.cast(out, "int64")

"""Indexing: Gather, GatherElements, GatherND."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, normalize_axis
from ..registry import Const, converter


def _indices(ctx: LowerContext, idx, dim: int):
    """ONNX allows negative indices (counted from the end): constants are normalized here;
    run-time indices go to ``take(mode="wrap")``, which also maps them and can never read out of
    bounds (the default "fast" mode would crash the process on a bad token id)."""
    if isinstance(idx, Const):
        arr = np.asarray(idx.value).astype(np.int64)
        arr = np.where(arr < 0, arr + dim, arr)
        return relax.const(arr, "int64")
    return ctx.expr(idx)


@converter("Gather")
def gather(ctx: LowerContext, node: ir.Node, inputs):
    data, idx = inputs
    shape = ctx.shape(data)
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 0)), len(shape))
    if isinstance(data, Const) and isinstance(idx, Const) and data.name is None:
        return Const(np.take(data.value, np.asarray(idx.value), axis=axis))
    mode = "clip" if isinstance(idx, Const) else "wrap"  # "fast" warns, and crashes on OOB
    return ctx.emit(relax.op.take(ctx.expr(data), _indices(ctx, idx, shape[axis]), axis=axis,
                                  mode=mode))


@converter("GatherElements")
def gather_elements(ctx: LowerContext, node: ir.Node, inputs):
    data, idx = inputs
    shape = ctx.shape(data)
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 0)), len(shape))
    if isinstance(idx, Const):
        ind = _indices(ctx, idx, shape[axis])
    else:  # run-time indices may be negative (counted from the end)
        iv = ctx.expr(idx)
        dt = ctx.dtype(idx)
        ind = ctx.emit(relax.op.where(relax.op.less(iv, relax.const(0, dt)),
                                      relax.op.add(iv, relax.const(shape[axis], dt)), iv))
    return ctx.emit(relax.op.gather_elements(ctx.expr(data), ind, axis=axis))


@converter("GatherND")
def gather_nd(ctx: LowerContext, node: ir.Node, inputs):
    data, idx = inputs
    batch_dims = int(ctx.attr(node, "batch_dims", 0))
    return ctx.emit(relax.op.gather_nd(ctx.expr(data), ctx.expr(ctx.cast(idx, "int64")),
                                       batch_dims=batch_dims))

"""``lamina::SparseLinear`` (created by ``encode-sparsity``) through the block-sparse kernel."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext
from ..registry import Const, converter
from ._dense import EPILOGUES


def _rows(ctx: LowerContext, x) -> int:
    return int(np.prod(ctx.shape(x)[:-1]))


@converter("SparseLinear", domain="lamina")
def sparse_linear(ctx: LowerContext, node: ir.Node, inputs):
    """``y = act(X @ W + B) (+ R)`` with ``W`` given as blocks (``data``, ``index``)."""
    from ...kernels.sparse_dense import emit_sparse_dense, from_index

    act = ctx.attr(node, "activation", "none")
    if act not in EPILOGUES:
        raise ctx.error(f"activation={act!r} is not supported")
    k, n = int(ctx.attr(node, "in_features")), int(ctx.attr(node, "out_features"))
    data, index = inputs[1], inputs[2]
    if not isinstance(data, Const) or not isinstance(index, Const):
        raise ctx.error("data and index must be constants (initializers)")
    sw = from_index(np.asarray(index.value), np.asarray(data.value), k, n)
    has_res = int(ctx.attr(node, "has_residual", 0))
    residual = ctx.expr(inputs[4]) if has_res else None
    bias = ctx.expr(inputs[3])
    if ctx.target is None or ctx.dtype(inputs[0]) != "float32":
        # No kernels: the reference math on the dense weight.
        y = ctx.emit(
            relax.op.add(relax.op.matmul(ctx.expr(inputs[0]), relax.const(sw.to_dense())), bias)
        )
        if act != "none":
            y = ctx.emit(relax.op.nn.gelu(y) if act == "gelu" else relax.op.nn.gelu_tanh(y))
        return ctx.emit(relax.op.add(y, residual)) if residual is not None else y
    y, params = emit_sparse_dense(
        ctx.bb,
        ctx.expr(inputs[0]),
        sw,
        bias,
        epilogue=EPILOGUES[act],
        residual=residual,
        target=ctx.target,
        param_name=data.name or node.name or "sparse",
        config=ctx.tiles.sparse(_rows(ctx, inputs[0]), sw, ctx.target)
        if ctx.tiles is not None else None,
    )
    for name, var, arr in params:
        ctx.add_param(name, var, arr)
    return y

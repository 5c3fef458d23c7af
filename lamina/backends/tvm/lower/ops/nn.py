"""Linear algebra and normalization: MatMul, Gemm, Softmax, LogSoftmax, LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, normalize_axis
from ..registry import converter
from ._dense import emit_kernel_dense, kernel_weight
from .quant_dense import claim_quantization, emit_int8_dense, store_quantized


@converter("MatMul")
def matmul(ctx: LowerContext, node: ir.Node, inputs):
    a, b = inputs
    q = ctx.int8.get(node)
    if q is not None:
        return emit_int8_dense(ctx, q)
    weight = kernel_weight(ctx, b)
    if weight is not None and len(ctx.shape(a)) >= 2:
        return emit_kernel_dense(ctx, a, b, weight)
    return ctx.emit(relax.op.matmul(ctx.expr(a), ctx.expr(b)))


@converter("Gemm")
def gemm(ctx: LowerContext, node: ir.Node, inputs):
    c = inputs[2] if len(inputs) > 2 else None
    alpha = float(ctx.attr(node, "alpha", 1.0))
    beta = float(ctx.attr(node, "beta", 1.0))
    trans_b = int(ctx.attr(node, "transB", 0))
    q = ctx.int8.get(node)
    if q is not None:
        return emit_int8_dense(ctx, q, bias=c)
    weight = kernel_weight(ctx, inputs[1])
    if (
        weight is not None
        and not ctx.attr(node, "transA", 0)
        and alpha == 1.0
        and (c is None or beta == 1.0 and _is_row_bias(ctx, c, weight.shape[0 if trans_b else 1]))
    ):
        # A Linear layer exported as Gemm (the BERT pooler): the packed-weight kernel, with the
        # transpose of B done once at compile time instead of on every call.
        return emit_kernel_dense(ctx, inputs[0], inputs[1], weight, bias=c,
                                 layout="NK" if trans_b else "KN")
    a, b = ctx.expr(inputs[0]), ctx.expr(inputs[1])
    if ctx.attr(node, "transA", 0):
        a = ctx.emit(relax.op.permute_dims(a, [1, 0]))
    if ctx.attr(node, "transB", 0):
        b = ctx.emit(relax.op.permute_dims(b, [1, 0]))
    dtype = ctx.dtype(a)
    y = ctx.emit(relax.op.matmul(a, b))
    if alpha != 1.0:
        y = ctx.emit(relax.op.multiply(y, relax.const(alpha, dtype)))
    if c is not None and beta != 0.0:
        cv = ctx.expr(c)
        if beta != 1.0:
            cv = ctx.emit(relax.op.multiply(cv, relax.const(beta, dtype)))
        y = ctx.emit(relax.op.add(y, cv))
    return y


def _is_row_bias(ctx: LowerContext, c, n: int) -> bool:
    """C is a float32 ``[N]`` vector (the kernel's bias operand)."""
    return ctx.dtype(c) == "float32" and list(ctx.shape(c)) == [n]


def _softmax(ctx: LowerContext, node: ir.Node, x, fn):
    rank = ctx.rank(x)
    if ctx.opset() >= 13:
        axis = normalize_axis(ctx, int(ctx.attr(node, "axis", -1)), rank)
        return ctx.emit(fn(ctx.expr(x), axis=axis))
    # Opset < 13: the input is coerced to 2-D at `axis` (default 1) and normalized per row.
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 1)), rank)
    shape = ctx.shape(x)
    if axis == rank - 1:
        return ctx.emit(fn(ctx.expr(x), axis=axis))
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    flat = ctx.emit(relax.op.reshape(ctx.expr(x), [rows, -1]))
    y = ctx.emit(fn(flat, axis=1))
    return ctx.emit(relax.op.reshape(y, shape))


@converter("Softmax")
def softmax(ctx: LowerContext, node: ir.Node, inputs):
    return _softmax(ctx, node, inputs[0], relax.op.nn.softmax)


@converter("LogSoftmax")
def log_softmax(ctx: LowerContext, node: ir.Node, inputs):
    return _softmax(ctx, node, inputs[0], relax.op.nn.log_softmax)


_ONNX = ("", "ai.onnx")


def _embedding_terms(ctx: LowerContext, xv: ir.Value, shape: list[int]):
    """A LayerNorm input that is a sum (a tree of ``Add`` read only by it) of one to three
    ``Gather``s of float32 ``[vocabulary, n]`` initializers by run-time ids of the input's
    ``[..., n]`` leading shape, and at most one other float32 term broadcast over leading dims
    (``[seq, n]`` under ``[batch, seq, n]``): ``(tables, dense)`` for
    ``layernorm.emit_embedding_layer_norm``, with ``tables`` ``[(ids, table, vocabulary, ids
    dtype)]`` and ``dense`` ``(expression, rows)`` or None. None for anything else."""
    from ...kernels._rows import lanes_for

    n = shape[-1]
    if len(shape) < 2 or lanes_for(n, ctx.target) == 1 or ctx.dtype(ctx.env[xv]) != "float32":
        return None

    def single(v: ir.Value) -> bool:
        return len(v.uses()) == 1 and not v.is_graph_output()

    leaves: list[ir.Value] = []

    def walk(v: ir.Value) -> None:
        p = v.producer()
        if p is not None and p.op_type == "Add" and p.domain in _ONNX and single(v):
            for i in p.inputs:
                walk(i)
        else:
            leaves.append(v)

    walk(xv)
    if len(leaves) < 2:
        return None
    tables, dense = [], None
    for v in leaves:
        p = v.producer()
        if (p is not None and p.op_type == "Gather" and p.domain in _ONNX and single(v)
                and int(ctx.attr(p, "axis", 0)) == 0):
            table, ids = p.inputs
            t = table.const_value
            iv = ctx.env.get(ids)
            if (t is not None and t.dtype == ir.DataType.FLOAT and len(t.shape) == 2
                    and t.shape[1] == n and iv is not None and ids.const_value is None
                    and ctx.dtype(iv) in ("int64", "int32") and ctx.shape(iv) == shape[:-1]):
                tables.append((iv, ctx.expr(ctx.env[table]), int(t.shape[0]), ctx.dtype(iv)))
                continue
        value = ctx.env.get(v)
        if dense is not None or value is None or ctx.dtype(value) != "float32":
            return None
        dims = ctx.shape(value)
        while dims and dims[0] == 1 and len(dims) > 1:
            dims = dims[1:]
        if dims[-1] != n or dims != shape[len(shape) - len(dims):]:
            return None
        dense = (ctx.expr(value), int(np.prod(dims[:-1], dtype=np.int64)))
    if not 1 <= len(tables) <= 3:
        return None
    return tables, dense


@converter("LayerNormalization")
def layer_norm(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    scale = inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    stats_used = any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:])
    shape = ctx.shape(x)
    rank = len(shape)
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", -1)), rank)
    norm_shape = shape[axis:]
    dtype = ctx.dtype(x)
    eps = float(ctx.attr(node, "epsilon", 1e-5))

    def operand(v, fill: float):
        if v is None:
            return relax.const(np.full(norm_shape, fill, dtype=dtype), dtype)
        if ctx.shape(v) != norm_shape:
            e = ctx.expr(v)
            return ctx.emit(relax.op.broadcast_to(e, norm_shape))
        return ctx.expr(v)

    gamma = operand(scale, 1.0)
    beta = operand(bias, 0.0)
    if stats_used:
        # Training-style outputs: Mean and InvStdDev = 1 / sqrt(Var + eps) over the normalized
        # axes, kept as size-1 dims (ONNX's shape), and Y computed from them.
        axes = list(range(axis, rank))
        xe = ctx.expr(x)
        mean = ctx.emit(relax.op.mean(xe, axes, keepdims=True))
        centered = ctx.emit(relax.op.subtract(xe, mean))
        var = ctx.emit(relax.op.mean(relax.op.multiply(centered, centered), axes, keepdims=True))
        inv = ctx.emit(relax.op.rsqrt(relax.op.add(var, relax.const(eps, dtype))))
        y = ctx.emit(relax.op.add(relax.op.multiply(relax.op.multiply(centered, inv), gamma), beta))
        return [y, mean, inv]
    if ctx.target is not None and dtype == "float32" and axis == rank - 1:
        from ...kernels.layernorm import emit_layer_norm

        # An INT8 consumer's quantization of the output, fused into the LayerNorm kernel.
        q = ctx.int8_out.get(node.outputs[0])
        rows = int(np.prod(shape[:-1]))
        claim = claim_quantization(ctx, q, rows, shape[-1]) if q is not None else None
        # Embedding lookups summed into this LayerNorm (BERT's embeddings) run in its kernel.
        terms = _embedding_terms(ctx, node.inputs[0], shape)
        if terms is not None:
            from ...kernels.layernorm import emit_embedding_layer_norm

            quant = None if claim is None else (claim[1], claim[2], q.signed)
            out = emit_embedding_layer_norm(ctx.bb, *terms, gamma, beta, shape, eps, ctx.target,
                                            quant)
            if claim is None:
                return [out, None, None]
            store_quantized(ctx, q, claim[0], out[1])
            return [out[0], None, None]
        # An INT8 dense whose output only this LayerNorm reads runs it in the same kernel.
        fuse = ctx.int8_ln_forms.get(ctx.expr(x))
        xv = node.inputs[0]
        if fuse is not None and (xv.is_graph_output() or len(xv.uses()) != 1):
            fuse = None
        if claim is None:
            if fuse is not None:
                return [fuse(gamma, beta, eps, None), None, None]
            return [emit_layer_norm(ctx.bb, ctx.expr(x), gamma, beta, shape, eps,
                                    ctx.target), None, None]
        key, s, qo = claim
        if fuse is not None:
            y, yq = fuse(gamma, beta, eps, (s, qo, q.signed))
            store_quantized(ctx, q, key, yq)
            return [y, None, None]
        y, yq = emit_layer_norm(ctx.bb, ctx.expr(x), gamma, beta, shape, eps, ctx.target,
                                quant=(s, qo, q.signed))
        store_quantized(ctx, q, key, yq)
        return [y, None, None]
    y = ctx.emit(relax.op.nn.layer_norm(ctx.expr(x), gamma, beta,
                                        axes=list(range(axis, rank)), epsilon=eps))
    return [y, None, None]

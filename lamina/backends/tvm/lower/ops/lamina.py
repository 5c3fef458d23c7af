"""Fused ``lamina``-domain ops (reference definitions in ``compiler/ir/ops/``).

With a target (``ctx.target``) and float32, ``Linear`` and ``Attention`` lower to the hand-written
kernels (``kernels/``: packed-weight dense with fused epilogues, the fused attention kernel), whose
order of operations differs from the reference (blocked, vectorised reductions), so results
match it within float32 tolerances, not bit for bit. Without a target, or for what the kernels do
not cover (an additive mask, other dtypes), each op lowers to the Relax ops of its reference
definition.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from lamina.compiler.ir.ops.attention import MASK_FILL

from ..context import LowerContext
from ..registry import converter
from ._dense import emit_kernel_dense, kernel_weight
from .quant_dense import emit_int8_dense


def _gelu(x: relax.Expr, approximate: str) -> relax.Expr:
    return relax.op.nn.gelu_tanh(x) if approximate == "tanh" else relax.op.nn.gelu(x)


@converter("Gelu", domain="lamina")
def gelu(ctx: LowerContext, node: ir.Node, inputs):
    approx = ctx.attr(node, "approximate", "none")
    if approx not in ("none", "tanh"):
        raise ctx.error(f"approximate={approx!r} is not supported")
    return ctx.emit(_gelu(ctx.expr(inputs[0]), approx))


_ACTIVATIONS = {"none": None, "gelu": "none", "gelu_tanh": "tanh"}


@converter("Linear", domain="lamina")
def linear(ctx: LowerContext, node: ir.Node, inputs):
    """``y = act(X @ W + B) (+ R)``."""
    act = ctx.attr(node, "activation", "none")
    if act not in _ACTIVATIONS:
        raise ctx.error(f"activation={act!r} is not supported")
    has_res = int(ctx.attr(node, "has_residual", 0))
    q = ctx.int8.get(node)
    if q is not None:
        return emit_int8_dense(ctx, q, bias=inputs[2], activation=act,
                               residual=inputs[3] if has_res else None)
    weight = kernel_weight(ctx, inputs[1])
    if weight is not None and len(ctx.shape(inputs[0])) >= 2:
        return emit_kernel_dense(ctx, inputs[0], inputs[1], weight, bias=inputs[2], activation=act,
                                 residual=inputs[3] if has_res else None)
    x, w, b = (ctx.expr(v) for v in inputs[:3])
    y = ctx.emit(relax.op.add(relax.op.matmul(x, w), b))
    if _ACTIVATIONS[act] is not None:
        y = ctx.emit(_gelu(y, _ACTIVATIONS[act]))
    if has_res:
        y = ctx.emit(relax.op.add(y, ctx.expr(inputs[3])))
    return y


def _merged_qkv(ctx: LowerContext, node: ir.Node, hidden: int) -> relax.Expr | None:
    """The merged projection ``X[b, s, 3*hidden]`` when Q, K, V are its three equal last-axis splits
    (what ``merge-qkv`` produces): the attention kernel reads it directly, so the Split is dead."""
    split = node.inputs[0].producer() if node.inputs[0] is not None else None
    if split is None or split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
        return None
    if list(split.outputs) != list(node.inputs[:3]):
        return None
    src = split.inputs[0]
    if src is None or src not in ctx.env or not isinstance(ctx.env[src], relax.Expr):
        return None
    shape = ctx.shape(ctx.env[src])
    axis = int(ctx.attr(split, "axis", 0))
    if len(shape) != 3 or axis not in (-1, 2) or shape[-1] != 3 * hidden:
        return None
    if len(split.inputs) > 1 and split.inputs[1] is not None:
        sizes = ctx.env.get(split.inputs[1])
        if (
            sizes is None
            or [int(v) for v in np.asarray(ctx.const(sizes)).reshape(-1)] != [hidden] * 3
        ):
            return None
    return ctx.env[src]


def _bf16_attention(ctx: LowerContext, sq: int, skv: int, d: int) -> bool:
    """Whether this attention runs the BF16 kernel (``kernels/attention_bf16.py``): in a lossy
    artifact only (INT8 layers, or ``precision="bf16"``), on a target with AVX512-BF16 (AMX-BF16
    CPUs have it too), for shapes the kernel takes. An exact fp32 artifact keeps fp32 attention."""
    from ...kernels.attention_bf16 import fits
    from ...kernels.isa import bf16_isa
    from .bf16_dense import active

    lossy = bool(ctx.int8) or active() is not None
    return lossy and bf16_isa(ctx.target) is not None and fits(sq, skv, d)


@converter("Attention", domain="lamina")
def attention(ctx: LowerContext, node: ir.Node, inputs):
    """``softmax(scale * Qh Kh^T + bias) Vh`` per head, heads split from / merged into the last
    dim."""
    heads = int(ctx.attr(node, "num_heads"))
    scale = float(ctx.attr(node, "scale", 1.0))
    kind = ctx.attr(node, "mask_kind", "none")
    if kind not in ("none", "key_padding", "additive"):
        raise ctx.error(f"mask_kind={kind!r} is not supported")
    batch, q_seq, hidden = ctx.shape(inputs[0])
    kv_seq = ctx.shape(inputs[1])[1]
    if hidden % heads:
        raise ctx.error(f"hidden size {hidden} is not a multiple of num_heads {heads}")
    d = hidden // heads
    dtype = ctx.dtype(inputs[0])
    use_kernels = ctx.target is not None and dtype == "float32"

    def key_bias() -> relax.Expr:
        keep = ctx.expr(ctx.cast(inputs[3], "bool"))
        return ctx.emit(
            relax.op.where(keep, relax.const(0.0, dtype), relax.const(MASK_FILL, dtype))
        )

    if use_kernels and kind != "additive":
        # One fused kernel reading Q, K, V from the projections (the merged one when merge-qkv ran)
        # and writing the merged heads; finite fill values, so a fully masked row gets uniform
        # weights, never NaN.
        from ...kernels.attention import emit_attention

        merged = _merged_qkv(ctx, node, hidden) if q_seq == kv_seq else None
        sources = [merged] if merged is not None else [ctx.expr(v) for v in inputs[:3]]
        masked = kind == "key_padding"
        # The INT8 out-projection's quantization of the output, fused: the kernel writes only
        # its u8 when nothing else reads the float output.
        from .quant_dense import claim_sole_quantization, store_quantized

        claim = claim_sole_quantization(ctx, node.outputs[0], batch * q_seq, hidden)
        quant = None if claim is None else (claim[2], claim[3], claim[0].signed)

        def done(out: relax.Expr) -> relax.Expr:
            if claim is not None:  # the u8 as rows for the consumer
                store_quantized(ctx, claim[0], claim[1],
                                ctx.emit(relax.op.reshape(out, (batch * q_seq, hidden))))
            return out

        if _bf16_attention(ctx, q_seq, kv_seq, d):
            from ...kernels.attention_bf16 import emit_attention_bf16
            from ...kernels.isa import BF16_FEATURES, num_threads

            ctx.features.update(BF16_FEATURES["avx512bf16"])
            tiles = (ctx.tiles.attention_bf16(batch, q_seq, kv_seq, heads, d,
                                              merged=merged is not None, mask=masked,
                                              target=ctx.target)
                     if ctx.tiles is not None else None)
            # A merged QKV projection in INT8 writes bf16 for it directly (the kernel rounds its
            # sources to bf16 first: the same result).
            form = ctx.int8_bf16_forms.get(merged) if merged is not None else None
            if form is not None:
                sources = [form(heads, batch)]
            return done(emit_attention_bf16(ctx.bb, sources, key_bias() if masked else None,
                                            batch=batch, sq=q_seq, skv=kv_seq, heads=heads, d=d,
                                            scale=scale, threads=num_threads(ctx.target),
                                            config=tiles, bf16_in=form is not None, quant=quant))
        config = (ctx.tiles.attention(batch, q_seq, kv_seq, heads, d, merged=merged is not None,
                                      mask=masked, target=ctx.target)
                  if ctx.tiles is not None else None)
        return done(emit_attention(ctx.bb, sources, key_bias() if masked else None, batch=batch,
                                   sq=q_seq, skv=kv_seq, heads=heads, d=d, scale=scale,
                                   target=ctx.target, config=config, quant=quant))

    def heads_of(v, seq: int, perm: list[int]) -> relax.Expr:
        r = relax.op.reshape(ctx.expr(v), [batch, seq, heads, d])
        return ctx.emit(relax.op.permute_dims(r, perm))

    qh = heads_of(inputs[0], q_seq, [0, 2, 1, 3])
    kt = heads_of(inputs[1], kv_seq, [0, 2, 3, 1])
    vh = heads_of(inputs[2], kv_seq, [0, 2, 1, 3])
    if use_kernels:
        from ...kernels.relax_emit import emit_batch_matmul

        s = emit_batch_matmul(ctx.bb, qh, kt, scale=scale, target=ctx.target)
    else:
        s = ctx.emit(relax.op.multiply(relax.op.matmul(qh, kt), relax.const(scale, dtype)))
    if kind == "key_padding":
        s = ctx.emit(relax.op.add(s, relax.op.reshape(key_bias(), [batch, 1, 1, kv_seq])))
    elif kind == "additive":
        s = ctx.emit(relax.op.add(s, ctx.expr(inputs[3])))
    p = ctx.emit(relax.op.nn.softmax(s, axis=-1))
    # Rows whose keys are all masked by -inf give NaN; the reference maps them to 0.
    p = ctx.emit(relax.op.where(relax.op.isnan(p), relax.const(0.0, dtype), p))
    pv = (
        emit_batch_matmul(ctx.bb, p, vh, target=ctx.target)
        if use_kernels
        else relax.op.matmul(p, vh)
    )
    o = ctx.emit(relax.op.permute_dims(pv, [0, 2, 1, 3]))
    return ctx.emit(relax.op.reshape(o, [batch, q_seq, hidden]))

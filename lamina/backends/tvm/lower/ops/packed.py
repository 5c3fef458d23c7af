"""``lamina::PackedAttention``: attention over a packed token stream (``backends/tvm/varlen.py``).

Internal to padding-free compilation: ``varlen.pack_model`` puts it where ``lamina::Attention`` was,
with the sequences' offsets (``cu_seqlens``) instead of the key-padding mask. Inputs
``(Q, K, V, cu_seqlens)``, ``Q/K/V[1, T, hidden]``; attributes ``num_heads``, ``scale``,
``max_len``.
"""

from __future__ import annotations

import onnx_ir as ir
from tvm import relax

from ..context import LowerContext
from ..registry import converter
from .lamina import _merged_qkv
from .quant_dense import claim_sole_quantization, store_quantized


@converter("PackedAttention", domain="lamina")
def packed_attention(ctx: LowerContext, node: ir.Node, inputs):
    from ...kernels.varlen_attention import emit_varlen_attention

    if ctx.target is None or ctx.dtype(inputs[0]) != "float32":
        raise ctx.error("packed attention needs the kernels (a target) and float32")
    heads = int(ctx.attr(node, "num_heads"))
    scale = float(ctx.attr(node, "scale", 1.0))
    one, tokens, hidden = ctx.shape(inputs[0])
    if one != 1 or hidden % heads:
        raise ctx.error(f"expected Q of shape [1, T, heads * d], got {[one, tokens, hidden]}")
    seqs = ctx.shape(inputs[3])[0] - 1
    max_len = int(ctx.attr(node, "max_len", tokens))
    qkv = _merged_qkv(ctx, node, hidden)
    if qkv is None:  # separate projections: one concatenated stream for the kernel
        qkv = ctx.emit(relax.op.concat([ctx.expr(v) for v in inputs[:3]], axis=-1))
    # The INT8 out-projection's quantization, fused when nothing else reads the float output.
    claim = claim_sole_quantization(ctx, node.outputs[0], tokens, hidden)
    out = emit_varlen_attention(ctx.bb, qkv, ctx.expr(inputs[3]), tokens=tokens, seqs=seqs,
                                heads=heads, d=hidden // heads, max_len=min(max_len, tokens),
                                scale=scale, target=ctx.target,
                                quant=None if claim is None else (claim[2], claim[3],
                                                                  claim[0].signed))
    if claim is not None:
        store_quantized(ctx, claim[0], claim[1],
                        ctx.emit(relax.op.reshape(out, (tokens, hidden))))
    return out


@converter("PackedTokenImportance", domain="lamina")
def packed_token_importance(ctx: LowerContext, node: ir.Node, inputs):
    """``[heads, T]``: the attention each token receives per head (token pruning, ``staged.py``);
    inputs and attributes as ``PackedAttention``."""
    from ...kernels.varlen_attention import emit_varlen_received_attention

    if ctx.target is None or ctx.dtype(inputs[0]) != "float32":
        raise ctx.error("packed token importance needs the kernels (a target) and float32")
    heads = int(ctx.attr(node, "num_heads"))
    scale = float(ctx.attr(node, "scale", 1.0))
    one, tokens, hidden = ctx.shape(inputs[0])
    seqs = ctx.shape(inputs[3])[0] - 1
    max_len = int(ctx.attr(node, "max_len", tokens))
    qkv = _merged_qkv(ctx, node, hidden)
    if qkv is None:
        qkv = ctx.emit(relax.op.concat([ctx.expr(v) for v in inputs[:3]], axis=-1))
    return emit_varlen_received_attention(ctx.bb, qkv, ctx.expr(inputs[3]), tokens=tokens,
                                          seqs=seqs, heads=heads, d=hidden // heads,
                                          max_len=min(max_len, tokens), scale=scale,
                                          target=ctx.target)

"""``shrink-structured``: drop attention heads and FFN neurons that provably contribute a constant.

Before (one layer of an O1 graph, 12 heads, heads 3 and 7 pruned, FFN 1536 wide with 768 zero
neurons)::

    %qkv = lamina::Linear(%x, %Wqkv[384, 1152], %bqkv)
    %q, %k, %v = Split(%qkv, [384, 384, 384])
    %c = lamina::Attention(%q, %k, %v, %mask) {num_heads: 12}
    %y = lamina::Linear(%c, %Wo[384, 384], %bo, %r)
    %h = lamina::Linear(%z, %W1[384, 1536], %b1) {activation: gelu}
    %f = lamina::Linear(%h, %W2[1536, 384], %b2, %z)

After: ``Wqkv[384, 960]``, Split ``[320, 320, 320]``, ``num_heads: 10``, ``Wo[320, 384]``, ``W1[384,
768]``, ``W2[768, 384]``, with ``bo`` and ``b2`` absorbing the constant contributions.

When a head or neuron is dropped (the math):

- head ``h`` with ``Wo[h rows] == 0``: contributes 0;
- head ``h`` with ``Wv[:, h] == 0``: its output is ``sum_j P[i, j] * bv_h = bv_h`` (softmax rows sum
  to 1,
  also for fully masked rows, which get uniform weights), so it contributes the constant ``bv_h @
  Wo[h]``, folded into ``bo``;
- a head whose Q or K weights are zero is *kept*: its scores are constant per row, so it outputs the
  mean
  of V over the valid keys, which depends on the input;
- FFN neuron ``j`` with ``W2[j, :] == 0``: contributes 0;
- FFN neuron ``j`` with ``W1[:, j] == 0``: ``h_j = act(b1_j)`` is constant, ``act(b1_j) * W2[j, :]``
  goes
  into ``b2``.
- an FFN is shrunk only when at least 1/8 of its neurons can go (a pruned layer, not the few zero
  columns weight pruning leaves by chance), and its kept width stays a multiple of 16.

At least one head and one neuron stay. Exact up to float rounding of the folded biases (atol 1e-4).
Run after O1's fusions (it matches ``lamina::Attention`` / ``lamina::Linear``); before
``encode-sparsity``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.fusion._utils import Rewriter
from lamina.passes.sparsity._structure import (
    AttentionBlock,
    FfnBlock,
    find_attention_blocks,
    find_ffn_blocks,
)

ALIGN = 16  # kept FFN widths stay multiples of this


def _act(x: np.ndarray, activation: str) -> np.ndarray:
    x = x.astype(np.float64)
    if activation == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(activation)


def _with_last_dim(value: ir.Value, n: int) -> None:
    if value.shape is not None:
        value.shape = ir.Shape([*list(value.shape)[:-1], n])


@register("shrink-structured")
class ShrinkStructuredPass(Pass):
    """Remove attention heads and FFN neurons whose contribution is zero or constant (folded into a
    bias)."""

    atol = 1e-4
    rtol = 1e-4

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rw = Rewriter(model, ctx, self.name)
        stats = {"heads_removed": 0, "neurons_removed": 0, "layers_shrunk": 0, "unmatched": 0}
        for blk in find_attention_blocks(model):
            n = self._shrink_attention(rw, blk)
            stats["heads_removed"] += n
            stats["layers_shrunk"] += int(n > 0)
        for ffn in find_ffn_blocks(model):
            n = self._shrink_ffn(rw, ffn)
            stats["neurons_removed"] += n
            stats["layers_shrunk"] += int(n > 0)
        stats["unmatched"] = rw.misses
        return PassResult(model, changed=stats["layers_shrunk"] > 0, stats=stats)

    def _shrink_attention(self, rw: Rewriter, blk: AttentionBlock) -> int:
        h, d = blk.heads, blk.head_dim
        wv, bv = blk.v.weight(), blk.v.bias()
        wo = const_array(blk.out.inputs[1])
        bo = const_array(blk.out.inputs[2])
        o_zero = ~(wo != 0).reshape(h, d, -1).any(axis=(1, 2))
        v_zero = ~(wv != 0).reshape(wv.shape[0], h, d).any(axis=(0, 2))
        drop = o_zero | v_zero
        if drop.all():
            drop[int(np.argmin(o_zero))] = False  # keep one head: the op needs num_heads >= 1
        if not drop.any():
            qk = [~(p.weight() != 0).reshape(-1, h, d).any(axis=(0, 2)) for p in (blk.q, blk.k)]
            if (qk[0] | qk[1]).any():
                rw.explain(
                    blk.attn,
                    f"{int((qk[0] | qk[1]).sum())} heads have zero Q or K weights but "
                    "output the mean of V (or attend by bias): kept",
                )
            else:
                rw.explain(blk.attn, "no head with zero V or output rows")
            return 0
        keep_cols = np.repeat(~drop, d)
        fold = np.zeros(wo.shape[1], np.float64)
        for i in np.flatnonzero(drop & ~o_zero):  # zero V weights: the head outputs bv_h
            fold += bv[i * d : (i + 1) * d].astype(np.float64) @ wo[i * d : (i + 1) * d].astype(
                np.float64
            )
        kept = int((~drop).sum())
        projs = [blk.q, blk.k, blk.v]
        if len({id(p.linear) for p in projs}) == 1:  # merged QKV: one Linear + Split
            lin = blk.q.linear
            w, b = const_array(lin.inputs[1]), const_array(lin.inputs[2]).reshape(-1)
            cols = np.concatenate([np.arange(p.lo, p.hi)[keep_cols] for p in projs])
            self._set_linear(rw, lin, w[:, cols], b[cols])
            split = blk.attn.inputs[0].producer()
            split.replace_input_with(
                1, rw.initializer("qkv_split", np.array([kept * d] * 3, np.int64))
            )
            for out in split.outputs:
                _with_last_dim(out, kept * d)
        else:
            for p in projs:
                self._set_linear(rw, p.linear, p.weight()[:, keep_cols], p.bias()[keep_cols])
        blk.attn.attributes["num_heads"] = ir.AttrInt64("num_heads", kept)
        _with_last_dim(blk.attn.outputs[0], kept * d)
        self._set_linear(
            rw, blk.out, wo[keep_cols], (bo.reshape(-1) + fold).astype(bo.dtype), in_only=True
        )
        return int(drop.sum())

    def _shrink_ffn(self, rw: Rewriter, ffn: FfnBlock) -> int:
        act = ffn.up.attributes["activation"].value
        w1, b1 = const_array(ffn.up.inputs[1]), const_array(ffn.up.inputs[2]).reshape(-1)
        w2, b2 = const_array(ffn.down.inputs[1]), const_array(ffn.down.inputs[2])
        down_zero = ~(w2 != 0).any(axis=1)
        up_zero = ~(w1 != 0).any(axis=0)
        drop = down_zero | up_zero
        if drop.all():
            drop[0] = False
        if not drop.any():
            rw.explain(ffn.up, "no FFN neuron with a zero input column or output row")
            return 0
        n = drop.size
        if drop.sum() < max(ALIGN, n // 8):
            # A few zero neurons are a by-product of weight pruning, not a pruned layer: removing
            # them
            # would leave an odd width (the kernels' tiles want multiples of 16) and break the 4x1
            # blocks of the up projection, which encode-sparsity runs better.
            rw.explain(
                ffn.up, f"only {int(drop.sum())} of {n} neurons are zero (< 1/8): left as they are"
            )
            return 0
        extra = (n - int(drop.sum())) % ALIGN  # keep the width a multiple of ALIGN: re-keep a few
        if extra:
            drop[np.flatnonzero(drop)[: ALIGN - extra]] = False
        fold = np.zeros(w2.shape[1], np.float64)
        consts = drop & ~down_zero  # h_j = act(b1_j), a constant
        if consts.any():
            if act not in ("gelu", "gelu_tanh"):
                rw.explain(ffn.up, f"activation {act!r}: cannot fold constant neurons")
                return 0
            fold = _act(b1[consts], act) @ w2[consts].astype(np.float64)
        keep = ~drop
        self._set_linear(rw, ffn.up, w1[:, keep], b1[keep])
        self._set_linear(
            rw, ffn.down, w2[keep], (b2.reshape(-1) + fold).astype(b2.dtype), in_only=True
        )
        return int(drop.sum())

    @staticmethod
    def _set_linear(
        rw: Rewriter, lin: ir.Node, w: np.ndarray, b: np.ndarray, in_only: bool = False
    ) -> None:
        lin.replace_input_with(1, rw.initializer("shrunk_weight", np.ascontiguousarray(w)))
        lin.replace_input_with(2, rw.initializer("shrunk_bias", np.ascontiguousarray(b)))
        lin.metadata_props["lamina.origin"] = "shrink-structured"
        if not in_only:
            _with_last_dim(lin.outputs[0], int(w.shape[1]))

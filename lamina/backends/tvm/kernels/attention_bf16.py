"""Fused multi-head attention with BF16 matmuls (AVX512-BF16 ``vdpbf16ps``), fp32 softmax.

The computation of :mod:`.attention` (same arguments, same output), with Q, K, P and V rounded to
bf16 for the two matmuls and every sum in fp32::

    S = scale * bf16(Q) . bf16(K)^T + bias          # fp32 accumulation
    P = exp(S - rowmax)                              # fp32
    O = (bf16(P) @ bf16(V)) / rowsum(P)              # fp32 accumulation

``vdpbf16ps`` adds the products of a *pair* of bf16 values per fp32 lane (``acc[l] += a[2l] b[2l] +
a[2l + 1] b[2l + 1]``), twice the multiplies of an fp32 FMA. Each matmul takes its pairs along its
reduction: QK^T pairs of head dimensions, PV pairs of keys. A pair is one int32 word, and a row of
bf16 values read as int32 words *is* its pairs, so Q and P are only rounded (their pairs are
broadcast) and V rows are interleaved two by two. Schedule::

    parallel for (b, h):                                # one task per head
      Kp[e2, j] = bf16(K[j, :]) as words, transposed   # 16 x 16 word blocks, 4 rounds of unpacks
      Vp[j2, e] = pair(V[2 j2, e], V[2 j2 + 1, e])     # output dims contiguous
      for each tile of mr queries (8 at d = 32):
        Qb[r, :] = bf16(Q[i, :])
        S[mr, skv] = vdpbf16ps(bcast(Qb[r, 2 e2 : 2 e2 + 2]), Kp[e2, 16 keys])  # 4 x 4 vectors
        m = rowmax(scale * S + bias)                    # vector lanes, then a butterfly
        P = exp(scale * S + bias - m); Pb = bf16(P); rowsum(P)    # the 8 rows interleaved
        acc[mr, d] = vdpbf16ps(bcast(Pb[r, 2 j2 : 2 j2 + 2]), Vp[j2, 16 dims])  # 8 x d / 16
        O[b, tile, h, :] = acc / rowsum

Lossy (bf16 operands): used where the artifact is already lossy and the target has AVX512-BF16
(INT8 and ``--precision bf16`` artifacts; ``lower/ops/lamina._bf16_attention``); the fp32 kernel
stays the exact default. The intrinsic is called through :mod:`.dense_bf16`'s LLVM IR helper.
MiniLM's 1 x 128 x 128 x 12 x 32 attention on Zen5, 2 threads, standalone: 57-58 us against the
fp32 kernel's 80; in the model, where the fp32 kernel's time grows to
100-110 us a layer, a 90%-pruned MiniLM INT8 artifact ran 1.20x faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, tirx
from tvm.script import tirx as T

from .attention import emit_attention_call
from .common import (
    _L8,
    add,
    bit_reversed,
    butterfly,
    finish_kernel,
    interleave_rounds,
    keep_params,
    root_block,
    saturate_u8,
)
from .dense_bf16 import DPBF16PS_IR, _bf16_bits, vcvtneps2bf16, vdpbf16ps
from .varlen_attention import softmax_exp, softmax_exp_reference

L = 16  # fp32 lanes of a zmm
def fits(sq: int, skv: int, d: int) -> bool:
    """Shapes the kernel takes: whole 16-key vectors, head dims in whole vectors and pairs."""
    return skv % (2 * L) == 0 and d % (2 * L) == 0 and sq >= 1


def _pair(lo: tirx.PrimExpr, hi: tirx.PrimExpr) -> tirx.PrimExpr:
    """int32 word of two bf16 values: ``lo`` in the low half (the element a ``vdpbf16ps`` lane
    takes first), ``hi`` in the high half."""
    return _pair_bits(_bf16(lo), _bf16(hi))


def _pair_bits(lo: tirx.PrimExpr, hi: tirx.PrimExpr) -> tirx.PrimExpr:
    """:func:`_pair` of two values already in bf16 (uint16 bits)."""
    return T.reinterpret("int32", (T.Cast("uint32", hi) << T.uint32(16)) | T.Cast("uint32", lo))


def _bf16(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """float32 ``x`` as bf16 bits (uint16), round to nearest even (``dense_bf16``'s rounding
    without its NaN case, which cost 8% of the kernel in the exp pass's P rounding)."""
    return _bf16_bits(T.reinterpret("uint32", x), keep_nan=False)


# _L1 .. _L8 (from varlen_attention): the interleaves whose four rounds transpose a 16 x 16 block
# of words, here the int32 pairs of bf16 head dims (the byte transpose of
# ``quantize.quantize_transposed_kernel``, one level of granularity per round).


def _divisor_at_most(n: int, cap: int) -> int:
    for v in range(max(1, min(cap, n)), 0, -1):
        if n % v == 0:
            return v
    return 1


# zmm accumulators a register tile may use (of 32): the score tile leaves room for its operands,
# and so does the P @ V tile. At d = 64 (BERT-base, 12 heads, s128, 2 threads, Zen5) 4 queries x 4
# vectors ran 80 us where 8 x 4 (all 32 registers, spilling) ran 88 (u8 output; 84 vs 89 float);
# an earlier kernel, allocating per task, had measured the opposite (92 vs 104 us).
_ACC_BUDGET = 24
_PV_BUDGET = 16


@dataclass(frozen=True)
class AttentionBf16Config:
    """Tiles of the BF16 attention kernel (0 = the default): ``mr`` queries per tile (their
    ``mr x d / 16`` P @ V accumulators stay in registers), a score register tile of ``rs`` queries
    x ``cs`` vectors of 16 keys. Searched per shape when tuning
    (``tuning.kernel_search.best_attention_bf16_config``)."""

    mr: int = 0
    rs: int = 0
    cs: int = 0

    def key(self) -> str:
        return f"q{self.mr}_s{self.rs}x{self.cs}"

    def to_dict(self) -> dict[str, int]:
        return {"mr": self.mr, "rs": self.rs, "cs": self.cs}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> AttentionBf16Config:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_attention_bf16_config(sq: int, skv: int, d: int,
                                  config: AttentionBf16Config | None = None
                                  ) -> AttentionBf16Config:
    """The tiles the kernel really uses: each a divisor of what it tiles, both register tiles
    within the accumulator budget (defaults: the most queries up to 8, a 4 x 4 score tile)."""
    c = config or AttentionBf16Config()
    dv = d // L
    mr = _divisor_at_most(sq, min(c.mr or 8, max(1, _PV_BUDGET // dv)))
    rs = _divisor_at_most(mr, c.rs or 4)
    cs = _divisor_at_most(skv // L, min(c.cs or 4, max(1, _ACC_BUDGET // rs)))
    return AttentionBf16Config(mr, rs, cs)


def candidate_attention_bf16_configs(sq: int, skv: int, d: int) -> list[AttentionBf16Config]:
    """The default first, then query tiles of 4, 8 and 12 with score tiles of 2-8 x 2-8 vectors."""
    out = [resolve_attention_bf16_config(sq, skv, d)]
    for mr in (8, 4, 12):
        for rs, cs in ((4, 4), (2, 8), (4, 2), (8, 2), (2, 4)):
            cfg = resolve_attention_bf16_config(sq, skv, d, AttentionBf16Config(mr, rs, cs))
            if cfg not in out:
                out.append(cfg)
    return out


def attention_bf16_kernel(batch: int, sq: int, skv: int, heads: int, d: int, *, scale: float,
                          merged: bool, mask: bool,
                          threads: int, config: AttentionBf16Config | None = None,
                          bf16_in: bool = False, quant_out: bool = False,
                          out_signed: bool = False) -> tirx.PrimFunc:
    """PrimFunc with the arguments of :func:`.attention.attention_kernel`: ``X[b*s, 3*h*d]`` if
    ``merged`` else ``Q[b*sq, h*d], K[b*skv, h*d], V[b*skv, h*d]``; ``bias[b, skv]`` if
    ``mask``; output ``O[b, sq, h, d]``. With ``bf16_in`` the sources are uint16 bf16 bits (the
    same result as rounding float sources: the kernel rounds them first). With ``quant_out`` the
    output is an INT8 consumer's u8 (``S[h*d], qo[2]`` after ``bias``; see
    :func:`.attention.attention_kernel`).

    The (batch, head) tasks run in ``threads`` parallel chunks, chunk ``t`` taking tasks ``t, t +
    threads, ...``: the scratch buffers are allocated once per chunk (TVM serves them from the
    workspace pool, a call pair per allocation) instead of once per task."""
    if not fits(sq, skv, d):
        raise ValueError(f"attention_bf16 needs skv % 32 == 0 and d % 32 == 0 "
                         f"(got skv={skv}, d={d})")
    if merged and sq != skv:
        raise ValueError("a merged QKV projection needs equal query and key lengths")
    hid = heads * d
    cfg = resolve_attention_bf16_config(sq, skv, d, config)
    # Sources in bf16 already (``bf16_in``: uint16 bits, e.g. an INT8 projection's bf16 output):
    # copied, and paired by bit operations, instead of rounded.
    src_dtype = "uint16" if bf16_in else "float32"
    cvt = (lambda v: v) if bf16_in else _bf16
    pair = _pair_bits if bf16_in else _pair
    mr = cfg.mr                             # queries per tile
    rs, cs = cfg.rs, cfg.cs                 # score register tile: rs queries x cs key vectors
    dv = d // L                             # PV accumulators per query
    d2, s2 = d // 2, skv // 2
    sc = float(scale)
    qw = 3 * hid if merged else hid         # row widths of the sources
    kw = 3 * hid if merged else hid
    k_off = hid if merged else 0
    v_off = 2 * hid if merged else 0
    tasks = batch * heads
    nt = max(1, min(tasks, threads))
    per = -(-tasks // nt)
    out_dtype = "uint8" if quant_out else "float32"

    @T.macro
    def body(X, Kb, Vb, bias, S, QO, Y):
        for t in T.parallel(nt):
            with T.attr(0, "pragma_import_llvm", DPBF16PS_IR):
                kr = T.decl_buffer((skv, d), "uint16")
                kp = T.decl_buffer((d2, skv), "int32")
                vp = T.decl_buffer((s2, d), "int32")
                s = T.decl_buffer((mr, skv), "float32")
                pb = T.decl_buffer((mr, skv), "uint16")
                qb = T.decl_buffer((mr, d), "uint16", scope="local")
                ta = T.decl_buffer((16, L), "int32", scope="local")
                tb = T.decl_buffer((16, L), "int32", scope="local")
                acc = T.decl_buffer((mr, d), "float32", scope="local")
                sacc = T.decl_buffer((rs, cs * L), "float32", scope="local")
                red = T.decl_buffer((mr, L), "float32", scope="local")
                inv = T.decl_buffer((mr, L), "float32", scope="local")
                nk = T.decl_buffer((1,), "int32")
                for n in range(T.min(per, tasks - t * per)):
                    task = T.bind(t * per + n)
                    b = task // heads
                    h = task % heads
                    # The keys to process: through the last unmasked one, in whole score tiles.
                    # Past it every key's bias is the fill, whose exp is exactly 0: skipping them
                    # is exact (right-padded text padded to a long bucket computes its real
                    # length). A fully masked row takes every key (uniform weights, as before).
                    nk[0] = skv
                    if mask:
                        nk[0] = 0
                        for j in range(skv):
                            if bias[b, j] > T.float32(-1e30):
                                nk[0] = j + 1
                        if nk[0] == 0:
                            nk[0] = skv
                        nk[0] = (nk[0] + L * cs - 1) // (L * cs) * (L * cs)
                    # K in bf16 rows (pairs of head dims are its int32 words), then those words
                    # transposed 16 x 16 at a time: Kp[e2, keys contiguous].
                    for j in range(nk[0]):
                        for e in T.vectorized(d):
                            kr[j, e] = cvt(Kb[b * skv + j, k_off + h * d + e])
                    for jb in range(nk[0] // 16):
                        for eb in range(d2 // 16):
                            for r in T.unroll(16):
                                ta[bit_reversed(r), T.ramp(0, 1, L)] = T.reinterpret(
                                    "int32x16", kr[jb * 16 + r, T.ramp(eb * 32, 1, 32)])
                            interleave_rounds(ta, tb)
                            for i in T.unroll(8):
                                kp[eb * 16 + 2 * i, T.ramp(jb * 16, 1, L)] = T.Shuffle(
                                    [tb[i, T.ramp(0, 1, L)], tb[i + 8, T.ramp(0, 1, L)]], _L8[0])
                                kp[eb * 16 + 2 * i + 1, T.ramp(jb * 16, 1, L)] = T.Shuffle(
                                    [tb[i, T.ramp(0, 1, L)], tb[i + 8, T.ramp(0, 1, L)]], _L8[1])
                    for j2 in range(nk[0] // 2):
                        for e in T.vectorized(d):
                            vp[j2, e] = pair(Vb[b * skv + 2 * j2, v_off + h * d + e],
                                              Vb[b * skv + 2 * j2 + 1, v_off + h * d + e])
                    for qt in range(sq // mr):
                        for r in T.unroll(mr):
                            for e in T.vectorized(d):
                                qb[r, e] = cvt(X[b * sq + qt * mr + r, h * d + e])
                        # Scores: register tiles of rs queries x cs vectors of 16 keys.
                        for rg in range(mr // rs):
                            for cg in range(nk[0] // (L * cs)):
                                for r in T.unroll(rs):
                                    for c in T.unroll(cs):
                                        sacc[r, T.ramp(c * L, 1, L)] = T.broadcast(T.float32(0), L)
                                for e2 in range(d2):
                                    for r in T.unroll(rs):
                                        for c in T.unroll(cs):
                                            sacc[r, T.ramp(c * L, 1, L)] = vdpbf16ps(
                                                sacc[r, T.ramp(c * L, 1, L)],
                                                qb[rg * rs + r, T.ramp(2 * e2, 1, 2)],
                                                T.reinterpret("int16x32", kp[
                                                    e2, T.ramp((cg * cs + c) * L, 1, L)]))
                                for r in T.unroll(rs):
                                    for c in T.unroll(cs):
                                        for w in T.vectorized(L):
                                            if mask:
                                                s[rg * rs + r, (cg * cs + c) * L + w] = (
                                                    sacc[r, c * L + w] * T.float32(sc)
                                                    + bias[b, (cg * cs + c) * L + w])
                                            else:
                                                s[rg * rs + r, (cg * cs + c) * L + w] = (
                                                    sacc[r, c * L + w] * T.float32(sc))

                        # Softmax along each row (fp32), the mr rows interleaved (independent
                        # chains): the row maximum across the lanes by a butterfly that leaves it
                        # in every lane; exp, its bf16 copy for P @ V and the row sum (on lanes,
                        # then a butterfly).
                        for r in T.unroll(mr):
                            red[r, T.ramp(0, 1, L)] = s[r, T.ramp(0, 1, L)]
                        for c in range(1, nk[0] // L):
                            for r in T.unroll(mr):
                                red[r, T.ramp(0, 1, L)] = T.max(red[r, T.ramp(0, 1, L)],
                                                                s[r, T.ramp(c * L, 1, L)])
                        for r in T.unroll(mr):
                            red[r, T.ramp(0, 1, L)] = butterfly(red[r, T.ramp(0, 1, L)], L,
                                                                T.max)
                        for r in T.unroll(mr):
                            inv[r, T.ramp(0, 1, L)] = T.broadcast(T.float32(0), L)
                        for c in range(nk[0] // L):
                            for r in T.unroll(mr):
                                for w in T.vectorized(L):
                                    s[r, c * L + w] = softmax_exp(s[r, c * L + w] - red[r, w])
                                pb[r, T.ramp(c * L, 1, L)] = vcvtneps2bf16(
                                    s[r, T.ramp(c * L, 1, L)])
                                for w in T.vectorized(L):
                                    inv[r, w] = inv[r, w] + s[r, c * L + w]
                        for r in T.unroll(mr):
                            inv[r, T.ramp(0, 1, L)] = butterfly(inv[r, T.ramp(0, 1, L)], L,
                                                                add)
                            inv[r, T.ramp(0, 1, L)] = (T.broadcast(T.float32(1), L)
                                                       / inv[r, T.ramp(0, 1, L)])
                        # P @ V: mr queries x d dims in registers, pairs of keys per step.
                        for r in T.unroll(mr):
                            for v in T.unroll(dv):
                                acc[r, T.ramp(v * L, 1, L)] = T.broadcast(T.float32(0), L)
                        for j2 in range(nk[0] // 2):
                            for r in T.unroll(mr):
                                for v in T.unroll(dv):
                                    acc[r, T.ramp(v * L, 1, L)] = vdpbf16ps(
                                        acc[r, T.ramp(v * L, 1, L)], pb[r, T.ramp(2 * j2, 1, 2)],
                                        T.reinterpret("int16x32", vp[j2, T.ramp(v * L, 1, L)]))
                        for r in T.unroll(mr):
                            if quant_out:  # one vector at a time, as the INT8 dense's epilogue
                                for v in T.unroll(dv):
                                    for w in T.vectorized(L):
                                        Y[b, qt * mr + r, h, v * L + w] = saturate_u8(
                                            acc[r, v * L + w] * inv[r, w] * S[h * d + v * L + w],
                                            QO[1], out_signed)
                            else:
                                for e in T.vectorized(d):
                                    Y[b, qt * mr + r, h, e] = acc[r, e] * inv[r, e % L]

    if merged:

        @T.prim_func(private=True)
        def func(X: T.Buffer((batch * sq, qw), src_dtype), bias: T.Buffer((batch, skv), "float32"),
                 S: T.Buffer((hid,), "float32"), QO: T.Buffer((2,), "float32"),
                 Y: T.Buffer((batch, sq, heads, d), out_dtype)):
            T.func_attr({"tirx.noalias": True})
            body(X, X, X, bias, S, QO, Y)  # K and V are columns of X
    else:

        @T.prim_func(private=True)
        def func(X: T.Buffer((batch * sq, qw), src_dtype),
                 Kb: T.Buffer((batch * skv, kw), src_dtype),
                 Vb: T.Buffer((batch * skv, kw), src_dtype),
                 bias: T.Buffer((batch, skv), "float32"),
                 S: T.Buffer((hid,), "float32"), QO: T.Buffer((2,), "float32"),
                 Y: T.Buffer((batch, sq, heads, d), out_dtype)):
            T.func_attr({"tirx.noalias": True})
            body(X, Kb, Vb, bias, S, QO, Y)

    keep = ((["X"] if merged else ["X", "Kb", "Vb"]) + (["bias"] if mask else [])
            + (["S", "QO"] if quant_out else []) + ["Y"])
    return finish_kernel(root_block(keep_params(func, keep)))


def attention_bf16_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                             bias: np.ndarray | None = None) -> np.ndarray:
    """float64 reference of the kernel for ``q[b, sq, h, d], k, v[b, skv, h, d]``: Q, K, P and V
    rounded to bf16, the kernel's exponential (:func:`softmax_exp_reference`), sums exact;
    ``[b, sq, h, d]``."""
    from .dense_bf16 import round_bf16

    qh = round_bf16(q).astype(np.float64).transpose(0, 2, 1, 3)
    kh = round_bf16(k).astype(np.float64).transpose(0, 2, 3, 1)
    vh = round_bf16(v).astype(np.float64).transpose(0, 2, 1, 3)
    s = (qh @ kh).astype(np.float32) * np.float32(scale)
    if bias is not None:
        s = s + bias[:, None, None, :]
    p = softmax_exp_reference(s - s.max(-1, keepdims=True)).astype(np.float64)
    o = (round_bf16(p.astype(np.float32)).astype(np.float64) @ vh) / p.sum(-1, keepdims=True)
    return o.transpose(0, 2, 1, 3).astype(np.float32)


def emit_attention_bf16(bb: relax.BlockBuilder, sources: list[relax.Expr],
                        bias: relax.Expr | None, *, batch: int, sq: int, skv: int, heads: int,
                        d: int, scale: float, threads: int,
                        config: AttentionBf16Config | None = None,
                        bf16_in: bool = False,
                        quant: tuple[relax.Expr, relax.Expr, bool] | None = None) -> relax.Expr:
    """:func:`.attention.emit_attention` with the BF16 kernel (``bf16_in``: uint16 sources)."""
    func = attention_bf16_kernel(batch, sq, skv, heads, d, scale=scale, merged=len(sources) == 1,
                                 mask=bias is not None, threads=threads, config=config,
                                 bf16_in=bf16_in, quant_out=quant is not None,
                                 out_signed=quant is not None and quant[2])
    return emit_attention_call(bb, func, "lamina_attention_bf16", sources, bias, batch=batch,
                               sq=sq, skv=skv, heads=heads, d=d,
                               suffix="_bf16in" if bf16_in else "", quant=quant)

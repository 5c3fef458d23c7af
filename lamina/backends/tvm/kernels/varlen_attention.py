"""Variable-length fused attention over a packed token stream (no padding computed).

Rows of different lengths are packed one after another into ``X[T, 3 * h * d]`` (the merged QKV
projection of all tokens); sequence ``b`` owns rows ``cu[b] .. cu[b + 1] - 1`` (``cu``: int32
cumulative lengths, ``cu[0] = 0``, non-decreasing; an empty sequence is skipped). For each sequence
and head::

    O[cu[b] + i, h, :] = softmax(scale * Q[i, h, :] . K[:, h, :]) @ V[:, h, :]    over that sequence
    only

which is the fused kernel of :mod:`.attention` with the key-padding mask implied by the offsets:
equal, for every real token, to running that kernel on the batch padded to its longest row. Rows of
``X`` outside every sequence (a token bucket's tail) are left unwritten in ``O``. Schedule::

    n = sequences in use (the unused slots at the end of cu repeat its last offset)
    parallel for chunk in 4 x threads:                # scratch allocated once per chunk
     for (b, h) in every (4 x threads)-th task of n x heads:   # one task per sequence and head
      L = cu[b + 1] - cu[b]
      keys in chunks of one vector (kc = 16 on AVX-512), ceil(L / kc) chunks
      Kt[d, chunks * kc] = K[b, :, h, :]^T            # once per task; 16 x 16 shuffle blocks
      bias[j] = 0 for j < L, fill beyond              # masks the chunks' tail keys
      for each tile of mr queries (8 on AVX-512, 4 elsewhere):
        S[mr, chunk] = Q[tile] @ Kt[:, chunk] * scale + bias   # mr x kc accumulators in registers
        P = exp(S - rowmax)                           # max and sum on lanes, then butterflies
        acc[mr, d] = P @ V[b, :L, h, :]               # mr x d accumulators in registers
        O[tile rows < L, h, :] = acc / rowsum

The bias, the lane butterflies, the chunks and the shuffle transposition made the kernel 2.9x
faster than per-lane masks, zero-filled keys, scalar lane reductions, scalar transposition and one
task (with its scratch allocation) per sequence slot and head, used or not (MiniLM, 8 real
sentences in a 320-token stream of a 32-slot function: 479 -> 163 us a layer, Zen5, 2 threads).

Loop bounds come from ``cu`` at run time, so one compiled function serves every mix of lengths that
fits its token count; only the token count ``T``, the sequence capacity and the longest sequence
(the scratch size) are static. Written directly in TIR (the loops have data-dependent extents, which
TE cannot express); the exponential is TVM's ``fast_exp`` polynomial, as in :mod:`.attention`
(with a quantized output, the cheaper :func:`softmax_exp`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from lamina.compiler.ir.ops.attention import MASK_FILL

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
from .isa import isa_of, lanes, num_threads

CHUNKS_PER_THREAD = 4


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """TVM's ``fast_exp`` for float32 (topi ``fast_exp_float32``): range reduction to 2^n * e^f and
    a degree-7 polynomial for e^f; relative error ~1e-7 on [-88, 88], clamped outside."""
    f32 = "float32"

    def c(v: float) -> tirx.PrimExpr:
        return tirx.const(v, f32)

    xc = tirx.max(tirx.min(x, c(88.3762626647950)), c(-88.3762626647949))
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    f = xc - n * c(0.6931471805599453)
    p = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
         5.0000001201e-1]
    y = c(p[0])
    for coef in p[1:]:
        y = y * f + c(coef)
    y = y * f * f + f + c(1.0)
    ef = tirx.reinterpret(f32, tirx.shift_left(tirx.Cast("int32", n + c(127.0)),
                                               tirx.const(23, "int32")))
    return tirx.max(ef * y, x)


# 2^f on [-0.5, 0.5], degree 3, fitted for relative error: at most 7.7e-5 (8.0e-5 with the rounding
# of x * log2(e)).
_EXP2_POLY = (0.9999289048197653, 0.6932762833317916, 0.2426046559080518, 0.055088767032701214)


def softmax_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``exp(x)`` for ``x <= 0`` (a score minus its row maximum), relative error 8e-5, for softmaxes
    whose result is then rounded far more coarsely: P to bf16 (2^-9 = 2.0e-3) in the BF16 attention,
    the output to u8 for an INT8 consumer in the fp32 ones. 2^n (exponent bits) times a cubic in the
    fraction: 12 vector instructions against about 18 of :func:`fast_exp`, whose 1e-7 the exact
    kernels keep. Below 2^-127 the result is exactly 0, so the mask fill's exp is 0 (the BF16
    attention's key skipping relies on it). The exponential was a third of MiniLM's BF16 attention
    kernel (55 us standalone, 37 without it) and a fifth of BERT-base's (81, 64); with this one they
    take 46 and 73 us (Zen5, 2 threads)."""
    f32 = "float32"
    t = tirx.max(x * tirx.const(1.4426950408889634, f32), tirx.const(-127.0, f32))
    n = tirx.floor(t + tirx.const(0.5, f32))
    f = t - n
    c = [tirx.const(v, f32) for v in _EXP2_POLY]
    poly = ((c[3] * f + c[2]) * f + c[1]) * f + c[0]
    scale = tirx.reinterpret(f32, tirx.shift_left(tirx.Cast("int32", n) + tirx.const(127, "int32"),
                                                  tirx.const(23, "int32")))
    return scale * poly


def softmax_exp_reference(x: np.ndarray) -> np.ndarray:
    """:func:`softmax_exp` in NumPy, float32 step for step (the kernel may fuse the cubic's
    multiply-adds, a last-bit difference)."""
    f32 = np.float32
    x = np.asarray(x, f32)
    with np.errstate(over="ignore"):  # the mask fill times log2(e) is -inf, clamped as the kernel
        t = np.maximum(x * f32(1.4426950408889634), f32(-127.0))
    n = np.floor(t + f32(0.5))
    f = t - n
    c = [f32(v) for v in _EXP2_POLY]
    poly = ((c[3] * f + c[2]) * f + c[1]) * f + c[0]
    scale = ((n.astype(np.int32) + 127) << 23).view(f32)
    return (scale * poly).astype(f32)


def _varlen_kernel(tokens: int, seqs: int, heads: int, d: int, max_len: int, scale: float,
                   target: tvm.target.Target, received: bool, quant_out: bool = False,
                   out_signed: bool = False) -> tirx.PrimFunc:
    """:func:`varlen_attention_kernel` (``received`` False) or
    :func:`varlen_received_attention_kernel` (True): the same tasks, keys and softmax; the output
    is ``P @ V`` (quantized with ``quant_out``, then with :func:`softmax_exp`) or ``P``'s column
    sums."""
    exp = softmax_exp if quant_out else fast_exp

    isa = isa_of(target)
    kc = lanes(isa)                   # keys per chunk: one vector
    mr = 8 if isa == "avx512" else 4  # queries per tile: mr x d PV accumulators in registers
    smax = -(-max_len // kc) * kc
    # Parallel chunks, each allocating its scratch once and taking every nt-th task: a few per
    # thread, so a thread that finishes early takes over.
    nt = CHUNKS_PER_THREAD * num_threads(target)
    hid = heads * d
    sc = float(scale)
    fill = MASK_FILL
    vec = T.ramp(0, 1, kc)
    blocked = kc == 16 and d % 16 == 0
    out_shape = (heads, tokens) if received else (tokens, hid)
    out_dtype = "uint8" if quant_out else "float32"

    @T.macro
    def keys(x, kt, bias, start, length, chunks, h):
        # K^T in whole chunks (keys past the end repeat the sequence's last row, which the bias
        # masks: never a row outside the sequence, which may be an unwritten bucket tail holding
        # NaN, and NaN + fill is NaN) and the key bias: 0 on the sequence, fill past it.
        if blocked:
            # 16 x 16 blocks: 16 key rows loaded as vectors (in bit-reversed order), four
            # rounds of interleaves (:mod:`.attention_bf16`'s network, on floats), 16 stores.
            ta = T.decl_buffer((16, kc), "float32", scope="local")
            tb = T.decl_buffer((16, kc), "float32", scope="local")
            for c in range(chunks):
                for eb in range(d // 16):
                    for r in T.unroll(16):
                        ta[bit_reversed(r), vec] = x[start + T.min(c * 16 + r, length - 1),
                                                     T.ramp(hid + h * d + eb * 16, 1, 16)]
                    interleave_rounds(ta, tb)
                    for i in T.unroll(8):
                        kt[eb * 16 + 2 * i, T.ramp(c * 16, 1, 16)] = T.Shuffle(
                            [tb[i, vec], tb[i + 8, vec]], _L8[0])
                        kt[eb * 16 + 2 * i + 1, T.ramp(c * 16, 1, 16)] = T.Shuffle(
                            [tb[i, vec], tb[i + 8, vec]], _L8[1])
        else:
            for j in range(chunks * kc):
                for e in range(d):
                    kt[e, j] = x[start + T.min(j, length - 1), hid + h * d + e]
        for c in range(chunks):
            for w in T.vectorized(kc):
                bias[c * kc + w] = T.Select(c * kc + w < length, T.float32(0),
                                            T.float32(fill))

    @T.macro
    def softmax_tile(x, kt, bias, s, acc, red, inv, start, length, chunks, qt, h):
        # Scores of the tile's queries, one key chunk at a time, and their running maxima on
        # the lanes (queries past the end, the last tile's tail, repeat the last row).
        for r in T.unroll(mr):
            for w in T.vectorized(kc):
                red[r, w] = T.float32(fill)
        for c in range(chunks):
            for r in T.unroll(mr):
                for w in T.vectorized(kc):
                    acc[r, w] = T.float32(0)
            for e in range(d):
                for r in T.unroll(mr):
                    for w in T.vectorized(kc):
                        acc[r, w] = acc[r, w] + x[start + T.min(qt * mr + r, length - 1),
                                                  h * d + e] * kt[e, c * kc + w]
            for r in T.unroll(mr):
                for w in T.vectorized(kc):
                    s[r, c * kc + w] = acc[r, w] * T.float32(sc) + bias[c * kc + w]
                    red[r, w] = T.max(red[r, w], s[r, c * kc + w])
        # Row maxima across the lanes (butterflies), exp (masked keys give exactly 0), row
        # sums on the lanes, then across them: every lane of inv[r] holds row r's sum.
        for r in T.unroll(mr):
            red[r, vec] = butterfly(red[r, vec], kc, T.max)
        for r in T.unroll(mr):
            for w in T.vectorized(kc):
                inv[r, w] = T.float32(0)
        for c in range(chunks):
            for r in T.unroll(mr):
                for w in T.vectorized(kc):
                    s[r, c * kc + w] = exp(s[r, c * kc + w] - red[r, w])
                    inv[r, w] = inv[r, w] + s[r, c * kc + w]
        for r in T.unroll(mr):
            inv[r, vec] = butterfly(inv[r, vec], kc, add)

    @T.macro
    def used_seqs(cu, nseq):
        # Sequences in use: the unused slots at the end repeat the last offset.
        nseq[0] = 0
        for b in range(seqs):
            if cu[b + 1] > cu[b]:
                nseq[0] = b + 1

    @T.prim_func(private=True)
    def func(x: T.Buffer((tokens, 3 * hid), "float32"), cu: T.Buffer((seqs + 1,), "int32"),
             S: T.Buffer((hid,), "float32"), QO: T.Buffer((2,), "float32"),
             o: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"tirx.noalias": True})
        nseq = T.decl_buffer((1,), "int32", scope="local")
        used_seqs(cu, nseq)
        for t in T.parallel(nt):
            kt = T.decl_buffer((d, smax), "float32")
            bias = T.decl_buffer((smax,), "float32")
            s = T.decl_buffer((mr, smax), "float32")
            col = T.decl_buffer((smax,), "float32")
            acc = T.decl_buffer((mr, kc), "float32", scope="local")
            oacc = T.decl_buffer((mr, d), "float32", scope="local")
            red = T.decl_buffer((mr, kc), "float32", scope="local")
            inv = T.decl_buffer((mr, kc), "float32", scope="local")
            for i in range((nseq[0] * heads - t + nt - 1) // nt):
                task = t + i * nt
                b = task // heads
                h = task % heads
                start = cu[b]
                length = cu[b + 1] - start
                chunks = (length + kc - 1) // kc
                keys(x, kt, bias, start, length, chunks, h)
                if received:
                    for c in range(chunks):
                        for w in T.vectorized(kc):
                            col[c * kc + w] = T.float32(0)
                for qt in range((length + mr - 1) // mr):
                    softmax_tile(x, kt, bias, s, acc, red, inv, start, length, chunks, qt, h)
                    if received:
                        # Rows past the sequence's end (the last tile's tail) add nothing.
                        for r in T.unroll(mr):
                            for w in T.vectorized(kc):
                                inv[r, w] = T.Select(qt * mr + r < length,
                                                     T.float32(1) / inv[r, w], T.float32(0))
                        for c in range(chunks):
                            for r in T.unroll(mr):
                                for w in T.vectorized(kc):
                                    col[c * kc + w] = (col[c * kc + w]
                                                       + s[r, c * kc + w] * inv[r, w])
                    else:
                        # P @ V over the sequence's keys.
                        for r in T.unroll(mr):
                            for e in T.vectorized(d):
                                oacc[r, e] = T.float32(0)
                        for j in range(length):
                            for r in T.unroll(mr):
                                for e in T.vectorized(d):
                                    oacc[r, e] = oacc[r, e] + s[r, j] * x[start + j,
                                                                          2 * hid + h * d + e]
                        for r in T.unroll(mr):
                            if qt * mr + r < length:
                                for e in T.vectorized(d):
                                    if quant_out:
                                        o[start + qt * mr + r, h * d + e] = saturate_u8(
                                            oacc[r, e] / inv[r, 0] * S[h * d + e], QO[1],
                                            out_signed)
                                    else:
                                        o[start + qt * mr + r, h * d + e] = oacc[r, e] / inv[r, 0]
                if received:
                    for j in range(length):
                        o[h, start + j] = col[j]

    keep = ["x", "cu"] + (["S", "QO"] if quant_out else []) + ["o"]
    return finish_kernel(root_block(keep_params(func, keep)))


def varlen_attention_kernel(tokens: int, seqs: int, heads: int, d: int, max_len: int, *,
                            scale: float, target: tvm.target.Target, quant_out: bool = False,
                            out_signed: bool = False) -> tirx.PrimFunc:
    """PrimFunc ``(X[tokens, 3*h*d], cu[seqs + 1] int32, O[tokens, h*d])``; every sequence must be
    at most ``max_len`` tokens long (the caller guarantees it: the runtime packs no longer row).
    With ``quant_out``, ``S[h*d], qo[2]`` come before ``O``, which is an INT8 consumer's u8 (see
    :func:`.attention.attention_kernel`)."""
    return _varlen_kernel(tokens, seqs, heads, d, max_len, scale, target, received=False,
                          quant_out=quant_out, out_signed=out_signed)


def varlen_attention_reference(x: np.ndarray, cu: np.ndarray, heads: int, scale: float
                               ) -> np.ndarray:
    """NumPy reference of the kernel (rows outside every sequence are zero)."""
    tokens, three_hid = x.shape
    hid = three_hid // 3
    d = hid // heads
    out = np.zeros((tokens, hid), np.float32)
    for b in range(len(cu) - 1):
        lo, hi = int(cu[b]), int(cu[b + 1])
        if hi <= lo:
            continue
        q = x[lo:hi, :hid].reshape(hi - lo, heads, d).transpose(1, 0, 2)
        k = x[lo:hi, hid:2 * hid].reshape(hi - lo, heads, d).transpose(1, 2, 0)
        v = x[lo:hi, 2 * hid:].reshape(hi - lo, heads, d).transpose(1, 0, 2)
        s = (q @ k) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[lo:hi] = (p @ v).transpose(1, 0, 2).reshape(hi - lo, hid)
    return out


def emit_varlen_attention(bb: relax.BlockBuilder, qkv: relax.Expr, cu: relax.Expr, *, tokens: int,
                          seqs: int, heads: int, d: int, max_len: int, scale: float,
                          target: tvm.target.Target,
                          quant: tuple[relax.Expr, relax.Expr, bool] | None = None) -> relax.Expr:
    """``[1, tokens, h * d]`` attention output of the packed merged projection ``qkv``
    (``[1, tokens, 3 * h * d]``), sequences given by ``cu`` (``[seqs + 1]`` int32); with ``quant =
    (S, qo, signed)`` quantized for an INT8 consumer (u8)."""
    func = varlen_attention_kernel(tokens, seqs, heads, d, max_len, scale=scale, target=target,
                                   quant_out=quant is not None,
                                   out_signed=quant is not None and quant[2])
    suffix = "" if quant is None else "_q_s8" if quant[2] else "_q"
    gv = bb.add_func(func, f"lamina_varlen_attention_{tokens}x{seqs}x{heads}x{d}x{max_len}{suffix}")
    x2 = bb.emit(relax.op.reshape(qkv, (tokens, 3 * heads * d)))
    args = [x2, cu] + ([quant[0], quant[1]] if quant is not None else [])
    dtype = "float32" if quant is None else "uint8"
    o = bb.emit(relax.call_tir(gv, args, relax.TensorType((tokens, heads * d), dtype)))
    return bb.emit(relax.op.reshape(o, (1, tokens, heads * d)))


def varlen_received_attention_kernel(tokens: int, seqs: int, heads: int, d: int, max_len: int, *,
                                     scale: float, target: tvm.target.Target) -> tirx.PrimFunc:
    """PrimFunc ``(X[tokens, 3*h*d], cu[seqs + 1] int32, R[h, tokens])``: the attention each token
    receives from its sequence's queries, per head (token pruning's importance)::

        R[h, cu[b] + j] = sum_i softmax(scale * Q[i, h, :] . K[:, h, :])[j]     over sequence b

    The score and softmax loops are those of :func:`varlen_attention_kernel`; instead of ``P @ V``
    each task adds its rows of ``P`` (normalised) into a column accumulator. Tasks own disjoint
    ``(head, sequence)`` slices of ``R``; columns outside every sequence are left unwritten."""
    return _varlen_kernel(tokens, seqs, heads, d, max_len, scale, target, received=True)


def varlen_received_attention_reference(x: np.ndarray, cu: np.ndarray, heads: int, scale: float
                                        ) -> np.ndarray:
    """NumPy reference of :func:`varlen_received_attention_kernel` (zero outside sequences)."""
    tokens, three_hid = x.shape
    hid = three_hid // 3
    d = hid // heads
    out = np.zeros((heads, tokens), np.float32)
    for b in range(len(cu) - 1):
        lo, hi = int(cu[b]), int(cu[b + 1])
        if hi <= lo:
            continue
        q = x[lo:hi, :hid].reshape(hi - lo, heads, d).transpose(1, 0, 2)
        k = x[lo:hi, hid:2 * hid].reshape(hi - lo, heads, d).transpose(1, 2, 0)
        s = (q @ k) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, lo:hi] = p.sum(1)
    return out


def emit_varlen_received_attention(bb: relax.BlockBuilder, qkv: relax.Expr, cu: relax.Expr, *,
                                   tokens: int, seqs: int, heads: int, d: int, max_len: int,
                                   scale: float, target: tvm.target.Target) -> relax.Expr:
    """``[heads, tokens]`` attention received per head (see the kernel) of the packed merged
    projection ``qkv`` (``[1, tokens, 3 * h * d]``)."""
    func = varlen_received_attention_kernel(tokens, seqs, heads, d, max_len, scale=scale,
                                            target=target)
    gv = bb.add_func(func, f"lamina_varlen_received_{tokens}x{seqs}x{heads}x{d}x{max_len}")
    x2 = bb.emit(relax.op.reshape(qkv, (tokens, 3 * heads * d)))
    return bb.emit(relax.call_tir(gv, [x2, cu], relax.TensorType((heads, tokens), "float32")))

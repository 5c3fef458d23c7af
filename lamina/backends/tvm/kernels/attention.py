"""Fused multi-head attention: QK^T, scale, key-padding bias, softmax and PV in one kernel.

``O[b, i, h, :] = softmax(scale * Q[b, i, h, :] . K[b, :, h, :] + bias[b, :]) @ V[b, :, h, :]``

Q, K and V are read straight from the projections' row-major outputs, ``[b * s, stride]`` with the
head ``h`` at columns ``offset + h * d``: either three separate ``[b * s, hidden]`` tensors or,
after ``merge-qkv``, the one ``[b * s, 3 * hidden]`` tensor at offsets 0, hidden and 2 * hidden. The
output is written as ``[b, s, h, d]``, which is the merged-heads ``[b, s, hidden]`` layout, so no
head split or head merge copy is left. Schedule::

    parallel for (b, h):                                # one task per head
      Kt[d, skv] = K[b, :, h, :]^T                     # once per head (L1/L2), vector loads of rows
      for io in sq / mr:                               # a tile of mr queries
        S[mr, skv] = Q[tile] @ Kt                      # register tiles (8 x 32 on AVX-512)
        P = exp(scale * S + bias - rowmax)             # in L1; max and sum on vector lanes
        acc[mr, d] = P @ V[b, :, h, :]                 # register tiles (8 x 32 on AVX-512)
        O[b, tile, h, :] = acc / rowsum

Only an ``mr x skv`` tile of scores ever exists (4 KB for MiniLM), against the ``[b, h, s, s]``
tensor that separate batched matmuls and softmax write and read back. A query row whose keys are all
masked gets uniform weights (the bias is finite), as Hugging Face's additive-mask attention does.
The query tile and both register tiles are :class:`AttentionConfig` knobs: defaults per ISA (the
most accumulators the register file allows), searched per shape when tuning
(``tuning.kernel_search``).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, te, tirx, topi

from ._rows import lanes_for
from .common import finish_kernel, saturate_u8
from .isa import isa_of, lanes
from .varlen_attention import softmax_exp

# Accumulator registers the QK^T and PV register tiles may use (of 32 zmm / 16 ymm / 16 xmm).
_ACC_REGS = {"avx512": 16, "avx2": 12, "generic": 8}
_QUERY_TILE = 8  # queries per tile: their scores (8 x skv) stay in L1


def _divisor_at_most(n: int, cap: int) -> int:
    for v in range(max(1, min(cap, n)), 0, -1):
        if n % v == 0:
            return v
    return 1


def register_tile(rows: int, cols: int, target: tvm.target.Target) -> tuple[int, int]:
    """``(r, c)`` accumulators of a register tile over ``rows x cols`` (r | rows, c | cols): the
    most accumulator vectors within the ISA's budget, then the fewest loads per step (r broadcasts
    plus c / lanes vector loads)."""
    isa = isa_of(target)
    nl = lanes(isa)
    best, key = (1, 1), (0, 0)
    for r in (v for v in range(1, rows + 1) if rows % v == 0):
        for c in (v for v in range(1, cols + 1) if cols % v == 0):
            acc = r * -(-c // nl)
            if acc > _ACC_REGS[isa]:
                continue
            k = (acc, -(r + -(-c // nl)))
            if k > key:
                best, key = (r, c), k
    return best


def _register_tiles(rows: int, cols: int, target: tvm.target.Target) -> list[tuple[int, int]]:
    """Register tiles worth trying: the default, then the best one with rows halved."""
    out = [register_tile(rows, cols, target)]
    if out[0][0] > 1:
        isa = isa_of(target)
        r = _divisor_at_most(rows, out[0][0] // 2)
        c = _divisor_at_most(cols, _ACC_REGS[isa] // r * lanes(isa))
        if (r, c) not in out:
            out.append((r, c))
    return out


@dataclass(frozen=True)
class AttentionConfig:
    """Tiles of the fused attention kernel (the tunable knobs; 0 = the per-ISA default).

    query_tile: queries per tile (their ``query_tile x skv`` scores stay in L1).
    s_rows, s_cols: register tile of the scores (queries x keys).
    pv_rows, pv_cols: register tile of P @ V (queries x head dim).
    """

    query_tile: int = 0
    s_rows: int = 0
    s_cols: int = 0
    pv_rows: int = 0
    pv_cols: int = 0

    def key(self) -> str:
        return f"q{self.query_tile}_s{self.s_rows}x{self.s_cols}_pv{self.pv_rows}x{self.pv_cols}"

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> AttentionConfig:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_attention_config(sq: int, skv: int, d: int, target: tvm.target.Target,
                             config: AttentionConfig | None = None) -> AttentionConfig:
    """Defaults filled in and every size fitted to the shape (tiles divide what they tile)."""
    c = config or AttentionConfig()
    mr = _divisor_at_most(sq, c.query_tile or _QUERY_TILE)
    s_tile = ((_divisor_at_most(mr, c.s_rows), _divisor_at_most(skv, c.s_cols))
              if c.s_rows and c.s_cols else register_tile(mr, skv, target))
    pv_tile = ((_divisor_at_most(mr, c.pv_rows), _divisor_at_most(d, c.pv_cols))
               if c.pv_rows and c.pv_cols else register_tile(mr, d, target))
    return AttentionConfig(mr, *s_tile, *pv_tile)


def candidate_attention_configs(sq: int, skv: int, d: int,
                                target: tvm.target.Target) -> list[AttentionConfig]:
    """A small grid for the tuner: query tiles of 4, 8 and 16 with their default and half-height
    register tiles (the default configuration first)."""
    out = [resolve_attention_config(sq, skv, d, target)]
    for qt in (8, 4, 16):
        mr = _divisor_at_most(sq, qt)
        for s_tile in _register_tiles(mr, skv, target):
            for pv_tile in _register_tiles(mr, d, target):
                cfg = resolve_attention_config(sq, skv, d, target,
                                               AttentionConfig(mr, *s_tile, *pv_tile))
                if cfg not in out:
                    out.append(cfg)
    return out


def _tile_reduction(sch: tvm.s_tir.Schedule, blk, row, col, red, r: int, c: int) -> None:
    """Register-tile a reduction block computed at a query tile: ``row`` (None when the tile has a
    single query) and ``col`` split by ``(r, c)`` around the reduction loop ``red``; the
    accumulators live in a stack buffer that LLVM keeps in registers."""
    outer, inner = [], []
    if row is not None:
        ro, ri = sch.split(row, [None, r])
        outer.append(ro)
        inner.append(ri)
    co, ci = sch.split(col, [None, c])
    sch.reorder(*outer, co, red, *inner, ci)
    sch.set_scope(blk, 0, "local")
    if row is not None:
        sch.unroll(inner[0])
    sch.vectorize(ci)
    init = sch.get_loops(sch.decompose_reduction(blk, red))
    if row is not None:
        sch.unroll(init[-2])
    sch.vectorize(init[-1])


def attention_kernel(batch: int, sq: int, skv: int, heads: int, d: int, *, scale: float,
                     merged: bool, mask: bool, target: tvm.target.Target,
                     config: AttentionConfig | None = None, quant_out: bool = False,
                     out_signed: bool = False) -> tirx.PrimFunc:
    """The scheduled PrimFunc. Arguments: ``X[b*s, 3*h*d]`` if ``merged`` else ``Q[b*sq, h*d]``,
    ``K[b*skv, h*d]``, ``V[b*skv, h*d]``; then ``bias[b, skv]`` if ``mask``; output ``O[b, sq, h,
    d]``.

    With ``quant_out`` the output is the u8 of the INT8 consumer's quantization, fused (the
    attention output feeds only the out-projection): after ``bias`` come ``S[h*d]``, the
    multiplier ``smooth / scale``, and ``qo[2]`` (``qo[1]`` the zero point), and ``O =
    saturate(round_half_even(o * S) + qo[1])`` (int8 shifted by +128 when ``out_signed``), as
    ``dense_int8_kernel``'s ``quant_out``."""
    cfg = resolve_attention_config(sq, skv, d, target, config)
    hid = heads * d
    if merged:
        if sq != skv:
            raise ValueError("a merged QKV projection needs equal query and key lengths")
        x = te.placeholder((batch * sq, 3 * hid), "float32", name="X")
        srcs = [x]

        def q_at(bi, i, hh, e):
            return x[bi * sq + i, hh * d + e]

        def k_at(bi, j, hh, e):
            return x[bi * skv + j, hid + hh * d + e]

        def v_at(bi, j, hh, e):
            return x[bi * skv + j, 2 * hid + hh * d + e]
    else:
        q = te.placeholder((batch * sq, hid), "float32", name="Q")
        k = te.placeholder((batch * skv, hid), "float32", name="K")
        v = te.placeholder((batch * skv, hid), "float32", name="V")
        srcs = [q, k, v]

        def q_at(bi, i, hh, e):
            return q[bi * sq + i, hh * d + e]

        def k_at(bi, j, hh, e):
            return k[bi * skv + j, hh * d + e]

        def v_at(bi, j, hh, e):
            return v[bi * skv + j, hh * d + e]

    args = list(srcs)
    bias = None
    if mask:
        bias = te.placeholder((batch, skv), "float32", name="bias")
        args.append(bias)

    kt = te.compute((batch, heads, d, skv), lambda bi, hh, e, j: k_at(bi, j, hh, e), name="Kt")
    re = te.reduce_axis((0, d), "e")
    s = te.compute((batch, heads, sq, skv),
                   lambda bi, hh, i, j: te.sum(q_at(bi, i, hh, re) * kt[bi, hh, re, j], axis=re),
                   name="S")
    sc = tirx.const(scale, "float32")
    if bias is not None:
        xs = te.compute(s.shape, lambda bi, hh, i, j: s[bi, hh, i, j] * sc + bias[bi, j], name="x")
    else:
        xs = te.compute(s.shape, lambda bi, hh, i, j: s[bi, hh, i, j] * sc, name="x")
    nl = lanes_for(skv, target)

    def row_reduce(t: te.Tensor, combine, name: str) -> te.Tensor:
        """``combine`` over each row's keys: first into ``nl`` lane partials (vector ops), then
        across the lanes."""
        k = te.reduce_axis((0, skv // nl), f"{name}_k")
        part = te.compute((batch, heads, sq, nl),
                          lambda bi, hh, i, w: combine(t[bi, hh, i, k * nl + w], axis=k),
                          name=f"{name}v")
        w = te.reduce_axis((0, nl), f"{name}_w")
        return te.compute((batch, heads, sq), lambda bi, hh, i: combine(part[bi, hh, i, w], axis=w),
                          name=name)

    mx = row_reduce(xs, te.max, "mx")
    dlt = te.compute(s.shape, lambda bi, hh, i, j: xs[bi, hh, i, j] - mx[bi, hh, i], name="dlt")
    if quant_out:  # rounded to u8 after: the cheaper exponential (varlen_attention.softmax_exp)
        p = te.compute(s.shape, lambda bi, hh, i, j: softmax_exp(dlt[bi, hh, i, j]), name="P")
    else:
        p = topi.fast_exp(dlt)
    total = row_reduce(p, te.sum, "total")
    inv = te.compute(
        (batch, heads, sq),
        lambda bi, hh, i: tirx.const(1.0, "float32") / total[bi, hh, i],
        name="inv",
    )
    rj = te.reduce_axis((0, skv), "j")
    pv = te.compute((batch, heads, sq, d),
                    lambda bi, hh, i, e: te.sum(p[bi, hh, i, rj] * v_at(bi, rj, hh, e), axis=rj),
                    name="PV")
    if quant_out:
        smul = te.placeholder((hid,), "float32", name="S")
        qo = te.placeholder((2,), "float32", name="QO")
        args += [smul, qo]
        out = te.compute((batch, sq, heads, d),
                         lambda bi, i, hh, e: saturate_u8(
                             pv[bi, hh, i, e] * inv[bi, hh, i] * smul[hh * d + e], qo[1],
                             out_signed), name="O")
    else:
        out = te.compute((batch, sq, heads, d),
                         lambda bi, i, hh, e: pv[bi, hh, i, e] * inv[bi, hh, i], name="O")

    sch = tvm.s_tir.Schedule(te.create_prim_func([*args, out]))
    sch.compute_inline(sch.get_sblock("dlt"))
    mr = cfg.query_tile

    # Anchor: the output, one parallel task per (batch, head), tiles of mr queries.
    ob = sch.get_sblock("O")
    bi, i, hh, e = sch.get_loops(ob)
    io, ii = sch.split(i, [None, mr])
    sch.reorder(bi, hh, io, ii, e)
    task = sch.fuse(bi, hh)
    sch.parallel(task)
    sch.unroll(ii)
    sch.vectorize(e)
    for name in ("PV", "inv", "total", "totalv", p.op.name, "mx", "mxv", "x", "S"):
        sch.compute_at(sch.get_sblock(name), io)
    sch.compute_at(sch.get_sblock("Kt"), task)

    # Under (task, io) each block has a query loop only when mr > 1.
    pv_b, s_b = sch.get_sblock("PV"), sch.get_sblock("S")
    *prow, pcol, pred = sch.get_loops(pv_b)[2:]
    _tile_reduction(sch, pv_b, prow[0] if prow else None, pcol, pred, cfg.pv_rows, cfg.pv_cols)
    *srow, scol, sred = sch.get_loops(s_b)[2:]
    _tile_reduction(sch, s_b, srow[0] if srow else None, scol, sred, cfg.s_rows, cfg.s_cols)

    # Kt: read K rows (contiguous in e), write the transposed tile.
    kl = sch.get_loops(sch.get_sblock("Kt"))
    sch.reorder(kl[-1], kl[-2])

    # Softmax stages on the tile's rows: row-long loops and lane reductions vectorized.
    if nl > 1:
        for name in ("x", p.op.name):
            loop = sch.get_loops(sch.get_sblock(name))[-1]
            sch.vectorize(sch.split(loop, [None, nl])[1])
        for name in ("mxv", "totalv"):
            b = sch.get_sblock(name)
            loops = sch.get_loops(b)  # ..., i, w, k
            sch.reorder(loops[-1], loops[-2])
            sch.vectorize(sch.get_loops(b)[-1])
    return finish_kernel(sch.mod["main"])


def emit_attention(bb: relax.BlockBuilder, sources: list[relax.Expr], bias: relax.Expr | None, *,
                   batch: int, sq: int, skv: int, heads: int, d: int, scale: float,
                   target: tvm.target.Target, config: AttentionConfig | None = None,
                   quant: tuple[relax.Expr, relax.Expr, bool] | None = None) -> relax.Expr:
    """``[b, sq, h * d]`` attention output. ``sources``: ``[X]`` (merged ``[b, s, 3 * h * d]``) or
    ``[Q, K, V]`` (``[b, s, h * d]`` each); ``bias``: the ``[b, skv]`` additive key bias, or
    None; ``quant = (S, qo, signed)``: the output quantized for an INT8 consumer instead, in u8
    (:func:`attention_kernel`'s ``quant_out``)."""
    func = attention_kernel(batch, sq, skv, heads, d, scale=scale, merged=len(sources) == 1,
                            mask=bias is not None, target=target, config=config,
                            quant_out=quant is not None, out_signed=quant is not None and quant[2])
    return emit_attention_call(bb, func, "lamina_attention", sources, bias, batch=batch, sq=sq,
                               skv=skv, heads=heads, d=d, quant=quant)


def emit_attention_call(bb: relax.BlockBuilder, func: tirx.PrimFunc, prefix: str,
                        sources: list[relax.Expr], bias: relax.Expr | None, *, batch: int,
                        sq: int, skv: int, heads: int, d: int, suffix: str = "",
                        quant: tuple[relax.Expr, relax.Expr, bool] | None = None) -> relax.Expr:
    """The ``call_tir`` of an attention kernel ``func`` taking :func:`attention_kernel`'s
    arguments (``sources`` reshaped to rows, then ``bias``, then ``quant``'s ``S, qo``), reshaped
    to ``[b, sq, h * d]`` (u8 with ``quant``)."""
    if quant is not None:
        suffix += "_q_s8" if quant[2] else "_q"
    merged = len(sources) == 1
    tag = "qkv" if merged else "q_k_v"
    gv = bb.add_func(func, f"{prefix}_{tag}_{batch}x{sq}x{skv}x{heads}x{d}"
                     f"{'_masked' if bias is not None else ''}{suffix}")
    rows = (
        [(sq, 3 * heads * d)] if merged else [(sq, heads * d), (skv, heads * d), (skv, heads * d)]
    )
    args = [bb.emit(relax.op.reshape(src, (batch * n, w)))
            for src, (n, w) in zip(sources, rows, strict=True)]
    if bias is not None:
        args.append(bias)
    if quant is not None:
        args += [quant[0], quant[1]]
    dtype = "uint8" if quant is not None else "float32"
    o = bb.emit(relax.call_tir(gv, args, relax.TensorType((batch, sq, heads, d), dtype)))
    return bb.emit(relax.op.reshape(o, (batch, sq, heads * d)))

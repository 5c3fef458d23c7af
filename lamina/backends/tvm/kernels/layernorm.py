"""Row LayerNorm over the last axis: ``Y = (X - mean) / sqrt(var + eps) * gamma + beta``.

Mean and variance take two passes over the row, like ONNX's reference (no E[x^2] - mean^2
cancellation). Where rows split into the target's vectors (16 lanes on AVX-512, 8 on AVX2, 4
otherwise) the kernel is written in TIR: a parallel loop over rows, each pass summing into four
vector accumulators held in registers, a butterfly across the lanes, the normalisation (and the
fused quantization) one vector at a time. Otherwise a scheduled TE kernel does the same in scalar
code. The TE schedule on vectors kept its lane partial sums in memory, a store-to-load chain per
step: the TIR kernel runs MiniLM's 128 x 384 LayerNorm (with quantization) in 0.67x the time
(Zen5, standalone).
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.script import tirx as T

from ._rows import lanes_for, schedule_rows
from .common import add, butterfly, finish_kernel, keep_params, root_block, saturate_u8


def layer_norm_kernel(rows: int, n: int, eps: float,
                      target: tvm.target.Target | None = None, *, quant_out: bool = False,
                      out_signed: bool = False) -> tvm.tirx.PrimFunc:
    """Arguments ``X[rows, n], gamma[n], beta[n]``, output ``Y``. With ``quant_out`` also
    ``S[n]`` and ``qo[2]`` after ``beta`` and a second output ``Yq[rows, n]`` u8: the next INT8
    kernel's quantization of Y, fused (``saturate(round_half_even(Y * S) + qo[1])`` with ``S`` the
    multiplier ``smooth / scale``; int8 shifted by +128 when ``out_signed``; see
    ``dense_int8_kernel``'s ``quant_out``)."""
    lanes = lanes_for(n, target)
    if lanes > 1:
        return _vector_kernel(rows, n, eps, lanes, quant_out, out_signed)
    x = te.placeholder((rows, n), "float32", name="X")
    gamma = te.placeholder((n,), "float32", name="gamma")
    beta = te.placeholder((n,), "float32", name="beta")
    k = te.reduce_axis((0, n // lanes), "k")
    sv = te.compute((rows, lanes), lambda r, v: te.sum(x[r, k * lanes + v], axis=k), name="sv")
    kv = te.reduce_axis((0, lanes), "kv")
    total = te.compute((rows,), lambda r: te.sum(sv[r, kv], axis=kv), name="total")
    mean = te.compute((rows,), lambda r: total[r] / n, name="mean")
    k2 = te.reduce_axis((0, n // lanes), "k2")
    qv = te.compute(
        (rows, lanes),
        lambda r, v: te.sum(
            (x[r, k2 * lanes + v] - mean[r]) * (x[r, k2 * lanes + v] - mean[r]), axis=k2
        ),
        name="qv",
    )
    kv2 = te.reduce_axis((0, lanes), "kv2")
    sq = te.compute((rows,), lambda r: te.sum(qv[r, kv2], axis=kv2), name="sq")
    rstd = te.compute((rows,), lambda r: 1.0 / te.sqrt(sq[r] / n + eps), name="rstd")
    y = te.compute(
        (rows, n), lambda r, j: (x[r, j] - mean[r]) * rstd[r] * gamma[j] + beta[j], name="Y"
    )
    inner = ["rstd", "sq", "qv", "mean", "total", "sv"]
    if not quant_out:
        sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, y]))
        return schedule_rows(sch, "Y", inner, [], ["sv", "qv"], lanes)
    s = te.placeholder((n,), "float32", name="S")
    qo = te.placeholder((2,), "float32", name="QO")
    yq = te.compute((rows, n), lambda r, j: saturate_u8(y[r, j] * s[j], qo[1], out_signed),
                    name="Yq")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, s, qo, y, yq]))
    return schedule_rows(sch, "Y", inner, [], ["sv", "qv"], lanes, after=("Yq",))


def layer_norm_row(n: int, eps: float, L: int, quant_out: bool, out_signed: bool):
    """The TIR macro ``ln_row(X, G, B, S, QO, Y, Yq, r)`` normalising row ``r`` of ``X`` into
    ``Y`` (``Y`` may be ``X``: each element is read before it is written) and, with
    ``quant_out``, quantizing it into ``Yq`` (see :func:`layer_norm_kernel`); rows of whole
    ``L``-lane vectors. The LayerNorm kernel runs it per row, the INT8 dense kernel on the rows it
    has just written (``dense_int8_kernel``'s ``layer_norm``)."""
    nv = n // L
    U = next(u for u in (4, 3, 2, 1) if nv % u == 0)  # independent accumulators per pass
    vec = T.ramp(0, 1, L)

    @T.macro
    def row_sum(acc, red):
        # acc[0] += acc[1..U-1], then every lane of red[0] gets the sum of acc[0]'s lanes.
        for u in T.unroll(1, U):
            acc[0, vec] = acc[0, vec] + acc[u, vec]
        red[0, vec] = butterfly(acc[0, vec], L, add)

    @T.macro
    def ln_row(X, G, B, S, QO, Y, Yq, r):
        acc = T.alloc_buffer((U, L), "float32")
        mean = T.alloc_buffer((1, L), "float32")
        rstd = T.alloc_buffer((1, L), "float32")
        for u in T.unroll(U):
            acc[u, vec] = T.broadcast(T.float32(0), L)
        for c in range(nv // U):
            for u in T.unroll(U):
                acc[u, vec] = acc[u, vec] + X[r, T.ramp((c * U + u) * L, 1, L)]
        row_sum(acc, mean)
        mean[0, vec] = mean[0, vec] * T.broadcast(T.float32(1.0 / n), L)
        for u in T.unroll(U):
            acc[u, vec] = T.broadcast(T.float32(0), L)
        for c in range(nv // U):
            for u in T.unroll(U):
                acc[u, vec] = acc[u, vec] + (X[r, T.ramp((c * U + u) * L, 1, L)]
                                             - mean[0, vec]) * (
                    X[r, T.ramp((c * U + u) * L, 1, L)] - mean[0, vec])
        row_sum(acc, rstd)
        rstd[0, vec] = T.broadcast(T.float32(1), L) / T.sqrt(
            rstd[0, vec] * T.broadcast(T.float32(1.0 / n), L)
            + T.broadcast(T.float32(eps), L))
        for c in range(nv):
            for w in T.vectorized(L):
                Y[r, c * L + w] = ((X[r, c * L + w] - mean[0, w]) * rstd[0, w] * G[c * L + w]
                                   + B[c * L + w])
                if quant_out:
                    Yq[r, c * L + w] = saturate_u8(Y[r, c * L + w] * S[c * L + w], QO[1],
                                                   out_signed)

    return ln_row


def _vector_kernel(rows: int, n: int, eps: float, L: int, quant_out: bool,
                   out_signed: bool) -> tvm.tirx.PrimFunc:
    """:func:`layer_norm_kernel` for rows of whole ``L``-lane vectors (see the module doc)."""
    ln_row = layer_norm_row(n, eps, L, quant_out, out_signed)

    @T.prim_func(private=True)
    def func(X: T.Buffer((rows, n), "float32"), G: T.Buffer((n,), "float32"),
             B: T.Buffer((n,), "float32"), S: T.Buffer((n,), "float32"),
             QO: T.Buffer((2,), "float32"), Y: T.Buffer((rows, n), "float32"),
             Yq: T.Buffer((rows, n), "uint8")):
        T.func_attr({"tirx.noalias": True})
        for r in T.parallel(rows):
            ln_row(X, G, B, S, QO, Y, Yq, r)

    keep = ["X", "G", "B"] + (["S", "QO", "Y", "Yq"] if quant_out else ["Y"])
    return finish_kernel(root_block(keep_params(func, keep)))


def emit_layer_norm(bb: relax.BlockBuilder, x: relax.Expr, gamma: relax.Expr, beta: relax.Expr,
                    shape: list[int], eps: float,
                    target: tvm.target.Target | None = None,
                    quant: tuple[relax.Expr, relax.Expr, bool] | None = None
                    ) -> relax.Expr | tuple[relax.Expr, relax.Expr]:
    """LayerNorm of ``x`` (static ``shape``) over its last axis with ``gamma``/``beta`` of that
    length. With ``quant = (S, qo, signed)`` (see :func:`layer_norm_kernel`) returns ``(Y, Yq)``,
    ``Yq`` as ``[rows, n]`` u8."""
    n = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    x2 = bb.emit(relax.op.reshape(x, (rows, n)))
    if quant is None:
        func = layer_norm_kernel(rows, n, eps, target)
        gv = bb.add_func(func, f"lamina_layer_norm_{rows}x{n}")
        y = bb.emit(relax.call_tir(gv, [x2, gamma, beta], relax.TensorType((rows, n), "float32")))
        return bb.emit(relax.op.reshape(y, shape))
    s, qo, signed = quant
    func = layer_norm_kernel(rows, n, eps, target, quant_out=True, out_signed=signed)
    gv = bb.add_func(func, f"lamina_layer_norm_{rows}x{n}_q{'_s8' if signed else ''}")
    both = bb.emit(relax.call_tir(gv, [x2, gamma, beta, s, qo],
                                  [relax.TensorType((rows, n), "float32"),
                                   relax.TensorType((rows, n), "uint8")]))
    y = bb.emit(relax.TupleGetItem(both, 0))
    return bb.emit(relax.op.reshape(y, shape)), bb.emit(relax.TupleGetItem(both, 1))

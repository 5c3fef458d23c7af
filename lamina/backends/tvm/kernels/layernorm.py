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

import math

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


def embedding_layer_norm_kernel(rows: int, n: int, eps: float, target: tvm.target.Target,
                                tables: list[tuple[int, str]], dense: int = 0, *,
                                quant_out: bool = False,
                                out_signed: bool = False) -> tvm.tirx.PrimFunc:
    """LayerNorm of a sum of embedding lookups (BERT's word + token type + position embeddings),
    the lookups, the sum and the LayerNorm in one pass over each row.

    ``tables``: for each of one to three lookups, ``(vocabulary, index dtype)``; its arguments are
    ``ids[rows]`` and ``table[vocabulary, n]``, row ``r`` adding ``table[ids[r] mod vocabulary]``
    (negative ids count from the end, like ``take(mode="wrap")``, and no id reads out of bounds).
    ``dense``: with a positive ``d``, a term ``D[d, n]`` follows, row ``r`` adding ``D[r mod d]``
    (a [seq, n] position embedding under a batch). Then ``gamma[n], beta[n]`` and, with
    ``quant_out``, ``S[n], qo[2]`` (see :func:`layer_norm_kernel`); outputs ``Y[rows, n]`` and, with
    ``quant_out``, ``Yq[rows, n]``. Rows of whole vectors only (:func:`lanes_for`)."""
    L = lanes_for(n, target)
    if L == 1 or not 1 <= len(tables) <= 3:
        raise ValueError(f"embedding LayerNorm: rows of whole vectors and 1-3 tables, got n={n}, "
                         f"{len(tables)} tables")
    ln_row = layer_norm_row(n, eps, L, quant_out, out_signed)
    (v0, t0), (v1, t1), (v2, t2) = (list(tables) + [(1, "int64")] * 2)[:3]
    nt = len(tables)
    nd = max(dense, 1)

    def row_sum(tabs, ids, D, r, col):
        # The lookups in order, then the dense term: the graph's order of additions.
        y = tabs[0][ids[0], col]
        for i in range(1, nt):
            y = y + tabs[i][ids[i], col]
        return y + D[r % nd, col] if dense else y

    @T.prim_func(private=True)
    def func(I0: T.Buffer((rows,), t0), E0: T.Buffer((v0, n), "float32"),
             I1: T.Buffer((rows,), t1), E1: T.Buffer((v1, n), "float32"),
             I2: T.Buffer((rows,), t2), E2: T.Buffer((v2, n), "float32"),
             D: T.Buffer((nd, n), "float32"), G: T.Buffer((n,), "float32"),
             B: T.Buffer((n,), "float32"), S: T.Buffer((n,), "float32"),
             QO: T.Buffer((2,), "float32"), Y: T.Buffer((rows, n), "float32"),
             Yq: T.Buffer((rows, n), "uint8")):
        T.func_attr({"tirx.noalias": True})
        for r in T.parallel(rows):
            j0 = T.bind(T.floormod(T.Cast("int64", I0[r]), T.int64(v0)))
            j1 = T.bind(T.floormod(T.Cast("int64", I1[r]), T.int64(v1)))
            j2 = T.bind(T.floormod(T.Cast("int64", I2[r]), T.int64(v2)))
            for c in range(n // L):
                for w in T.vectorized(L):
                    Y[r, c * L + w] = row_sum((E0, E1, E2), (j0, j1, j2), D, r, c * L + w)
            ln_row(Y, G, B, S, QO, Y, Yq, r)

    keep = ["I0", "E0"] + (["I1", "E1"] if nt > 1 else []) + (["I2", "E2"] if nt > 2 else [])
    keep += (["D"] if dense else []) + ["G", "B"]
    keep += ["S", "QO", "Y", "Yq"] if quant_out else ["Y"]
    return finish_kernel(root_block(keep_params(func, keep)))


def emit_normalized(bb: relax.BlockBuilder, func: tvm.tirx.PrimFunc, name: str,
                    args: list[relax.Expr], shape: list[int],
                    quant: tuple[relax.Expr, relax.Expr, bool] | None = None
                    ) -> relax.Expr | tuple[relax.Expr, relax.Expr]:
    """Call a kernel that writes normalised rows ``Y[rows, n]`` (and, with ``quant = (S, qo,
    signed)``, whose two are appended to ``args``, their quantization ``Yq[rows, n]`` u8): ``Y``
    reshaped to ``shape``, or ``(Y, Yq)``. The LayerNorm kernels here and the INT8 dense kernel
    with a fused LayerNorm."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    gv = bb.add_func(func, name if quant is None else f"{name}_q{'_s8' if quant[2] else ''}")
    if quant is None:
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows, n), "float32")))
        return bb.emit(relax.op.reshape(y, shape))
    both = bb.emit(relax.call_tir(gv, [*args, quant[0], quant[1]],
                                  [relax.TensorType((rows, n), "float32"),
                                   relax.TensorType((rows, n), "uint8")]))
    y = bb.emit(relax.TupleGetItem(both, 0))
    return bb.emit(relax.op.reshape(y, shape)), bb.emit(relax.TupleGetItem(both, 1))


def emit_layer_norm(bb: relax.BlockBuilder, x: relax.Expr, gamma: relax.Expr, beta: relax.Expr,
                    shape: list[int], eps: float,
                    target: tvm.target.Target | None = None,
                    quant: tuple[relax.Expr, relax.Expr, bool] | None = None
                    ) -> relax.Expr | tuple[relax.Expr, relax.Expr]:
    """LayerNorm of ``x`` (static ``shape``) over its last axis with ``gamma``/``beta`` of that
    length. With ``quant = (S, qo, signed)`` (see :func:`layer_norm_kernel`) returns ``(Y, Yq)``,
    ``Yq`` as ``[rows, n]`` u8."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    x2 = bb.emit(relax.op.reshape(x, (rows, n)))
    func = layer_norm_kernel(rows, n, eps, target, quant_out=quant is not None,
                             out_signed=quant is not None and quant[2])
    return emit_normalized(bb, func, f"lamina_layer_norm_{rows}x{n}", [x2, gamma, beta], shape,
                           quant)


def emit_embedding_layer_norm(bb: relax.BlockBuilder,
                              tables: list[tuple[relax.Expr, relax.Expr, int, str]],
                              dense: tuple[relax.Expr, int] | None, gamma: relax.Expr,
                              beta: relax.Expr, shape: list[int], eps: float,
                              target: tvm.target.Target,
                              quant: tuple[relax.Expr, relax.Expr, bool] | None = None
                              ) -> relax.Expr | tuple[relax.Expr, relax.Expr]:
    """LayerNorm (static ``shape``, over its last axis) of the sum of the rows of each ``(ids,
    table, vocabulary, ids dtype)`` lookup and of ``dense = (term, its rows)`` (broadcast over
    leading dims), as :func:`embedding_layer_norm_kernel`; returns like :func:`emit_layer_norm`."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    specs, args = [], []
    for ids, table, vocab, dtype in tables:
        specs.append((vocab, dtype))
        args += [bb.emit(relax.op.reshape(ids, (rows,))), table]
    d = 0
    if dense is not None:
        d = dense[1]
        args.append(bb.emit(relax.op.reshape(dense[0], (d, n))))
    func = embedding_layer_norm_kernel(rows, n, eps, target, specs, d,
                                       quant_out=quant is not None,
                                       out_signed=quant is not None and quant[2])
    return emit_normalized(bb, func, f"lamina_embedding_layer_norm_{rows}x{n}",
                           [*args, gamma, beta], shape, quant)

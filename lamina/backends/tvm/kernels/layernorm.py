"""Row LayerNorm over the last axis: ``Y = (X - mean) / sqrt(var + eps) * gamma + beta``.

One parallel loop over rows. Mean and variance (two passes, like ONNX's reference: no E[x^2] -
mean^2 cancellation) first reduce on the target's vector lanes (16 on AVX-512, 8 on AVX2), then
across them; the normalisation is vectorized. For MiniLM's 128 x 384 rows this is a few microseconds
where the legalized TOPI layer_norm, untuned, took tens.
"""

from __future__ import annotations

import tvm
from tvm import relax, te

from ._rows import lanes_for, schedule_rows
from .common import round_half_even


def layer_norm_kernel(rows: int, n: int, eps: float,
                      target: tvm.target.Target | None = None, *, quant_out: bool = False,
                      out_signed: bool = False) -> tvm.tirx.PrimFunc:
    """Arguments ``X[rows, n], gamma[n], beta[n]``, output ``Y``. With ``quant_out`` also
    ``S[n]`` and ``qo[2]`` after ``beta`` and a second output ``Yq[rows, n]`` u8: the next INT8
    kernel's quantization of Y, fused (``saturate(round_half_even(Y * S) + qo[1])`` with ``S`` the
    multiplier ``smooth / scale``; int8 shifted by +128 when ``out_signed``; see
    ``dense_int8_kernel``'s ``quant_out``)."""
    lanes = lanes_for(n, target)
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
    lo, hi = (-128.0, 127.0) if out_signed else (0.0, 255.0)
    shift = 128.0 if out_signed else 0.0
    yq = te.compute(
        (rows, n),
        lambda r, j: (tvm.tirx.max(tvm.tirx.min(round_half_even(y[r, j] * s[j]) + qo[1], hi),
                                   lo) + shift).astype("uint8"),
        name="Yq",
    )
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, gamma, beta, s, qo, y, yq]))
    return schedule_rows(sch, "Y", inner, [], ["sv", "qv"], lanes, after=("Yq",))


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

"""Emit the hand-scheduled kernels into a Relax program (for the ONNX -> Relax converter).

``emit_dense`` packs the weight with numpy *now* (compile time), so the artifact stores the packed
panels; the Relax graph only sees ``reshape -> call_tir(kernel) -> reshape``::

    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            h = emit_dense(bb, x, w_kn, b, epilogue="gelu_erf", target=target)  # [b, s, N]
            ...

Weights become ``relax.const`` by default (folded into the library); pass ``weight_param`` to get
a ``relax.Var`` plus the packed array back instead, for artifacts that keep weights in a params
file (``detach_params``-style).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from .dense import (
    DenseConfig,
    Epilogue,
    batch_matmul_kernel,
    dense_kernel,
    pack_weight,
    resolve_config,
)

ConfigFn = Callable[[int, int, int, tvm.target.Target], DenseConfig]


def _static_shape(expr: relax.Expr) -> list[int]:
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise ValueError("emit_dense needs a tensor with a known static shape")
    dims = []
    for d in sinfo.shape.values:
        if not isinstance(d, int) and not hasattr(d, "value"):
            raise ValueError(f"emit_dense needs static shapes (bucket the length), got {sinfo}")
        dims.append(int(d))
    return dims


def emit_dense(bb: relax.BlockBuilder, x: relax.Expr, weight: np.ndarray,
               bias: np.ndarray | relax.Expr | None = None, *, epilogue: Epilogue = None,
               residual: relax.Expr | None = None, target: tvm.target.Target,
               config: DenseConfig | ConfigFn | None = None,
               weight_layout: str = "KN", name: str | None = None,
               weight_param: str | None = None
               ) -> relax.Expr | tuple[relax.Expr, relax.Var, np.ndarray]:
    """``epilogue(x @ W + bias) + residual`` for ``x[..., K]`` and a numpy weight.

    ``config`` is a tile, or a function ``(M, K, N, target) -> DenseConfig`` such as
    ``lambda *a: best_dense_config(*a, cache=db_dir)``; default: the per-ISA default tile.
    With ``weight_param`` the packed weight is a new ``relax.Var`` of that name and the function
    returns ``(y, var, packed)``: add the var to the function's parameters, the array to params.
    """
    shape = _static_shape(x)
    K = shape[-1]
    M = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    w = np.asarray(weight, dtype=np.float32)
    N = w.shape[0] if weight_layout == "NK" else w.shape[1]
    cfg_in = config(M, K, N, target) if callable(config) else config
    cfg = resolve_config(M, K, N, target, cfg_in)
    func = dense_kernel(M, K, N, bias=bias is not None, epilogue=epilogue,
                        residual=residual is not None, target=target, config=cfg)
    tag = f"_{epilogue}" if epilogue else ""
    gv = bb.add_func(
        func, name or f"lamina_dense_{M}x{K}x{N}{tag}{'_res' if residual is not None else ''}"
    )
    packed = pack_weight(w, cfg.nb, weight_layout)  # type: ignore[arg-type]
    wvar: relax.Var | None = None
    if weight_param is not None:
        wvar = relax.Var(weight_param, relax.TensorType(packed.shape, "float32"))
        wexpr: relax.Expr = wvar
    else:
        wexpr = relax.const(packed, "float32")
    x2 = x if len(shape) == 2 else bb.emit(relax.op.reshape(x, (M, K)))
    args = [x2, wexpr]
    if bias is not None:
        args.append(bias if isinstance(bias, relax.Expr)
                    else relax.const(np.asarray(bias, dtype=np.float32), "float32"))
    if residual is not None:
        rs = _static_shape(residual)
        args.append(residual if len(rs) == 2 else bb.emit(relax.op.reshape(residual, (M, N))))
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((M, N), "float32")))
    if len(shape) != 2:
        y = bb.emit(relax.op.reshape(y, (*shape[:-1], N)))
    if wvar is not None:
        return y, wvar, packed
    return y


def emit_batch_matmul(bb: relax.BlockBuilder, a: relax.Expr, b: relax.Expr, *,
                      scale: float | None = None, target: tvm.target.Target,
                      config: DenseConfig | None = None, name: str | None = None) -> relax.Expr:
    """``scale * (a @ b)`` for ``a[..., M, K]``, ``b[..., K, N]`` with equal leading dims.

    Attention: scores = ``emit_batch_matmul(bb, q, k_t, scale=1/sqrt(d))`` with ``k_t`` already
    ``[..., d, s]``; context = ``emit_batch_matmul(bb, probs, v)``.
    """
    sa, sb = _static_shape(a), _static_shape(b)
    if sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise ValueError(f"emit_batch_matmul: incompatible shapes {sa} x {sb}")
    M, K, N = sa[-2], sa[-1], sb[-1]
    batch = int(math.prod(sa[:-2])) if len(sa) > 2 else 1
    func = batch_matmul_kernel(batch, M, K, N, scale=scale, target=target, config=config)
    gv = bb.add_func(func, name or f"lamina_bmm_{batch}x{M}x{K}x{N}")
    a3 = bb.emit(relax.op.reshape(a, (batch, M, K)))
    b3 = bb.emit(relax.op.reshape(b, (batch, K, N)))
    y = bb.emit(relax.call_tir(gv, [a3, b3], relax.TensorType((batch, M, N), "float32")))
    return bb.emit(relax.op.reshape(y, (*sa[:-2], M, N)))

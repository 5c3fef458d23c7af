"""Matmuls on constant weights through the hand-written kernels (``backends/tvm/kernels``).

The weight is packed at compile time into the kernel's panel layout and stored in the params file
under ``<weight>@packed<nb>``; buckets share it when their tiles agree. Without a target in the
context (or for non-float32 or non-2-D weights) the callers fall back to plain Relax matmuls.
Under ``--precision bf16`` (``bf16_dense.precision_scope``) the layer goes to the BF16 kernels
instead (``bf16_dense.emit_bf16_dense``), unless its shape keeps it in fp32.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..context import LowerContext
from ..registry import Const, Value

EPILOGUES = {"none": None, "gelu": "gelu_erf", "gelu_tanh": "gelu_tanh"}


def kernel_weight(ctx: LowerContext, w: Value) -> np.ndarray | None:
    """The constant [K, N] float32 weight, if the kernels can take it."""
    if ctx.target is None or not isinstance(w, Const):
        return None
    arr = np.asarray(w.value)
    if arr.ndim != 2 or arr.dtype != np.float32:
        return None
    return arr


def emit_kernel_dense(ctx: LowerContext, x: Value, w: Const, weight: np.ndarray, *,
                      bias: Value | None = None, activation: str = "none",
                      residual: Value | None = None, layout: str = "KN") -> relax.Expr:
    """``act(x @ W + bias) + residual`` with a packed weight, as one ``call_tir``."""
    from ...kernels import resolve_config
    from ...kernels.relax_emit import emit_dense
    from .bf16_dense import active, emit_bf16_dense

    if active() is not None:
        y16 = emit_bf16_dense(ctx, x, w, weight, bias=bias, activation=activation,
                              residual=residual, layout=layout)
        if y16 is not None:
            return y16

    shape = ctx.shape(x)
    k = shape[-1]
    m = int(np.prod(shape[:-1]))
    n = weight.shape[0] if layout == "NK" else weight.shape[1]
    chosen = ctx.tiles.dense(m, k, n, ctx.target) if ctx.tiles is not None else None
    cfg = resolve_config(m, k, n, ctx.target, chosen)
    base = f"{w.name or 'weight'}@packed{cfg.nb}{'t' if layout == 'NK' else ''}"
    name, i = base, 1
    while name in ctx.params:
        i += 1
        name = f"{base}#{i}"
    b = None if bias is None else ctx.expr(bias)
    r = None if residual is None else ctx.expr(residual)
    y, var, packed = emit_dense(ctx.bb, ctx.expr(x), weight, b, epilogue=EPILOGUES[activation],
                                residual=r, target=ctx.target, config=cfg, weight_layout=layout,
                                weight_param=name)
    ctx.add_param(name, var, packed)
    return y

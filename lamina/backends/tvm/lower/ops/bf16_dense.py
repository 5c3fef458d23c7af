"""Dense layers in BF16 (``--precision bf16``): ``kernels/dense_bf16`` instead of the fp32 kernel.

With the precision scope open (:func:`precision_scope`, entered by ``lower_buckets``), every
dense layer the fp32 path would give to the hand-written kernel (``_dense.emit_kernel_dense``:
MatMul / Gemm / ``lamina::Linear`` on a constant 2-D float32 weight) becomes::

    Xb = to_bf16(x)                        # once per activation, shared by its consumers (Q, K, V)
    y  = dense_bf16(Xb, Wp, bias, R)       # bf16 x bf16 products, fp32 accumulation and epilogue

with ``Wp`` the weight rounded to bf16 and packed at compile time (params ``<weight>@bf16p<nb>``).
Everything else (LayerNorm, softmax, attention, residual adds) stays fp32, and so does a layer whose
output width is not a whole number of 16-column vectors (the classifier head of a 2-class model):
it falls back to the fp32 kernel, counted in :class:`Bf16Lowering`. The family follows the target
(``kernels/isa.bf16_isa``): AVX512-BF16 ``vdpbf16ps``, or AMX-BF16 tiles for shapes in whole 32 x 32
tiles; the features it uses go to ``ctx.features`` (the artifact then requires them of a host).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from ..context import LowerContext
from ..registry import Const, Value

log = logging.getLogger(__name__)


@dataclass
class Bf16Lowering:
    """What the BF16 lowering did in one ``lower_buckets`` call."""

    layers: int = 0  # dense layers lowered to BF16 kernels (all functions)
    fp32_layers: list[str] = field(default_factory=list)  # kept in fp32, with the reason
    # Converted activations: relax expr of x -> (Kp, Xb); one conversion per activation.
    converted: dict[object, dict[int, relax.Expr]] = field(default_factory=dict)


_STATE: ContextVar[Bf16Lowering | None] = ContextVar("lamina_bf16_lowering", default=None)


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[Bf16Lowering | None]:
    """Lower dense layers in ``precision`` (``fp32`` or ``bf16``) within the block."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}")
    state = Bf16Lowering() if precision == "bf16" else None
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def active() -> Bf16Lowering | None:
    """The BF16 lowering state when dense layers lower to BF16 kernels, else None."""
    return _STATE.get()


def _static_rows(ctx: LowerContext, x: Value) -> tuple[int, int, list[int]]:
    shape = ctx.shape(x)
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1, shape[-1], shape


def _converted(ctx: LowerContext, state: Bf16Lowering, x: relax.Expr, m: int, k: int,
               kp: int) -> relax.Expr:
    """``to_bf16(x)`` as ``[m, kp]`` uint16, made once per activation and K padding."""
    from ...kernels.dense_bf16 import to_bf16_kernel

    per_x = state.converted.setdefault(x, {})
    if kp not in per_x:
        x2 = x if len(ctx.shape(x)) == 2 else ctx.emit(relax.op.reshape(x, (m, k)))
        gv = ctx.bb.add_func(to_bf16_kernel(m, k, kp), f"lamina_to_bf16_{m}x{k}")
        per_x[kp] = ctx.emit(relax.call_tir(gv, [x2], relax.TensorType((m, kp), "uint16")))
    return per_x[kp]


def emit_bf16_dense(ctx: LowerContext, x: Value, w: Const, weight: np.ndarray, *,
                    bias: Value | None = None, activation: str = "none",
                    residual: Value | None = None, layout: str = "KN") -> relax.Expr | None:
    """``act(bf16(x) @ bf16(W) + bias) + residual`` as conversion + one BF16 kernel call; None
    when the layer stays fp32 (no BF16 lowering active, or a shape the kernels do not take)."""
    from ...kernels.dense_bf16 import (
        dense_bf16_kernel,
        fits,
        kernel_family,
        pack_weight_bf16,
        packing,
        resolve_bf16_config,
    )
    from ...kernels.isa import BF16_FEATURES, bf16_isa
    from ._dense import EPILOGUES

    state = active()
    if state is None:
        return None
    target = ctx.target
    if target is None or bf16_isa(target) is None:
        raise ctx.error("--precision bf16 needs a target with AVX512-BF16 or AMX-BF16")
    m, k, shape = _static_rows(ctx, x)
    n = weight.shape[0] if layout == "NK" else weight.shape[1]
    if not fits(n):
        state.fp32_layers.append(f"{w.name or 'weight'} (N={n} is not a multiple of 16)")
        log.debug("%s: N=%d stays fp32 (BF16 kernels take whole 16-column vectors)",
                  ctx.node_desc, n)
        return None
    fam = kernel_family(m, n, target)
    chosen = ctx.tiles.bf16(m, k, n, target) if ctx.tiles is not None else None
    cfg = resolve_bf16_config(m, k, n, target, chosen)
    nb, step = packing(m, k, n, target, cfg)
    kp = -(-k // step) * step
    act = EPILOGUES[activation]
    func = dense_bf16_kernel(m, k, n, target=target, config=cfg, bias=bias is not None,
                             epilogue=act, residual=residual is not None)
    tag = f"_{act}" if act else ""
    gv = ctx.bb.add_func(func, f"lamina_dense_bf16_{m}x{k}x{n}{tag}"
                               f"{'_res' if residual is not None else ''}")
    packed = pack_weight_bf16(weight, nb, layout, step)  # type: ignore[arg-type]
    base = f"{w.name or 'weight'}@bf16p{nb}k{step}{'t' if layout == 'NK' else ''}"
    name, i = base, 1
    while name in ctx.params and ctx.param_values[name].shape != packed.shape:
        i += 1
        name = f"{base}#{i}"
    var = ctx.add_param(name, relax.Var(name, relax.TensorType(packed.shape, "uint16")), packed)
    args: list[relax.Expr] = [_converted(ctx, state, ctx.expr(x), m, k, kp), var]
    if bias is not None:
        args.append(ctx.expr(bias))
    if residual is not None:
        r = ctx.expr(residual)
        args.append(r if len(ctx.shape(residual)) == 2 else ctx.emit(relax.op.reshape(r, (m, n))))
    y = ctx.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")))
    if len(shape) != 2:
        y = ctx.emit(relax.op.reshape(y, (*shape[:-1], n)))
    ctx.features.update(BF16_FEATURES[fam])
    state.layers += 1
    return y

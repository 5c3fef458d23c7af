"""QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear, emulated in fp32 (exactly as ONNX
Runtime).

- ``QuantizeLinear``: ``y = saturate(round_half_even(x / scale) + zp)``, of the zero point's type
  (uint8 when
  absent); per tensor or per ``axis``. The division (not a multiply by 1/scale) and the rounding to
  even match ONNX Runtime bit for bit.
- ``DequantizeLinear``: ``y = (float(x) - float(zp)) * scale``. With constant inputs (the int8
  weights written by
  ``quantize-int8``) it folds to an fp32 constant at compile time, so ``lamina::Linear`` still sees
  a constant weight and takes the packed dense kernel.
- ``DynamicQuantizeLinear``: ``scale = (max(0, max x) - min(0, min x)) / 255``,
  ``zp = saturate(round(-min(0, min x) / scale))``, ``y = saturate(round(x / scale) + zp)``, all
  uint8.

INT8 kernels that consume the quantized form directly are a separate layer on top of these.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, normalize_axis
from ..registry import Const, converter

_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2**31), 2**31 - 1)}


def _broadcast(
    ctx: LowerContext, node: ir.Node, param: Const | relax.Expr, rank: int
) -> Const | relax.Expr:
    """Reshape a per-axis scale / zero point [C] so that it broadcasts along ``axis`` of a
    rank-``rank`` x."""
    block = int(ctx.attr(node, "block_size", 0) or 0)
    if block > 0:
        return _expand_blocks(ctx, node, param, rank, block)
    if len(ctx.shape(param)) != 1 or rank <= 1:
        return param
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 1)), rank)
    shape = [1] * rank
    shape[axis] = ctx.shape(param)[0]
    if isinstance(param, Const):
        return Const(np.asarray(param.value).reshape(shape))
    return ctx.emit(relax.op.reshape(param, shape))


def _expand_blocks(
    ctx: LowerContext, node: ir.Node, param: Const | relax.Expr, rank: int, block: int
) -> Const | relax.Expr:
    """Blocked quantization (opset 21): ``param`` has x's rank with ``ceil(n / block)`` entries on
    ``axis``; each applies to ``block`` consecutive elements of x there."""
    if len(ctx.shape(param)) == 0:  # the default zero point
        return param
    if len(ctx.shape(param)) != rank:
        raise ctx.error(f"blocked quantization needs a scale / zero point of rank {rank}")
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 1)), rank)
    x_len = node.inputs[0].shape[axis] if node.inputs[0].shape is not None else None
    if not isinstance(x_len, int):
        raise ctx.error("blocked quantization needs a static length on its axis")
    if isinstance(param, Const):
        v = np.repeat(np.asarray(param.value), block, axis=axis)
        return Const(np.take(v, np.arange(x_len), axis=axis))
    rep = ctx.emit(relax.op.repeat(param, block, axis=axis))
    return ctx.emit(relax.op.strided_slice(rep, axes=[axis], begin=[0], end=[x_len]))


def _np_quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, dtype: str) -> np.ndarray:
    lo, hi = _RANGES[dtype]
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, lo, hi).astype(dtype)


def _quantize_expr(ctx: LowerContext, x: relax.Expr, scale, zp, dtype: str) -> relax.Expr:
    lo, hi = _RANGES[dtype]
    q = relax.op.round(relax.op.divide(x, ctx.expr(ctx.cast(scale, "float32"))))
    q = relax.op.add(q, ctx.expr(ctx.cast(zp, "float32")))
    return ctx.emit(relax.op.astype(relax.op.clip(q, lo, hi), dtype))


@converter("QuantizeLinear")
def quantize_linear(ctx: LowerContext, node: ir.Node, inputs):
    x, scale = inputs[0], inputs[1]
    if len(inputs) > 2 and inputs[2] is not None:
        zp = inputs[2]
    else:  # no zero point: the type comes from output_dtype (opset 21), uint8 by default
        code = int(ctx.attr(node, "output_dtype", 0) or 0)
        if code not in (0, 2, 3):
            name = ir.DataType(code).name
            raise ctx.error(f"output_dtype {name} is not supported (uint8 or int8)")
        zp = Const(np.array(0, np.int8 if code == 3 else np.uint8))
    dtype = ctx.dtype(zp)
    if dtype not in ("uint8", "int8"):
        raise ctx.error(f"zero point of type {dtype} is not supported (uint8 or int8)")
    rank = len(ctx.shape(x))
    scale, zp = _broadcast(ctx, node, scale, rank), _broadcast(ctx, node, zp, rank)
    if all(isinstance(v, Const) for v in (x, scale, zp)):
        return Const(
            _np_quantize(np.asarray(x.value), np.asarray(scale.value), np.asarray(zp.value), dtype)
        )
    return _quantize_expr(ctx, ctx.expr(ctx.cast(x, "float32")), scale, zp, dtype)


@converter("DequantizeLinear")
def dequantize_linear(ctx: LowerContext, node: ir.Node, inputs):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    rank = len(ctx.shape(x))
    scale = _broadcast(ctx, node, scale, rank)
    zp = _broadcast(ctx, node, zp, rank) if zp is not None else None
    if all(isinstance(v, Const) for v in (x, scale)) and (zp is None or isinstance(zp, Const)):
        xf = np.asarray(x.value).astype(np.float32)
        if zp is not None:
            xf = xf - np.asarray(zp.value).astype(np.float32)
        name = None if x.name is None else f"{x.name}@dequantized"
        return Const((xf * np.asarray(scale.value, np.float32)).astype(np.float32), name)
    xf = ctx.expr(ctx.cast(x, "float32"))
    if zp is not None:
        xf = relax.op.subtract(xf, ctx.expr(ctx.cast(zp, "float32")))
    return ctx.emit(relax.op.multiply(xf, ctx.expr(ctx.cast(scale, "float32"))))


@converter("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: LowerContext, node: ir.Node, inputs):
    x = ctx.expr(ctx.cast(inputs[0], "float32"))
    zero = relax.const(0.0, "float32")
    lo = ctx.emit(relax.op.minimum(relax.op.min(x), zero))
    hi = ctx.emit(relax.op.maximum(relax.op.max(x), zero))
    scale = ctx.emit(relax.op.divide(relax.op.subtract(hi, lo), relax.const(255.0, "float32")))
    zpf = ctx.emit(
        relax.op.clip(relax.op.round(relax.op.divide(relax.op.negative(lo), scale)), 0, 255)
    )
    q = relax.op.add(relax.op.round(relax.op.divide(x, scale)), zpf)
    y = ctx.emit(relax.op.astype(relax.op.clip(q, 0, 255), "uint8"))
    return [y, scale, ctx.emit(relax.op.astype(zpf, "uint8"))]

"""Elementwise ONNX ops: arithmetic, math functions, comparisons, logic, Cast, Where, Clip."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, unsupported_dtype
from ..registry import Const, converter

_BINARY = {
    "Add": relax.op.add,
    "Sub": relax.op.subtract,
    "Mul": relax.op.multiply,
    "Equal": relax.op.equal,
    "Less": relax.op.less,
    "LessOrEqual": relax.op.less_equal,
    "Greater": relax.op.greater,
    "GreaterOrEqual": relax.op.greater_equal,
    "And": relax.op.logical_and,
    "Or": relax.op.logical_or,
    "Xor": relax.op.logical_xor,
}

_UNARY = {
    "Sqrt": relax.op.sqrt,
    "Erf": relax.op.erf,
    "Tanh": relax.op.tanh,
    "Neg": relax.op.negative,
    "Exp": relax.op.exp,
    "Log": relax.op.log,
    "Abs": relax.op.abs,
    "Relu": relax.op.nn.relu,
    "Sigmoid": relax.op.sigmoid,
    "Not": relax.op.logical_not,
    "IsNaN": relax.op.isnan,
    "Floor": relax.op.floor,
    "Ceil": relax.op.ceil,
    "Round": relax.op.round,
    "Sign": relax.op.sign,
    "Sin": relax.op.sin,
    "Cos": relax.op.cos,
}


def _same_dtype(ctx: LowerContext, a, b):
    """ONNX binary ops have one dtype; align an embedded scalar constant if exporters differ."""
    da, db = ctx.dtype(a), ctx.dtype(b)
    if da != db:
        if isinstance(b, Const):
            b = ctx.cast(b, da)
        elif isinstance(a, Const):
            a = ctx.cast(a, db)
        else:
            raise ctx.error(f"operand dtypes differ: {da} vs {db}")
    return a, b


@converter(*_BINARY)
def binary(ctx: LowerContext, node: ir.Node, inputs):
    a, b = _same_dtype(ctx, inputs[0], inputs[1])
    return ctx.emit(_BINARY[node.op_type](ctx.expr(a), ctx.expr(b)))


@converter("Div")
def div(ctx: LowerContext, node: ir.Node, inputs):
    a, b = _same_dtype(ctx, inputs[0], inputs[1])
    if ctx.dtype(a).startswith(("int", "uint")):
        # ONNX integer Div truncates toward zero; trunc(a / b) computed in float64 is exact for
        # the index arithmetic encoders do (|values| < 2**53).
        q = relax.op.divide(relax.op.astype(ctx.expr(a), "float64"),
                            relax.op.astype(ctx.expr(b), "float64"))
        return ctx.emit(relax.op.astype(relax.op.trunc(q), ctx.dtype(a)))
    return ctx.emit(relax.op.divide(ctx.expr(a), ctx.expr(b)))


@converter("Pow")
def pow_(ctx: LowerContext, node: ir.Node, inputs):
    base, exp = inputs
    if isinstance(exp, Const) and np.size(exp.value) == 1:
        e = float(np.asarray(exp.value).reshape(()))
        x = ctx.expr(base)
        if e == 1.0:
            return base
        if e == 2.0:  # x*x: exact and cheaper than pow (LayerNorm variance)
            return ctx.emit(relax.op.multiply(x, x))
        if e == 0.5:
            return ctx.emit(relax.op.sqrt(x))
    dtype = ctx.dtype(base)
    if not dtype.startswith("float"):
        # TVM's power is float-only: integer powers in float64 (exact below 2**53), truncated
        # back to the base's type as ONNX does.
        y = relax.op.power(ctx.expr(ctx.cast(base, "float64")), ctx.expr(ctx.cast(exp, "float64")))
        return ctx.emit(relax.op.astype(relax.op.trunc(y), dtype))
    exp = ctx.cast(exp, dtype)
    return ctx.emit(relax.op.power(ctx.expr(base), ctx.expr(exp)))


@converter(*_UNARY)
def unary(ctx: LowerContext, node: ir.Node, inputs):
    return ctx.emit(_UNARY[node.op_type](ctx.expr(inputs[0])))


@converter("IsInf")
def is_inf(ctx: LowerContext, node: ir.Node, inputs):
    x = ctx.expr(inputs[0])
    pos = bool(ctx.attr(node, "detect_positive", 1))
    neg = bool(ctx.attr(node, "detect_negative", 1))
    if not (pos or neg):
        return Const(np.zeros(ctx.shape(x), dtype=bool))
    inf = ctx.emit(relax.op.isinf(x))
    if pos and neg:
        return inf
    # One sign only: an infinity of that sign.
    zero = relax.const(0, ctx.dtype(x))
    sign = relax.op.greater(x, zero) if pos else relax.op.less(x, zero)
    return ctx.emit(relax.op.logical_and(inf, sign))


@converter("Reciprocal")
def reciprocal(ctx: LowerContext, node: ir.Node, inputs):
    x = ctx.expr(inputs[0])
    one = relax.const(1.0, ctx.dtype(x))
    return ctx.emit(relax.op.divide(one, x))


@converter("Softplus")
def softplus(ctx: LowerContext, node: ir.Node, inputs):
    return ctx.emit(relax.op.nn.softplus(ctx.expr(inputs[0])))


@converter("Gelu")
def gelu(ctx: LowerContext, node: ir.Node, inputs):
    approx = ctx.attr(node, "approximate", "none")
    x = ctx.expr(inputs[0])
    if approx == "tanh":
        return ctx.emit(relax.op.nn.gelu_tanh(x))
    return ctx.emit(relax.op.nn.gelu(x))


@converter("Identity")
def identity(ctx: LowerContext, node: ir.Node, inputs):
    return inputs[0]


@converter("Dropout")
def dropout(ctx: LowerContext, node: ir.Node, inputs):
    # Inference: identity. The optional mask output (all True) is only produced if used.
    x = inputs[0]
    training = inputs[2] if len(inputs) > 2 else None
    if training is not None:
        if not isinstance(training, Const):
            raise ctx.error("training_mode is a run-time input; Lamina compiles inference graphs "
                            "(make training_mode a constant false or drop it)")
        ratio = inputs[1] if len(inputs) > 1 else None
        zero_ratio = isinstance(ratio, Const) and float(np.asarray(ratio.value).reshape(())) == 0
        if bool(np.asarray(training.value).reshape(())) and not zero_ratio:
            raise ctx.error("training-mode Dropout (random masking) is not supported; Lamina "
                            "compiles inference graphs (set training_mode to false)")
    mask = None
    m = node.outputs[1] if len(node.outputs) > 1 else None
    if m is not None and (m.uses() or m.is_graph_output()):
        mask = Const(np.ones(ctx.shape(x), dtype=bool))
    return [x, mask]


@converter("Cast")
def cast(ctx: LowerContext, node: ir.Node, inputs):
    to = ctx.attr(node, "to")
    why = unsupported_dtype(to)
    if why:
        raise ctx.error(f"Cast to {ir.DataType(to).name.lower()}: {why}")
    dtype = str(np.dtype(ir.DataType(to).numpy()))
    return ctx.cast(inputs[0], dtype)


@converter("CastLike")
def cast_like(ctx: LowerContext, node: ir.Node, inputs):
    return ctx.cast(inputs[0], ctx.dtype(inputs[1]))


@converter("Where")
def where(ctx: LowerContext, node: ir.Node, inputs):
    cond, a, b = inputs
    a, b = _same_dtype(ctx, a, b)
    return ctx.emit(relax.op.where(ctx.expr(ctx.cast(cond, "bool")), ctx.expr(a), ctx.expr(b)))


@converter("Min", "Max")
def min_max(ctx: LowerContext, node: ir.Node, inputs):
    fn = relax.op.minimum if node.op_type == "Min" else relax.op.maximum
    acc = inputs[0]
    for other in inputs[1:]:
        acc, other = _same_dtype(ctx, acc, other)
        acc = ctx.emit(fn(ctx.expr(acc), ctx.expr(other)))
    return acc


@converter("Clip")
def clip(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    dtype = ctx.dtype(x)
    if ctx.opset() < 11:
        lo, hi = ctx.attr(node, "min"), ctx.attr(node, "max")
    else:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
    out = ctx.expr(x)
    for bound, fn in ((lo, relax.op.maximum), (hi, relax.op.minimum)):
        if bound is None:
            continue
        if not isinstance(bound, (int, float)):
            bound = ctx.expr(ctx.cast(bound, dtype))
        else:
            bound = relax.const(bound, dtype)
        out = ctx.emit(fn(out, bound))
    return out


@converter("CumSum")
def cumsum(ctx: LowerContext, node: ir.Node, inputs):
    x, axis = inputs
    ax = ctx.const_ints(axis, "axis")[0]
    data = ctx.expr(x)
    reverse = bool(ctx.attr(node, "reverse", 0))
    if reverse:
        data = ctx.emit(relax.op.flip(data, ax))
    out = ctx.emit(relax.op.cumsum(data, ax, exclusive=bool(ctx.attr(node, "exclusive", 0))))
    if reverse:
        out = ctx.emit(relax.op.flip(out, ax))
    return out

"""Shape and layout ops: Transpose, Reshape, Flatten, (Un)Squeeze, Concat, Slice, Split, Expand,
Tile, and the shape arithmetic that canonicalization normally folds away (Shape, Size, Range,
ConstantOfShape, Constant): here those only fold on static shapes and constants.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext, normalize_axis
from ..registry import Const, converter


def _reshape(ctx: LowerContext, x, shape: list[int]):
    if ctx.shape(x) == list(shape):
        return x
    if isinstance(x, Const) and x.name is None:
        return Const(np.reshape(x.value, shape))
    return ctx.emit(relax.op.reshape(ctx.expr(x), shape))


@converter("Transpose")
def transpose(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    rank = ctx.rank(x)
    perm = ctx.attr_ints(node, "perm") or list(range(rank))[::-1]
    if perm == list(range(rank)):
        return x
    return ctx.emit(relax.op.permute_dims(ctx.expr(x), perm))


@converter("Reshape")
def reshape(ctx: LowerContext, node: ir.Node, inputs):
    x, shape_in = inputs
    in_shape = ctx.shape(x)
    target = ctx.const_ints(shape_in, "shape")
    allowzero = bool(ctx.attr(node, "allowzero", 0))
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise ctx.error(f"Reshape target {target} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        out[out.index(-1)] = total // known if known else 0
    if int(np.prod(out, dtype=np.int64)) != int(np.prod(in_shape, dtype=np.int64)):
        raise ctx.error(f"cannot reshape {in_shape} to {target}")
    return _reshape(ctx, x, out)


@converter("Flatten")
def flatten(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axis = int(ctx.attr(node, "axis", 1))
    if not -len(shape) <= axis <= len(shape):
        raise ctx.error(f"axis {axis} out of range for rank {len(shape)}")
    axis = axis + len(shape) if axis < 0 else axis  # [-r, r]: -1 is r - 1, not r
    rows = int(np.prod(shape[:axis], dtype=np.int64))
    cols = int(np.prod(shape[axis:], dtype=np.int64))
    return _reshape(ctx, x, [rows, cols])


def _axes_arg(ctx: LowerContext, node: ir.Node, inputs, since: int) -> list[int] | None:
    if ctx.opset() >= since:
        return ctx.const_ints(inputs[1], "axes") if len(inputs) > 1 and inputs[1] is not None \
            else None
    return ctx.attr_ints(node, "axes")


@converter("Unsqueeze")
def unsqueeze(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axes = _axes_arg(ctx, node, inputs, 13) or []
    out_rank = len(shape) + len(axes)
    axes = sorted(normalize_axis(ctx, a, out_rank) for a in axes)
    out, it = [], iter(shape)
    for i in range(out_rank):
        out.append(1 if i in axes else next(it))
    return _reshape(ctx, x, out)


@converter("Squeeze")
def squeeze(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axes = _axes_arg(ctx, node, inputs, 13)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {normalize_axis(ctx, a, len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise ctx.error(f"cannot squeeze axis {a} of size {shape[a]}")
    return _reshape(ctx, x, [d for i, d in enumerate(shape) if i not in axes])


@converter("Concat")
def concat(ctx: LowerContext, node: ir.Node, inputs):
    # Empty pieces (a zero-length axis) contribute nothing; TVM dislikes zero-size tensors.
    vals = [v for v in inputs if v is not None and 0 not in ctx.shape(v)]
    rank = ctx.rank(inputs[0])
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis")), rank)
    if not vals:
        return inputs[0]
    if len(vals) == 1:
        return vals[0]
    if all(isinstance(v, Const) for v in vals):
        return Const(np.concatenate([v.value for v in vals], axis=axis))
    return ctx.emit(relax.op.concat([ctx.expr(v) for v in vals], axis=axis))


@converter("Slice")
def slice_(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    rank = len(shape)
    if ctx.opset() >= 10:
        starts = ctx.const_ints(inputs[1], "starts")
        ends = ctx.const_ints(inputs[2], "ends")
        axes = ctx.const_ints(inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None \
            else list(range(len(starts)))
        steps = ctx.const_ints(inputs[4], "steps") if len(inputs) > 4 and inputs[4] is not None \
            else [1] * len(starts)
    else:
        starts = ctx.attr_ints(node, "starts")
        ends = ctx.attr_ints(node, "ends")
        axes = ctx.attr_ints(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    cur = x
    pos_axes, pos_begin, pos_end, pos_step = [], [], [], []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(ctx, a, rank)
        if st == 0:
            raise ctx.error("Slice step 0")
        # Python's slice.indices clamps exactly like ONNX Slice does.
        b, en, st = slice(s, e, st).indices(shape[a])
        if st > 0:
            if (b, en, st) == (0, shape[a], 1):
                continue
            pos_axes.append(a)
            pos_begin.append(b)
            pos_end.append(max(b, en))
            pos_step.append(st)
        else:  # negative step: gather the explicit index list
            idx = np.arange(b, en, st, dtype=np.int64)
            cur = ctx.emit(relax.op.take(ctx.expr(cur), relax.const(idx, "int64"), axis=a))
    if isinstance(cur, Const) and cur.name is None:
        sl = [slice(None)] * rank
        for a, b, en, st in zip(pos_axes, pos_begin, pos_end, pos_step, strict=True):
            sl[a] = slice(b, en, st)
        return Const(np.ascontiguousarray(cur.value[tuple(sl)]))
    if not pos_axes:
        return cur
    return ctx.emit(relax.op.strided_slice(ctx.expr(cur), pos_axes, pos_begin, pos_end,
                                           pos_step, assume_inbound=True))


@converter("Split")
def split(ctx: LowerContext, node: ir.Node, inputs):
    x = inputs[0]
    shape = ctx.shape(x)
    axis = normalize_axis(ctx, int(ctx.attr(node, "axis", 0)), len(shape))
    n_out = len(node.outputs)
    if ctx.opset() >= 13:
        sizes = ctx.const_ints(inputs[1], "split") if len(inputs) > 1 and inputs[1] is not None \
            else None
    else:
        sizes = ctx.attr_ints(node, "split")
    if sizes is None:
        num = int(ctx.attr(node, "num_outputs", n_out))
        chunk = -(-shape[axis] // num)  # ceil: the last chunk may be smaller (opset 18)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(num)]
    if sum(sizes) != shape[axis]:
        raise ctx.error(f"split sizes {sizes} do not sum to dim {shape[axis]}")
    bounds = list(np.cumsum(sizes)[:-1].tolist())
    parts = ctx.emit(relax.op.split(ctx.expr(x), bounds, axis=axis))
    return [ctx.emit(relax.TupleGetItem(parts, i)) for i in range(len(sizes))]


@converter("Expand")
def expand(ctx: LowerContext, node: ir.Node, inputs):
    x, shape_in = inputs
    target = ctx.const_ints(shape_in, "shape")
    out = list(np.broadcast_shapes(tuple(ctx.shape(x)), tuple(target)))
    if out == ctx.shape(x):
        return x
    return ctx.emit(relax.op.broadcast_to(ctx.expr(x), out))


@converter("Tile")
def tile(ctx: LowerContext, node: ir.Node, inputs):
    x, reps = inputs
    return ctx.emit(relax.op.tile(ctx.expr(x), ctx.const_ints(reps, "repeats")))


@converter("Shape")
def shape_(ctx: LowerContext, node: ir.Node, inputs):
    shape = ctx.shape(inputs[0])
    start = int(ctx.attr(node, "start", 0))
    end = ctx.attr(node, "end", None)
    return Const(np.array(shape[start:end if end is None else int(end)], dtype=np.int64))


@converter("Size")
def size(ctx: LowerContext, node: ir.Node, inputs):
    return Const(np.array(int(np.prod(ctx.shape(inputs[0]), dtype=np.int64)), dtype=np.int64))


@converter("Range")
def range_(ctx: LowerContext, node: ir.Node, inputs):
    start, limit, delta = (np.asarray(ctx.const(v, n)).reshape(())
                           for v, n in zip(inputs, ("start", "limit", "delta"), strict=True))
    return Const(np.arange(start, limit, delta).astype(start.dtype))


@converter("ConstantOfShape")
def constant_of_shape(ctx: LowerContext, node: ir.Node, inputs):
    shape = ctx.const_ints(inputs[0], "shape")
    value = ctx.attr(node, "value")
    fill = np.zeros(1, dtype=np.float32) if value is None else value.numpy().reshape(-1)
    return Const(np.full(shape, fill[0], dtype=fill.dtype))


@converter("Constant")
def constant(ctx: LowerContext, node: ir.Node, inputs):
    for name, a in node.attributes.items():
        v = a.value
        if name in ("value", "sparse_value"):
            return Const(np.asarray(v.numpy()))
        if name == "value_float":
            return Const(np.array(v, dtype=np.float32))
        if name == "value_floats":
            return Const(np.array(list(v), dtype=np.float32))
        if name == "value_int":
            return Const(np.array(v, dtype=np.int64))
        if name == "value_ints":
            return Const(np.array(list(v), dtype=np.int64))
    raise ctx.error("Constant without a supported value attribute")

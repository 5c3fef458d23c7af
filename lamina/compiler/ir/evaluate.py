"""Evaluate one node on constant inputs with ONNX's reference evaluator (constant folding).

A node whose result would exceed a budget of elements is refused *before* it runs
(:class:`TooLarge`): a declared shape such as ``ConstantOfShape([2**40])`` must not allocate.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator


class TooLarge(ValueError):
    """The node's result would hold more elements than the budget allows."""


def _ints(a: np.ndarray | None) -> list[int] | None:
    if a is None or a.dtype.kind not in "iu":
        return None
    return [int(x) for x in a.reshape(-1)]


def _broadcast(*shapes: list[int]) -> int:
    rank = max(len(s) for s in shapes)
    out = 1
    for i in range(rank):
        out *= max((s[len(s) - rank + i] if len(s) - rank + i >= 0 else 1) for s in shapes)
    return out


def result_elements(node: ir.Node, arrays: list[np.ndarray | None]) -> int | None:
    """Elements of the largest output when the inputs decide it beyond their own sizes (None: not
    larger than an input's, or unknown). Covers the ops whose output size comes from input
    *values*."""
    op = node.op_type
    a = arrays + [None] * 4
    if op == "ConstantOfShape":
        dims = _ints(a[0])
        return None if dims is None else math.prod(max(d, 0) for d in dims)
    if op == "Expand" and a[0] is not None:
        dims = _ints(a[1])
        return None if dims is None else _broadcast(list(a[0].shape), [max(d, 0) for d in dims])
    if op == "Tile" and a[0] is not None:
        reps = _ints(a[1])
        return None if reps is None else a[0].size * math.prod(max(r, 0) for r in reps)
    if op == "Range" and all(x is not None for x in a[:3]):
        start, limit, delta = (float(np.asarray(x).reshape(-1)[0]) for x in a[:3])
        if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
            return 0
        return max(0, math.ceil((limit - start) / delta))
    present = [x for x in arrays if x is not None]
    if op in _BROADCASTING and len(present) > 1:
        return _broadcast(*(list(x.shape) for x in present))
    return None


_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Where", "Equal", "Less", "LessOrEqual",
                 "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean",
                 "BitShift", "PRelu"}


# Ops whose result size is not bounded by their inputs' and is not computed above: refused when the
# output shape is not known statically.
_UNBOUNDED = {"Pad", "Resize", "Upsample", "OneHot", "Einsum", "ConstantOfShape", "Expand", "Tile",
              "Range"}


def check_budget(node: ir.Node, arrays: list[np.ndarray | None], max_elements: int) -> None:
    """Raise :class:`TooLarge` if ``node`` would produce more than ``max_elements`` elements."""
    for out in node.outputs:
        shape = out.shape
        if shape is not None and all(isinstance(d, int) for d in shape):
            n = math.prod(max(int(d), 0) for d in shape)
            if n > max_elements:
                raise TooLarge(f"{node.op_type} {node.name!r} would produce {n} elements "
                               f"(shape {list(shape)}), over the budget of {max_elements}")
            return
    n = result_elements(node, arrays)
    if n is None:
        if node.op_type in _UNBOUNDED:
            raise TooLarge(f"{node.op_type} {node.name!r}: result size unknown before running it")
        return
    if n > max_elements:
        raise TooLarge(f"{node.op_type} {node.name!r} would produce {n} elements, over the budget "
                       f"of {max_elements}")


def evaluate_node(node: ir.Node, arrays: list[np.ndarray | None], opset: int,
                  max_elements: int | None = None) -> list[np.ndarray]:
    """Run ``node`` alone on ``arrays`` (None for absent optional inputs); returns its outputs.

    With ``max_elements``, a node whose result would be larger raises :class:`TooLarge` first.
    """
    if max_elements is not None:
        check_budget(node, arrays, max_elements)
    proto = ir.serde.serialize_node(node)
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    del proto.input[:]
    proto.input.extend(names)
    outs = [f"out{i}" for i in range(len(node.outputs))]
    del proto.output[:]
    proto.output.extend(outs)
    feeds = {n: np.asarray(a) for n, a in zip(names, arrays, strict=True) if a is not None}
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
            )
            for n, a in feeds.items()
        ],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]

"""``simplify-reshape``: constant Reshape targets in place of shape arithmetic."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import Namer, const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import add_initializer, is_standard
from lamina.passes.canonical.infer_shapes import SHAPES

# A piece of a shape vector: an int, or ("dim", source value, index).
Piece = int | tuple[str, ir.Value, int]


def _scalar_piece(value: ir.Value) -> Piece | None:
    """What one element of a shape vector is: a constant, or dim i of some value (via
    Shape/Gather)."""
    arr = const_array(value)
    if arr is not None:
        return int(arr.reshape(-1)[0]) if arr.size == 1 else None
    node = value.producer()
    if node is None:
        return None
    if is_standard(node, "Unsqueeze", "Squeeze", "Cast", "Reshape") and node.inputs[0] is not None:
        return _scalar_piece(node.inputs[0])
    if is_standard(node, "Gather") and node.inputs[0] is not None:
        shape_node = node.inputs[0].producer()
        idx = const_array(node.inputs[1])
        if (
            shape_node is None
            or not is_standard(shape_node, "Shape")
            or idx is None
            or idx.size != 1
        ):
            return None
        start = shape_node.attributes.get("start")
        offset = start.value if start is not None else 0
        src = shape_node.inputs[0]
        if src is None or src.shape is None or offset < 0:
            return None
        i = int(idx.reshape(-1)[0]) + offset
        if i < 0:
            i += len(src.shape)
        return ("dim", src, i)
    if is_standard(node, "Shape"):
        src = node.inputs[0]
        start = node.attributes.get("start")
        end = node.attributes.get("end")
        if src is None or src.shape is None or start is None or end is None:
            return None
        if end.value - start.value == 1 and start.value >= 0:
            return ("dim", src, start.value)
    return None


def _pieces(shape: ir.Value) -> list[Piece] | None:
    arr = const_array(shape)
    if arr is not None:
        return [int(x) for x in arr.reshape(-1)]
    node = shape.producer()
    if node is None or not is_standard(node, "Concat"):
        return None
    pieces: list[Piece] = []
    for inp in node.inputs:
        if inp is None:
            return None
        arr = const_array(inp)
        if arr is not None:
            pieces.extend(int(x) for x in arr.reshape(-1))
            continue
        piece = _scalar_piece(inp)
        if piece is None:
            return None
        pieces.append(piece)
    return pieces


def _same_dim(a: object, b: object) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and getattr(a, "value", None) is not None and a.value == b.value  # type: ignore[union-attr]


@register("simplify-reshape")
class SimplifyReshapePass(Pass):
    """Give ``Reshape`` a constant target when its shape vector is built from ``Shape`` of tensors.

    Before: ``%s = Shape(%x); %b = Gather(%s, 0); ...; %t = Concat(%b', %n, [12], [32])``,
    ``Reshape(%x, %t)``
    After:  ``Reshape(%x, [0, 0, 12, 32])`` (0 copies the input dim, -1 for one unknown dim). The
    shape arithmetic then dies in ``remove-dead-code``. Needs ``infer-shapes`` first. Exact.
    """

    atol = 0.0
    requires = frozenset({SHAPES})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        namer = Namer(graph)
        rewritten = 0
        for node in list(graph):
            if not is_standard(node, "Reshape") or len(node.inputs) < 2 or node.inputs[1] is None:
                continue
            if const_array(node.inputs[1]) is not None:
                continue
            allowzero = node.attributes.get("allowzero")
            data = node.inputs[0]
            pieces = _pieces(node.inputs[1])
            if data is None or pieces is None or data.shape is None:
                continue
            target = self._target(data, pieces)
            if target is None:
                continue
            if allowzero is not None and allowzero.value:
                # With allowzero=1 a literal 0 means an empty dim; only rewrite when no piece is a
                # literal 0, then drop allowzero so our 0 entries mean "copy the input dim".
                if any(isinstance(p, int) and p == 0 for p in pieces):
                    continue
                del node.attributes["allowzero"]
            const = add_initializer(
                graph, namer(f"{node.outputs[0].name}_shape"), np.array(target, np.int64)
            )
            node.replace_input_with(1, const)
            rewritten += 1
        return PassResult(model, changed=rewritten > 0, stats={"rewritten": rewritten})

    @staticmethod
    def _target(data: ir.Value, pieces: list[Piece]) -> list[int] | None:
        target: list[int] = []
        unknown = 0
        for j, piece in enumerate(pieces):
            if isinstance(piece, int):
                if piece == 0 and j >= len(data.shape):
                    return None
                target.append(piece)
                continue
            _, src, i = piece
            if i >= len(src.shape):
                return None
            dim = src.shape[i]
            if isinstance(dim, int):
                target.append(dim)
            elif j < len(data.shape) and (
                (src is data and i == j) or _same_dim(data.shape[j], dim)
            ):
                target.append(0)
            else:
                target.append(-1)
                unknown += 1
        if unknown > 1 or target.count(-1) > 1:
            return None
        return target

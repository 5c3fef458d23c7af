"""``infer-shapes``: annotate every value with its dtype and (symbolic) shape."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from lamina.compiler.ir.domain import attach_reference_functions
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register, register_property


def _has_shapes(model: ir.Model) -> bool:
    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    return all(v.shape is not None for v in values)


SHAPES = register_property("shapes", "every value has a recorded shape", "infer-shapes",
                           _has_shapes).name


def _rank(dim: object) -> int:
    """How much a dim tells: a number > a named symbol > an anonymous one (``unk__N``) or none."""
    if isinstance(dim, int):
        return 2
    name = getattr(dim, "value", None)
    return 1 if name and not str(name).startswith("unk__") else 0


def _merge(new: ir.Shape | None, old: ir.Shape) -> ir.Shape:
    """Per dim, the more informative of the fresh and the earlier annotation (exporters know symbols
    that ONNX inference loses, e.g. through a Slice with a symbolic end)."""
    if new is None:
        return old
    if len(new) != len(old):
        return new
    dims = [n if _rank(n) >= _rank(o) else o for n, o in zip(new, old, strict=True)]
    return ir.Shape(dims)


@register("infer-shapes")
class InferShapesPass(Pass):
    """Run ONNX shape inference (with data propagation) and record types and shapes on the values.

    Before: ``%y = MatMul(%x, %w)``  ->  after: ``%y: float32[batch,seq,384] = MatMul(%x, %w)``.
    Exact: it changes annotations only.
    """

    atol = 0.0
    ensures = frozenset({SHAPES})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = [(v.name, v.dtype, None if v.shape is None else tuple(v.shape))
                  for n in model.graph for v in n.outputs]
        # Recompute from scratch: shapes recorded earlier (by the exporter or before a rewrite) may
        # be stale, and inference would keep them instead of the better ones it can derive now.
        previous = {}
        for node in model.graph:
            for out in node.outputs:
                previous[id(out)] = out.shape
                out.shape = None
        # Reference functions let ONNX shape inference see through lamina ops.
        attach_reference_functions(model)
        try:
            model = common.ShapeInferencePass(strict_mode=False, data_prop=True)(model).model
        except Exception:  # noqa: BLE001 - shape inference is best effort on partial models
            model = common.ShapeInferencePass(strict_mode=False, data_prop=False)(model).model
        for node in model.graph:
            for out in node.outputs:
                old = previous.get(id(out))
                if old is not None:
                    out.shape = _merge(out.shape, old)
        after = [(v.name, v.dtype, None if v.shape is None else tuple(v.shape))
                 for n in model.graph for v in n.outputs]
        annotated = sum(a != b for a, b in zip(before, after, strict=True))
        return PassResult(model, changed=annotated > 0, stats={"annotated": annotated})

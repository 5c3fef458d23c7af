"""``infer-shapes``: annotate every value with its dtype and (symbolic) shape."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from compiler.ir.domain import attach_reference_functions
from compiler.pipeline import Pass, PassContext, PassResult, register


@register("infer-shapes")
class InferShapesPass(Pass):
    """Run ONNX shape inference (with data propagation) and record types and shapes on the values.

    Before: ``%y = MatMul(%x, %w)``  ->  after: ``%y: float32[batch,seq,384] = MatMul(%x, %w)``.
    Exact: it changes annotations only.
    """

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = [(v.name, v.dtype, None if v.shape is None else tuple(v.shape))
                  for n in model.graph for v in n.outputs]
        # Recompute from scratch: shapes recorded earlier (by the exporter or before a rewrite) may be stale,
        # and inference would keep them instead of the better ones it can derive now.
        for node in model.graph:
            for out in node.outputs:
                if not out.is_graph_output():
                    out.shape = None
        # Reference functions let ONNX shape inference see through lamina ops.
        attach_reference_functions(model)
        try:
            model = common.ShapeInferencePass(strict_mode=False, data_prop=True)(model).model
        except Exception:  # noqa: BLE001 - shape inference is best effort on partial models
            model = common.ShapeInferencePass(strict_mode=False, data_prop=False)(model).model
        after = [(v.name, v.dtype, None if v.shape is None else tuple(v.shape))
                 for n in model.graph for v in n.outputs]
        return PassResult(model, changed=False, stats={"annotated": sum(
            a != b for a, b in zip(before, after, strict=False))})

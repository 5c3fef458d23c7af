"""``cse``: common subexpression elimination."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register


@register("cse")
class CommonSubexpressionPass(Pass):
    """Merge nodes with the same op, attributes and inputs: two ``Shape(%x)`` become one. Exact."""

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = sum(1 for _ in model.graph)
        model = common.CommonSubexpressionEliminationPass(size_limit=16)(model).model
        merged = before - sum(1 for _ in model.graph)
        return PassResult(model, changed=merged > 0, stats={"merged": merged})

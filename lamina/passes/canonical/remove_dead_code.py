"""``remove-dead-code``: drop nodes, initializers, functions and opsets nothing uses."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import remove_unused_initializers


@register("remove-dead-code")
class RemoveDeadCodePass(Pass):
    """Remove nodes whose outputs reach no graph output, then unused initializers and functions.
    Exact."""

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        nodes = sum(1 for _ in model.graph)
        model = common.RemoveUnusedNodesPass()(model).model
        inits = remove_unused_initializers(model.graph)
        model = common.RemoveUnusedFunctionsPass()(model).model
        removed = nodes - sum(1 for _ in model.graph)
        return PassResult(model, changed=bool(removed or inits),
                          stats={"nodes": removed, "initializers": inits})

"""``eliminate-identity``: remove ``Identity`` nodes."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import is_standard, replace_value


@register("eliminate-identity")
class EliminateIdentityPass(Pass):
    """Replace ``%y = Identity(%x)`` by ``%x`` (kept when ``%y`` is a graph output that ``%x``
    cannot take the place of, e.g. an input passed straight through). Exact."""

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        removed = 0
        for node in list(graph):
            if not is_standard(node, "Identity") or node.inputs[0] is None:
                continue
            if replace_value(graph, node.outputs[0], node.inputs[0]):
                graph.remove(node, safe=True)
                removed += 1
        return PassResult(model, changed=removed > 0, stats={"removed": removed})

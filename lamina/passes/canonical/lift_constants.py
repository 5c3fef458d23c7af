"""``lift-constants``: turn ``Constant`` nodes into initializers."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import add_initializer, is_standard, replace_value


@register("lift-constants")
class LiftConstantsPass(Pass):
    """Replace every ``%c = Constant() {value=...}`` by an initializer ``%c``.

    Before: ``%c = Constant() {value=int64[1] = [-1]}``; ``%y = Reshape(%x, %c)``
    After:  ``init %c: int64[1] = [-1]``; ``%y = Reshape(%x, %c)``. Exact.
    """

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        lifted = 0
        for node in list(graph):
            if not is_standard(node, "Constant") or len(node.outputs) != 1:
                continue
            array = const_array(node.outputs[0])
            if array is None:
                continue
            out = node.outputs[0]
            if out.is_graph_output():
                continue
            name = out.name
            out.name = None
            new = add_initializer(graph, name, array)
            replace_value(graph, out, new)
            graph.remove(node, safe=True)
            lifted += 1
        return PassResult(model, changed=lifted > 0, stats={"lifted": lifted})

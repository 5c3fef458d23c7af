"""``remove-dropout``: drop inference-time Dropout nodes."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import is_standard, replace_value


@register("remove-dropout")
class RemoveDropoutPass(Pass):
    """Replace ``%y = Dropout(%x[, ratio, training_mode])`` by ``%x`` when not in training mode.

    Only when the mask output is unused and ``training_mode`` is absent or a constant false. Exact.
    """

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        removed = 0
        for node in list(graph):
            if not is_standard(node, "Dropout"):
                continue
            if len(node.outputs) > 1 and node.outputs[1].uses():
                continue
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                mode = const_array(node.inputs[2])
                if mode is None or bool(mode):
                    continue
            if replace_value(graph, node.outputs[0], node.inputs[0]):
                graph.remove(node, safe=True)
                removed += 1
        return PassResult(model, changed=removed > 0, stats={"removed": removed})

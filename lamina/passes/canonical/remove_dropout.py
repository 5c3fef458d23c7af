"""``remove-dropout``: the ``dropout`` row of the ``cleanup`` table on its own."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical.cleanup import DROPOUT, apply_rules


@register("remove-dropout")
class RemoveDropoutPass(Pass):
    """Replace ``%y = Dropout(%x[, ratio, training_mode])`` by ``%x`` when not in training mode.

    Only when the mask output is unused and ``training_mode`` is absent or a constant false. Exact.
    ``cleanup`` runs this with the other local rules.
    """

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        removed = apply_rules(model, [DROPOUT])[DROPOUT.name]
        return PassResult(model, changed=removed > 0, stats={"removed": removed})

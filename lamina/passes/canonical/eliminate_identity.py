"""``eliminate-identity``: the ``identity`` row of the ``cleanup`` table on its own."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical.cleanup import IDENTITY, apply_rules


@register("eliminate-identity")
class EliminateIdentityPass(Pass):
    """Replace ``%y = Identity(%x)`` by ``%x`` (kept when ``%y`` is a graph output that ``%x``
    cannot take the place of, e.g. an input passed straight through). Exact. ``cleanup`` runs this
    with the other local rules."""

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        removed = apply_rules(model, [IDENTITY])[IDENTITY.name]
        return PassResult(model, changed=removed > 0, stats={"removed": removed})

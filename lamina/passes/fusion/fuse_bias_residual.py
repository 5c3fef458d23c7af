"""``fuse-bias-residual``: MatMul + bias (+ GELU) (+ residual Add) -> ``lamina::Linear``."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import register
from lamina.passes.fusion._rules import Match, Rule, RuleFusionPass
from lamina.passes.fusion._utils import DOMAIN, Rewriter
from lamina.passes.fusion.fuse_gelu import GELU_FUSED

GELU_ACTIVATION = {"none": "gelu", "tanh": "gelu_tanh"}


def _same_dims(a: ir.Value, b: ir.Value) -> bool:
    """``a`` and ``b`` have the same rank and no dim known to differ (so Add does not broadcast)."""
    if a.shape is None or b.shape is None:
        return False
    if len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape, strict=True):
        if isinstance(x, int) and isinstance(y, int) and x != y:
            return False
        if isinstance(x, int) != isinstance(y, int) and 1 in (x, y):
            return False
        if not isinstance(x, int) and not isinstance(y, int) and x.value != y.value:
            return False
    return True


class BiasResidualRule(Rule):
    """``MatMul(x, W) + b``, then a ``lamina::Gelu`` if ``gelu``, then ``+ r`` if ``residual``."""

    anchor_ops = ("MatMul",)

    def __init__(self, *, gelu: bool, residual: bool) -> None:
        self.gelu, self.residual = gelu, residual
        self.name = "bias" + "+gelu" * gelu + "+residual" * residual

    def pattern(self, m: Match) -> dict[str, Any]:
        mm = m.add(m.anchor)
        x, w = mm.inputs[0], mm.inputs[1]
        warr = const_array(w)
        if warr is None or warr.ndim != 2:
            m.fail("weight is not a constant 2-D tensor (activation x activation MatMul)")
        n = warr.shape[1]
        add = m.user(mm.outputs[0], "Add", why="MatMul output is not used by a bias Add")
        b = m.other(add, mm.outputs[0])
        barr = const_array(b)
        if (
            barr is None
            or barr.size != n
            or (barr.ndim > 1 and any(d != 1 for d in barr.shape[:-1]))
        ):
            m.fail(f"Add operand is not a constant bias of {n} elements")
        out, activation = add.outputs[0], "none"
        if self.gelu:
            act = m.user(out, "Gelu", domain=DOMAIN, why="bias Add is not followed by a Gelu")
            approx = act.attributes.get("approximate")
            activation = GELU_ACTIVATION.get(approx.value if approx is not None else "none", "")
            if not activation:
                m.fail(f"unknown Gelu approximation {approx.value!r}")
            out = act.outputs[0]
        r = None
        if self.residual:
            res = m.user(out, "Add", why="no residual Add follows")
            r = m.other(res, out)
            if r is out or const_array(r) is not None or not _same_dims(r, out):
                m.fail("not folded as residual: operand is constant, the same value, or of "
                       "another shape (Add would broadcast)")
        return {"x": x, "w": w, "b": b, "r": r, "activation": activation}

    def rewrite(self, rw: Rewriter, m: Match, *, x: ir.Value, w: ir.Value, b: ir.Value,
                r: ir.Value | None, activation: str) -> list[ir.Value]:
        barr = const_array(b)
        if barr.ndim != 1:
            b = rw.initializer(f"{b.name}_1d", barr.reshape(-1))
        # The origin names the GELU form (bias+gelu_tanh+residual...).
        rule = "+".join(["bias", *([activation] if activation != "none" else []),
                         *(["residual"] if r is not None else [])])
        lin = rw.node(
            "Linear",
            [x, w, b] + ([r] if r is not None else []),
            {"activation": activation, "has_residual": int(r is not None)},
            domain=DOMAIN,
            rule=rule,
            before=m.last,
        )
        return [lin.outputs[0]]

    def stats(self, *, activation: str, r: ir.Value | None, **_: Any) -> dict[str, int]:
        return {"with_gelu": int(activation != "none"), "with_residual": int(r is not None)}


@register("fuse-bias-residual")
class FuseBiasResidualPass(RuleFusionPass):
    """Fuse a dense layer and its epilogue into ``lamina::Linear``.

    Before::

        %xw = MatMul(%x, %W)            # W constant [K, N]
        %z  = Add(%xw, %b)              # b constant [N], either operand order
        %a  = lamina::Gelu(%z)          # optional
        %y  = Add(%a, %r)               # optional residual, same shape as %a, either order

    After: ``%y = lamina::Linear(%x, %W, %b[, %r]) {activation="none"|"gelu"|"gelu_tanh",
    has_residual}``.

    One :class:`BiasResidualRule` per variant, the longest epilogue first; a step is taken only
    when nothing outside the match reads the value before it (the rules framework checks that).
    Run after ``fuse-gelu`` (to fold the activation) and ``fuse-attention`` / ``merge-qkv`` (so
    attention projections are final). Anchor: ``MatMul``. rtol 1e-4 (same arithmetic).
    """

    requires = frozenset({GELU_FUSED})
    rules = tuple(BiasResidualRule(gelu=g, residual=r)
                  for g, r in ((True, True), (True, False), (False, True), (False, False)))

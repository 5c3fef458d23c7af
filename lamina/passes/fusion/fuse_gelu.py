"""``fuse-gelu``: the erf and tanh forms of GELU -> ``lamina::Gelu``."""

from __future__ import annotations

import math
from typing import Any

import onnx_ir as ir

from lamina.compiler.pipeline import register, register_property
from lamina.passes.fusion._match import close, is_op, producer, scalar
from lamina.passes.fusion._rules import Match, Rule, RuleFusionPass
from lamina.passes.fusion._utils import DOMAIN, Rewriter

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _scaled_input(value: ir.Value | None, factor: float) -> tuple[ir.Value, ir.Node] | None:
    """``value = x * factor`` or ``x / (1/factor)``: returns (x, node)."""
    node = producer(value, "Mul", "Div")
    if node is None:
        return None
    a, b = node.inputs[0], node.inputs[1]
    if node.op_type == "Div":
        return (a, node) if close(scalar(b), 1.0 / factor) else None
    if close(scalar(b), factor):
        return a, node
    if close(scalar(a), factor):
        return b, node
    return None


def _cube_of(value: ir.Value | None) -> tuple[ir.Value, list[ir.Node]] | None:
    """``value = x**3`` as Pow(x, 3), Mul(Mul(x, x), x) or Mul(x, Mul(x, x))."""
    node = producer(value, "Pow", "Mul")
    if node is None:
        return None
    if node.op_type == "Pow":
        return (node.inputs[0], [node]) if close(scalar(node.inputs[1]), 3.0, 1e-6) else None
    for sq_side, x_side in ((0, 1), (1, 0)):
        sq = producer(node.inputs[sq_side], "Mul")
        x = node.inputs[x_side]
        if sq is not None and sq.inputs[0] is x and sq.inputs[1] is x:
            return x, [node, sq]
    return None


def _no_gelu_arithmetic(model: ir.Model) -> bool:
    # Every GELU form fuse-gelu matches goes through Erf or Tanh.
    return not any(is_op(node, "Erf", "Tanh") for node in model.graph)


GELU_FUSED = register_property(
    "gelu-fused", "GELUs are lamina::Gelu nodes that epilogues can absorb", "fuse-gelu",
    _no_gelu_arithmetic).name


class GeluRule(Rule):
    """``0.5 * x * (1 + Erf(x / sqrt(2)))`` (``form="erf"``) or its tanh approximation
    (``form="tanh"``), the final product associated in any order."""

    def __init__(self, *, form: str) -> None:
        self.form = self.name = form
        self.anchor_ops = (form.capitalize(),)

    def pattern(self, m: Match) -> dict[str, Any]:
        anchor = m.add(m.anchor)
        if self.form == "erf":
            found = _scaled_input(anchor.inputs[0], 1.0 / SQRT2)
            if found is None:
                m.fail("erf input is not x / sqrt(2) or x * (1 / sqrt(2))")
            x = found[0]
            m.add(found[1])
        else:
            found = _scaled_input(anchor.inputs[0], SQRT_2_OVER_PI)
            if found is None:
                m.fail("tanh input is not sqrt(2/pi) * (...)")
            m.add(found[1])
            add = producer(found[0], "Add")
            if add is None:
                m.fail("tanh argument is not sqrt(2/pi) * (x + 0.044715 * x**3)")
            m.add(add)

            def x_plus_cube(cand: ir.Value | None, rest: ir.Value | None) -> ir.Value:
                k = _scaled_input(rest, 0.044715)
                cube = _cube_of(k[0]) if k is not None else None
                if cube is None or cube[0] is not cand:
                    m.fail("tanh argument: no x + 0.044715 * x**3 term", add)
                for node in (k[1], *cube[1]):
                    m.add(node)
                return cand

            x = m.either(add, x_plus_cube)
        t = anchor.outputs[0]
        why = f"{anchor.op_type} output is not used by one Add(., 1.0)"
        one_add = m.user(t, "Add", why=why)
        if not close(scalar(m.other(one_add, t)), 1.0):
            m.fail(why)
        m.outputs = [self._product(m, x, one_add.outputs[0])]
        return {"x": x}

    @staticmethod
    def _product(m: Match, x: ir.Value, a: ir.Value) -> ir.Value:
        """Climb the Mul tree above ``a`` until its factors are exactly {x, a, 0.5}."""
        need_x, need_half = True, True
        cur = a
        while need_x or need_half:
            missing = " and ".join(["x"] * need_x + ["0.5"] * need_half)
            mul = m.user(cur, "Mul", why=f"the product x * (1 + t) * 0.5 is incomplete: missing "
                                         f"{missing}")
            other = m.other(mul, cur)
            leaves = [other]
            sub = producer(other, "Mul")
            if sub is not None and (sub.inputs[0] is x or sub.inputs[1] is x):
                leaves = list(sub.inputs)
                m.add(sub)
            for leaf in leaves:
                if leaf is x and need_x:
                    need_x = False
                elif close(scalar(leaf), 0.5) and need_half:
                    need_half = False
                else:
                    m.fail(f"unexpected factor {leaf.name!r} in the GELU product")
            cur = mul.outputs[0]
        return cur

    def rewrite(self, rw: Rewriter, m: Match, *, x: ir.Value) -> list[ir.Value]:
        gelu = rw.node("Gelu", [x], {"approximate": "none" if self.form == "erf" else "tanh"},
                       domain=DOMAIN, before=m.outputs[0].producer())
        return [gelu.outputs[0]]


@register("fuse-gelu")
class FuseGeluPass(RuleFusionPass):
    """Fuse GELU written with ``Erf`` or ``Tanh`` into ``lamina::Gelu{approximate}``.

    Before (erf, rule ``erf``)::

        %u = Div(%x, 1.4142135)   # or Mul(%x, 0.70710677)
        %e = Erf(%u); %a = Add(%e, 1.0); %m = Mul(%x, %a); %y = Mul(%m, 0.5)

    Before (tanh, rule ``tanh``): ``0.5 * x * (1 + Tanh(0.7978846 * (x + 0.044715 * x**3)))``,
    cube as ``Pow(x, 3)`` or ``x*x*x``.

    After: ``%y = lamina::Gelu(%x) {approximate="none"|"tanh"}``. The final product
    ``x * (1 + t) * 0.5`` may be associated in any order (0.5 applied first, last, or to
    ``1 + t``), operands in any order.
    One :class:`GeluRule` per form. Anchor: ``Erf`` / ``Tanh``. Intermediates must have no other
    users. rtol 1e-4.
    """

    ensures = frozenset({GELU_FUSED})
    rules = (GeluRule(form="erf"), GeluRule(form="tanh"))

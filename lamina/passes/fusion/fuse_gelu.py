"""``fuse-gelu``: the erf and tanh forms of GELU -> ``lamina::Gelu``."""

from __future__ import annotations

import math

import onnx_ir as ir

from lamina.compiler.pipeline import register, register_property
from lamina.passes.fusion._match import (
    NoMatch,
    close,
    is_op,
    only_used_by,
    other_input,
    producer,
    scalar,
    single_consumer,
)
from lamina.passes.fusion._utils import DOMAIN, AnchoredFusionPass, Rewriter

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


@register("fuse-gelu")
class FuseGeluPass(AnchoredFusionPass):
    """Fuse GELU written with ``Erf`` or ``Tanh`` into ``lamina::Gelu{approximate}``.

    Before (erf, rule ``erf``)::

        %u = Div(%x, 1.4142135)   # or Mul(%x, 0.70710677)
        %e = Erf(%u); %a = Add(%e, 1.0); %m = Mul(%x, %a); %y = Mul(%m, 0.5)

    Before (tanh, rule ``tanh``): ``0.5 * x * (1 + Tanh(0.7978846 * (x + 0.044715 * x**3)))``,
    cube as ``Pow(x, 3)`` or ``x*x*x``.

    After: ``%y = lamina::Gelu(%x) {approximate="none"|"tanh"}``. The final product
    ``x * (1 + t) * 0.5`` may be associated in any order (0.5 applied first, last, or to
    ``1 + t``), operands in any order.
    Anchor: ``Erf`` / ``Tanh``. Intermediates must have no other users. rtol 1e-4.
    """

    ensures = frozenset({GELU_FUSED})

    def is_anchor(self, node: ir.Node) -> bool:
        return is_op(node, "Erf", "Tanh")

    def rewrite(self, rw: Rewriter, anchor: ir.Node) -> None:
        if anchor.op_type == "Erf":
            found = _scaled_input(anchor.inputs[0], 1.0 / SQRT2)
            if found is None:
                raise NoMatch("erf input is not x / sqrt(2) or x * (1 / sqrt(2))")
            x, scale_node = found
            inner = [scale_node]
            approximate = "none"
        else:
            found = _scaled_input(anchor.inputs[0], SQRT_2_OVER_PI)
            if found is None:
                raise NoMatch("tanh input is not sqrt(2/pi) * (...)")
            poly, scale_node = found
            add = producer(poly, "Add")
            if add is None:
                raise NoMatch("tanh argument is not sqrt(2/pi) * (x + 0.044715 * x**3)")
            x = k_term = None
            for i in (0, 1):
                cand, rest = add.inputs[i], add.inputs[1 - i]
                k = _scaled_input(rest, 0.044715)
                cube = _cube_of(k[0]) if k is not None else None
                if cube is not None and cube[0] is cand:
                    x, k_term = cand, [k[1], *cube[1]]
                    break
            if x is None:
                raise NoMatch("tanh argument: no x + 0.044715 * x**3 term")
            inner = [scale_node, add, *k_term]
            approximate = "tanh"
        one_add = single_consumer(anchor.outputs[0])
        if not is_op(one_add, "Add") or not close(
            scalar(other_input(one_add, anchor.outputs[0])), 1.0
        ):
            raise NoMatch(f"{anchor.op_type} output is not used by one Add(., 1.0)")
        root, product = self._product(x, one_add.outputs[0])
        nodes = [*inner, anchor, one_add, *product]
        leak = only_used_by([n.outputs[0] for n in nodes if n is not root], nodes)
        if leak is not None:
            raise NoMatch(f"intermediate {leak.name!r} is used outside the GELU")
        gelu = rw.node(
            "Gelu",
            [x],
            {"approximate": approximate},
            domain=DOMAIN,
            rule=anchor.op_type.lower(),
            before=root,
        )
        rw.replace(root.outputs[0], gelu.outputs[0])
        rw.remove_dead(nodes)

    @staticmethod
    def _product(x: ir.Value, a: ir.Value) -> tuple[ir.Node, list[ir.Node]]:
        """Climb the Mul tree above ``a`` until its factors are exactly {x, a, 0.5}."""
        need_x, need_half = True, True
        cur = a
        nodes: list[ir.Node] = []
        while need_x or need_half:
            mul = single_consumer(cur)
            if not is_op(mul, "Mul"):
                raise NoMatch(
                    "the product x * (1 + t) * 0.5 is incomplete: "
                    f"missing {'x' if need_x else ''}{' and ' if need_x and need_half else ''}"
                    f"{'0.5' if need_half else ''}"
                )
            nodes.append(mul)
            other = other_input(mul, cur)
            leaves = [other]
            sub = producer(other, "Mul")
            if sub is not None and single_consumer(other) is mul and (
                sub.inputs[0] is x or sub.inputs[1] is x
            ):
                leaves = list(sub.inputs)
                nodes.append(sub)
            for leaf in leaves:
                if leaf is x and need_x:
                    need_x = False
                elif close(scalar(leaf), 0.5) and need_half:
                    need_half = False
                else:
                    raise NoMatch(f"unexpected factor {leaf.name!r} in the GELU product")
            cur = mul.outputs[0]
        return nodes[0] if len(nodes) == 1 else next(n for n in nodes if n.outputs[0] is cur), nodes

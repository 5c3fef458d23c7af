"""The fusion rules framework (_rules.py): operand orders, removability, the node a miss names."""

from __future__ import annotations

import io
from typing import Any

import onnx.helper as h
import onnx_ir as ir
import pytest

from lamina.compiler.driver.api import Debug, optimize
from lamina.compiler.pipeline import PassContext
from lamina.passes.fusion._rules import Match, Rule, RuleFusionPass
from lamina.passes.fusion._utils import Rewriter
from tests.passes.fusion._graphs import (
    HID,
    apply,
    check_fusion,
    check_no_fire,
    f32,
    layernorm,
    model,
    rand,
    signature,
)


def _dense(bias_first: bool, residual_first: bool, leak: str | None = None) -> ir.Model:
    """``Add(Gelu(Add(MatMul(x, W), b)), r)`` with the Adds' operands in the given orders; ``leak``
    names an intermediate that an Identity also reads (a graph output)."""
    n = [h.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
         h.make_node("Add", ["b", "xw"] if bias_first else ["xw", "b"], ["z"], name="bias"),
         h.make_node("Gelu", ["z"], ["a"], name="gelu", domain="lamina", approximate="none"),
         h.make_node("Add", ["r", "a"] if residual_first else ["a", "r"], ["y"], name="res")]
    outputs = [f32("y", None)]
    if leak:
        n.append(h.make_node("Identity", [leak], ["leaked"], name="reader"))
        outputs.append(f32("leaked", None))
    return model(n, [f32("x", ["batch", "seq", HID]), f32("r", ["batch", "seq", HID])], outputs,
                 [rand("W", HID, HID), rand("b", HID)], domains=("lamina",))


@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("residual_first", [False, True])
def test_both_operand_orders(bias_first: bool, residual_first: bool) -> None:
    m = check_fusion("fuse-bias-residual", _dense(bias_first, residual_first))
    assert signature(m) == [
        "lamina::Linear(x, const[16, 16], const[16], r){activation='gelu', has_residual=1}"
    ]
    assert next(iter(m.graph)).metadata_props["lamina.origin"] == (
        "fuse-bias-residual:bias+gelu+residual"
    )


def test_interior_user_limits_the_match() -> None:
    # The Gelu's output is read outside: the residual cannot be folded, bias + gelu still can.
    m = check_fusion("fuse-bias-residual", _dense(False, False, leak="a"))
    assert signature(m)[0] == "lamina::Linear(x, const[16, 16], const[16]){activation='gelu', " \
        "has_residual=0}"


def test_partial_match_is_explained() -> None:
    # r broadcasts ([16] against [batch, seq, 16]): the residual variant stops at that Add, the
    # bias + gelu variant fires, and --debug-match says why the Add stayed.
    m = _dense(False, False)
    (r,) = [v for v in m.graph.inputs if v.name == "r"]
    r.shape = ir.Shape([HID])
    result, ctx = apply("fuse-bias-residual", m)
    assert result.stats["fused"] == 1 and result.stats["unmatched"] == 0
    assert ctx.explanations == [
        "[fuse-bias-residual] MatMul 'mm' (stopped at Add 'res'): fused as bias+gelu only: not "
        "folded as residual: operand is constant, the same value, or of another shape (Add would "
        "broadcast)"
    ]


def test_interior_user_refuses_and_names_it() -> None:
    # The MatMul's output is read outside: no variant can remove the MatMul.
    check_no_fire("fuse-bias-residual", _dense(False, False, leak="xw"),
                  "intermediate 'xw' is also used by Identity 'reader', outside the match")


def test_layernorm_intermediate_graph_output_refuses() -> None:
    m = layernorm()
    (d,) = [n.outputs[0] for n in m.graph if n.op_type == "Sub"]
    m.graph.outputs.append(d)
    check_no_fire("fuse-layernorm", m, f"intermediate {d.name!r} is a graph output")


def test_layernorm_without_gamma_and_beta() -> None:
    # The shortest variant (no Mul(gamma), no Add(beta)): gamma becomes ones, beta is left out.
    m = layernorm()
    for node in list(m.graph):
        if node.op_type in ("Mul", "Add") and node.inputs[1].name in ("gamma", "beta"):
            node.outputs[0].replace_all_uses_with(node.inputs[0], replace_graph_outputs=True)
            m.graph.remove(node, safe=True)
    out = check_fusion("fuse-layernorm", m)
    assert [s.split("{")[0] for s in signature(out)] == ["LayerNormalization(x, const[16])"]


def test_debug_match_names_the_node_where_matching_stopped() -> None:
    m = layernorm(pow_exp=3.0)
    for i, node in enumerate(m.graph):
        node.name = f"n{i}_{node.op_type.lower()}"
    report = io.StringIO()
    optimize(m, "fuse-layernorm", Debug(debug_match=frozenset({"fuse-layernorm"}),
                                        report_stream=report))
    lines = report.getvalue().splitlines()
    assert (
        "[fuse-layernorm] ReduceMean 'n0_reducemean' (stopped at Pow 'n2_pow'): variance: Pow "
        "exponent is 3.0, not 2"
    ) in lines, lines


class _NegNegRule(Rule):
    """``Mul(Neg(Neg(x)), c)`` -> ``Mul(x, c)`` (a toy rule: both operand orders of the Mul)."""

    anchor_ops = ("Neg",)
    name = "toy"

    def pattern(self, m: Match) -> dict[str, Any]:
        inner = m.add(m.anchor)
        outer = m.user(inner.outputs[0], "Neg", why="Neg is not followed by Neg")
        mul = m.user(outer.outputs[0], "Mul", why="Neg(Neg) is not followed by Mul")
        c = m.other(mul, outer.outputs[0])
        if c.const_value is None:
            m.fail("the Mul's other operand is not a constant")
        return {"x": inner.inputs[0], "c": c}

    def rewrite(self, rw: Rewriter, m: Match, *, x: ir.Value, c: ir.Value) -> list[ir.Value]:
        return [rw.node("Mul", [x, c], before=m.last).outputs[0]]


class _ToyPass(RuleFusionPass):
    name = "toy-neg-neg"
    rules = (_NegNegRule(),)


@pytest.mark.parametrize("const_first", [False, True])
def test_toy_rule(const_first: bool) -> None:
    n = [h.make_node("Neg", ["x"], ["n1"], name="neg1"), h.make_node("Neg", ["n1"], ["n2"]),
         h.make_node("Mul", ["c", "n2"] if const_first else ["n2", "c"], ["y"])]
    m = model(n, [f32("x", [2, HID])], [f32("y", None)], [rand("c", HID)])
    result = _ToyPass().run(m, PassContext())
    assert result.changed and result.stats == {"fused": 1, "unmatched": 0}
    (node,) = list(result.model.graph)
    assert signature(result.model) == ["Mul(x, const[16]){}"]
    assert node.metadata_props["lamina.origin"] == "toy-neg-neg:toy"

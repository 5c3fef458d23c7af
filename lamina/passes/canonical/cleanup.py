"""``cleanup``: the table of local rewrites (one node replaced by one of its inputs), run to a fixed
point. Adding a cleanup is one row in :data:`RULES`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import is_standard, replace_value


@dataclass(frozen=True)
class LocalRule:
    """``op_type`` nodes for which ``rewrite`` returns a value are replaced by that value."""

    name: str
    op_type: str
    rewrite: Callable[[ir.Node], ir.Value | None]


def _identity(node: ir.Node) -> ir.Value | None:
    return node.inputs[0]  # y = Identity(x)  ->  x


def _dropout(node: ir.Node) -> ir.Value | None:
    # y = Dropout(x[, ratio, training_mode])  ->  x, at inference: the mask output unused and
    # training_mode absent or a constant false.
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = const_array(node.inputs[2])
        if mode is None or bool(mode):
            return None
    return node.inputs[0]


IDENTITY = LocalRule("identity", "Identity", _identity)
DROPOUT = LocalRule("dropout", "Dropout", _dropout)
RULES: tuple[LocalRule, ...] = (IDENTITY, DROPOUT)


def apply_rules(model: ir.Model, rules: Sequence[LocalRule] = RULES,
                max_rounds: int = 8) -> dict[str, int]:
    """Apply ``rules`` until none fires (at most ``max_rounds`` sweeps); counts per rule. A
    replacement is skipped when the output is a graph output its input cannot stand for."""
    by_op = {r.op_type: r for r in rules}
    counts = {r.name: 0 for r in rules}
    graph = model.graph
    for _ in range(max_rounds):
        fired = 0
        for node in list(graph):
            rule = by_op.get(node.op_type)
            if rule is None or node.graph is None or not is_standard(node):
                continue
            new = rule.rewrite(node)
            if new is None or not replace_value(graph, node.outputs[0], new):
                continue
            graph.remove(node, safe=True)
            counts[rule.name] += 1
            fired += 1
        if not fired:
            break
    return counts


@register("cleanup")
class CleanupPass(Pass):
    """Run the local rewrite table to a fixed point: ``Identity(x) -> x``, inference ``Dropout(x)
    -> x`` (see :data:`RULES`). Outputs that are graph outputs their input cannot stand for (an
    input passed straight through) stay. Exact."""

    atol = 0.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        counts = apply_rules(model)
        return PassResult(model, changed=sum(counts.values()) > 0, stats=counts)

"""Rewrite helpers shared by the fusion passes: build a node, splice it in, drop what it
replaced."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import Namer, set_origin
from lamina.compiler.ir.domain import DOMAIN, DOMAIN_VERSION
from lamina.compiler.pipeline import Pass, PassContext, PassResult
from lamina.passes.canonical._utils import add_initializer

__all__ = ["AnchoredFusionPass", "Rewriter", "add_initializer", "DOMAIN"]


class Rewriter:
    """Per-run helper: fresh names, origin metadata, splicing, explanations."""

    def __init__(self, model: ir.Model, ctx: PassContext, pass_name: str) -> None:
        self.model = model
        self.graph = model.graph
        self.ctx = ctx
        self.pass_name = pass_name
        self.namer = Namer(model.graph)
        self.explain_on = ctx.wants_explanations(pass_name)
        self.misses = 0
        #: Origin label for the nodes :meth:`node` creates without an explicit ``rule``.
        self.rule = ""

    def explain(
        self, node: ir.Node, reason: str, at: ir.Node | None = None, *, miss: bool = True
    ) -> None:
        """Record a miss (or with ``miss=False`` a partial one) at anchor ``node``; ``at`` is the
        node where matching stopped."""
        self.misses += int(miss)
        if self.explain_on:
            here = f"{node.op_type} {node.name!r}"
            if at is not None and at is not node:
                here += f" (stopped at {at.op_type} {at.name!r})"
            self.ctx.explain(here, reason)

    def initializer(self, prefix: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self.graph, self.namer(prefix), array)

    def node(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: dict[str, Any] | None = None,
        *,
        rule: str = "",
        domain: str = "",
        num_outputs: int = 1,
        before: ir.Node,
    ) -> ir.Node:
        """Create a node, insert it before ``before`` and record its origin."""
        base = f"{self.pass_name}_{op_type}".replace("-", "_")
        node = ir.node(
            op_type,
            list(inputs),
            attributes or {},
            domain=domain,
            num_outputs=num_outputs,
            name=self.namer(base),
        )
        for out in node.outputs:
            out.name = self.namer(f"{base}_out")
        rule = rule or self.rule
        set_origin(node, f"{self.pass_name}:{rule}" if rule else self.pass_name)
        self.graph.insert_before(before, node)
        if domain == DOMAIN:
            self.model.opset_imports.setdefault(DOMAIN, DOMAIN_VERSION)
        return node

    def replace(self, old: ir.Value, new: ir.Value) -> None:
        """Make ``new`` take ``old``'s place (uses, graph-output name, type and shape)."""
        new.dtype = old.dtype
        new.shape = old.shape
        if old.is_graph_output():
            name = old.name
            old.name = None
            new.name = name
            old.replace_all_uses_with(new, replace_graph_outputs=True)
        else:
            old.replace_all_uses_with(new)

    def remove_dead(self, nodes: Iterable[ir.Node], *, cascade: bool = False) -> int:
        """Remove those of ``nodes`` whose outputs nothing uses any more (repeatedly, consumers
        first).

        With ``cascade``, a removed node's producers become candidates too, so the cone that only
        fed the replaced nodes (e.g. a mask's or a Reshape's shape arithmetic) goes with them;
        nothing outside that cone is touched (this is not whole-model dead-code removal)."""
        pending = {id(n): n for n in nodes}
        removed = 0
        progress = True
        while progress and pending:
            progress = False
            for key, n in list(pending.items()):
                if n.graph is None:
                    del pending[key]
                    continue
                if any(o.uses() or o.is_graph_output() for o in n.outputs):
                    continue
                producers = [v.producer() for v in n.inputs if v is not None] if cascade else []
                self.graph.remove(n, safe=True)
                del pending[key]
                removed += 1
                progress = True
                for p in producers:
                    if p is not None and p.graph is self.graph:
                        pending.setdefault(id(p), p)
        return removed


class AnchoredFusionPass(Pass):
    """A fusion pass: visit every anchor node, try the rewrite, explain the misses.

    Subclasses implement :meth:`is_anchor` and :meth:`rewrite`, which raises ``NoMatch(reason)``
    when the pattern does not hold and may return extra counters for the stats.
    """

    rtol = 1e-4
    atol = 1e-5
    count_stat = "fused"

    def is_anchor(self, node: ir.Node) -> bool:
        raise TypeError(f"{type(self).__name__} must define is_anchor()")

    def rewrite(self, rw: Rewriter, node: ir.Node) -> dict[str, int] | None:
        raise TypeError(f"{type(self).__name__} must define rewrite()")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from lamina.passes.fusion._match import NoMatch

        rw = Rewriter(model, ctx, self.name)
        stats: dict[str, int] = {self.count_stat: 0}
        for node in list(model.graph):
            if node.graph is None or not self.is_anchor(node):
                continue
            try:
                extra = self.rewrite(rw, node)
            except NoMatch as exc:
                rw.explain(node, str(exc), exc.node)
                continue
            stats[self.count_stat] += 1
            for key, value in (extra or {}).items():
                stats[key] = stats.get(key, 0) + value
        stats["unmatched"] = rw.misses
        return PassResult(model, changed=stats[self.count_stat] > 0, stats=stats)

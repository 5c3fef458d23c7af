"""Fusion rules as pattern / check / rewrite, with the bookkeeping done once.

A :class:`Rule` says what it matches (:meth:`Rule.pattern`, walking from an anchor node through a
:class:`Match`), what must hold besides the structure (:meth:`Rule.check`) and what replaces it
(:meth:`Rule.rewrite`). The framework (:meth:`Rule.apply`) does the rest, the same way for every
rule:

- operand order: :meth:`Match.other` takes either input of a binary node, :meth:`Match.either`
  tries a commutative node's operands in both orders;
- removability: every matched node's outputs, except the values the rewrite replaces, must have no
  user outside the match and must not be graph outputs; otherwise the match fails naming the node
  and the outside user (so patterns never count users themselves);
- the rewrite's values take the replaced values' place, exactly the matched nodes are removed, and
  the nodes it creates record their origin ``pass:rule``;
- a failure is a :class:`NoMatch` carrying the node where matching stopped, which ``--debug-match``
  prints.

Variants of one fusion are parameters of one rule class (``BiasResidualRule(gelu=True,
residual=False)``); :class:`RuleFusionPass` tries its rules at each anchor in order, most specific
first, and when none applies reports the failure that got furthest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar

import onnx_ir as ir

from lamina.passes.fusion._match import NoMatch, is_op, where
from lamina.passes.fusion._utils import AnchoredFusionPass, Rewriter

T = TypeVar("T")
COMMUTATIVE = frozenset({"Add", "Mul"})


class Match:
    """The nodes a pattern has matched so far, and the values its rewrite will replace."""

    def __init__(self, anchor: ir.Node) -> None:
        self.anchor = anchor
        self.nodes: list[ir.Node] = []
        #: Values the rewrite replaces (default: the last matched node's first output).
        self.outputs: list[ir.Value] = []
        self.bindings: dict[str, Any] = {}

    @property
    def last(self) -> ir.Node:
        return self.nodes[-1] if self.nodes else self.anchor

    def add(self, node: ir.Node) -> ir.Node:
        if all(n is not node for n in self.nodes):
            self.nodes.append(node)
        return node

    def fail(self, reason: str, node: ir.Node | None = None) -> NoReturn:
        raise NoMatch(reason, node or self.last)

    def user(self, value: ir.Value, *op_types: str, domain: str | None = None,
             why: str = "") -> ir.Node:
        """The first user of ``value`` that is one of ``op_types``; it joins the match. (Other
        users are left to the removability check.)"""
        for use in value.uses():
            if is_op(use.node, *op_types, domain=domain):
                return self.add(use.node)
        self.fail(why or f"{value.name!r} has no {'/'.join(op_types)} user")

    def other(self, node: ir.Node, value: ir.Value, why: str = "") -> ir.Value:
        """The operand of binary ``node`` that is not ``value`` (``value`` on either side)."""
        a, b = node.inputs[0], node.inputs[1]
        if a is value:
            return b
        if b is value:
            return a
        self.fail(why or f"{value.name!r} is not an operand", node)

    def first(self, candidates: Iterable[T], fn: Callable[[T], Any]) -> Any:
        """``fn`` on each candidate until one matches (the match is rolled back after each
        failure); the last failure if none does."""
        size, err = len(self.nodes), None
        for cand in candidates:
            try:
                return fn(cand)
            except NoMatch as exc:
                del self.nodes[size:]
                err = exc
        if err is None:
            self.fail("no candidate to match")
        raise err

    def either(self, node: ir.Node, fn: Callable[[ir.Value | None, ir.Value | None], Any]) -> Any:
        """``fn(a, b)`` on the operands of ``node``, in both orders when it is commutative."""
        a, b = node.inputs[0], node.inputs[1]
        orders = [(a, b), (b, a)] if node.op_type in COMMUTATIVE else [(a, b)]
        return self.first(orders, lambda ab: fn(*ab))

    def check_removable(self) -> None:
        inside = {id(n) for n in self.nodes}
        kept = {id(v) for v in self.outputs}
        for node in self.nodes:
            for out in node.outputs:
                if id(out) in kept:
                    continue
                if out.is_graph_output():
                    self.fail(f"intermediate {out.name!r} is a graph output", node)
                for use in out.uses():
                    if id(use.node) not in inside:
                        self.fail(f"intermediate {out.name!r} is also used by {where(use.node)}, "
                                  "outside the match", node)


class Rule:
    """One fusion. Subclasses set :attr:`anchor_ops` (and :attr:`anchor_domain`) and implement
    :meth:`pattern` (returning the bindings) and :meth:`rewrite`; :meth:`check` is optional."""

    anchor_ops: tuple[str, ...] = ()
    anchor_domain: ClassVar[str | None] = None
    #: Origin label of the nodes the rewrite creates (``pass:name``).
    name: str = ""

    def is_anchor(self, node: ir.Node) -> bool:
        return is_op(node, *self.anchor_ops, domain=self.anchor_domain)

    def pattern(self, m: Match) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} must define pattern()")

    def check(self, rw: Rewriter, m: Match, **bindings: Any) -> None:
        """Conditions beyond structure (dtypes, constants); raise ``NoMatch(reason, node)``."""

    def rewrite(self, rw: Rewriter, m: Match, **bindings: Any) -> Sequence[ir.Value]:
        """Build the replacement; return one value per ``m.outputs``."""
        raise TypeError(f"{type(self).__name__} must define rewrite()")

    def stats(self, **bindings: Any) -> dict[str, int]:
        return {}

    def apply(self, rw: Rewriter, anchor: ir.Node) -> Match:
        """Match at ``anchor``, check, rewrite; the match (with its ``bindings``) on success."""
        m = Match(anchor)
        try:
            m.bindings = self.pattern(m)
        except NoMatch as exc:
            exc.depth = len(m.nodes)
            raise
        if not m.outputs:
            m.outputs = [m.last.outputs[0]]
        try:
            self.check(rw, m, **m.bindings)
            m.check_removable()
        except NoMatch as exc:
            exc.depth = len(m.nodes) + 0.5  # a full structural match failing a check: furthest
            raise
        rw.rule = self.name
        try:
            new = self.rewrite(rw, m, **m.bindings)
        finally:
            rw.rule = ""
        for old, value in zip(m.outputs, new, strict=True):
            rw.replace(old, value)
        rw.graph.remove(m.nodes, safe=True)
        return m


class RuleFusionPass(AnchoredFusionPass):
    """A fusion pass made of :attr:`rules`, tried in order at each anchor (first match wins)."""

    rules: ClassVar[Sequence[Rule]] = ()

    def is_anchor(self, node: ir.Node) -> bool:
        return any(rule.is_anchor(node) for rule in self.rules)

    def rewrite(self, rw: Rewriter, node: ir.Node) -> dict[str, int]:
        misses: list[NoMatch] = []
        for rule in self.rules:
            if not rule.is_anchor(node):
                continue
            try:
                m = rule.apply(rw, node)
            except NoMatch as exc:
                misses.append(exc)
                continue
            # A longer variant that got past this match stopped for a reason worth telling.
            for exc in misses:
                if exc.depth > len(m.nodes):
                    rw.explain(node, f"fused as {rule.name} only: {exc}", exc.node, miss=False)
            return rule.stats(**m.bindings)
        raise max(misses, key=lambda exc: exc.depth)  # the first of the furthest

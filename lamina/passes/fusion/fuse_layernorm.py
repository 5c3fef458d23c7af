"""``fuse-layernorm``: decomposed layer normalization -> ONNX ``LayerNormalization``."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.pipeline import register
from lamina.passes.fusion._match import (
    close,
    const_array,
    is_last_axis,
    is_op,
    keepdims,
    last_dim,
    producer,
    rank,
    reduce_axes,
    scalar,
)
from lamina.passes.fusion._rules import Match, Rule, RuleFusionPass
from lamina.passes.fusion._utils import Rewriter


def _centered(value: ir.Value | None, x: ir.Value) -> bool:
    """``value = x - ReduceMean(x)`` (the second copy some exporters compute)."""
    sub = producer(value, "Sub")
    if sub is None or sub.inputs[0] is not x:
        return False
    rm = producer(sub.inputs[1], "ReduceMean")
    return rm is not None and rm.inputs[0] is x


def _vector(value: ir.Value | None, hidden: int | None) -> np.ndarray | None:
    arr = const_array(value)
    if arr is None or arr.dtype != np.float32:
        return None
    flat = arr.reshape(-1)
    if arr.ndim > 1 and any(s != 1 for s in arr.shape[:-1]):
        return None
    if hidden is not None and flat.size != hidden:
        return None
    return flat


def _flat(rw: Rewriter, value: ir.Value) -> ir.Value:
    arr = const_array(value)
    if arr.ndim == 1:
        return value
    return rw.initializer(f"{value.name}_1d", arr.reshape(-1))


class LayerNormRule(Rule):
    """One layer norm variant: epsilon inside or after the square root, with or without the
    ``gamma`` Mul and the ``beta`` Add. The alternatives that do not change the result's form
    (``x - mean`` once or twice, ``Pow`` or ``Mul(d, d)``, ``Div`` or ``Reciprocal`` + ``Mul``)
    are tried inside the pattern."""

    anchor_ops = ("ReduceMean",)

    def __init__(self, *, eps_after_sqrt: bool, gamma: bool, beta: bool) -> None:
        self.eps_after_sqrt, self.gamma, self.beta = eps_after_sqrt, gamma, beta
        self.name = "eps-after-sqrt" if eps_after_sqrt else "eps-in-sqrt"

    def pattern(self, m: Match) -> dict[str, Any]:
        mean = m.add(m.anchor)
        x = mean.inputs[0]
        if not is_last_axis(reduce_axes(mean), rank(x)) or not keepdims(mean):
            m.fail("mean: ReduceMean is not over the last axis with keepdims=1")
        subs = [
            u.node
            for u in mean.outputs[0].uses()
            if is_op(u.node, "Sub")
            and u.node.inputs[0] is x
            and u.node.inputs[1] is mean.outputs[0]
        ]
        if not subs:
            m.fail("mean: no Sub(x, mean) uses it (not a layer norm)")
        return m.first(subs, lambda sub: self._from_sub(m, x, sub))

    def _from_sub(self, m: Match, x: ir.Value, sub: ir.Node) -> dict[str, Any]:
        d = m.add(sub).outputs[0]
        # The variance branch among the users of d (the last one, as the exporters order them).
        sq = None
        for use in d.uses():
            u = use.node
            if (is_op(u, "Pow") and u.inputs[0] is d) or (
                is_op(u, "Mul") and u.inputs[0] is d and u.inputs[1] is d
            ):
                sq = u
        if sq is None:
            m.fail(f"x - mean: no Pow(d, 2) or Mul(d, d) among its users ({len(d.uses())} uses)")
        m.add(sq)
        if sq.op_type == "Pow" and not close(scalar(sq.inputs[1]), 2.0, 1e-6):
            m.fail(f"variance: Pow exponent is {scalar(sq.inputs[1])}, not 2")
        why = "variance: square not followed by ReduceMean over the last axis (keepdims=1)"
        var = m.user(sq.outputs[0], "ReduceMean", why=why)
        if not is_last_axis(reduce_axes(var), rank(x)) or not keepdims(var):
            m.fail(why)
        v = var.outputs[0]
        if self.eps_after_sqrt:  # Sqrt(var) + eps
            sqrt = m.user(v, "Sqrt", why="std: variance is not followed by Sqrt")
            std = m.user(sqrt.outputs[0], "Add", why="std: Sqrt(var) not followed by Add(eps)")
            eps = scalar(m.other(std, sqrt.outputs[0]))
        else:  # Sqrt(var + eps)
            add = m.user(v, "Add", why="std: variance is not followed by Add(eps)")
            eps = scalar(m.other(add, v))
            std = m.user(add.outputs[0], "Sqrt", why="std: Add(var, eps) not followed by Sqrt")
        if eps is None or eps < 0:
            m.fail("std: epsilon is not a non-negative scalar constant")
        s = std.outputs[0]
        recs = [u.node for u in s.uses() if is_op(u.node, "Reciprocal")]
        divs = [u.node for u in s.uses() if is_op(u.node, "Div") and u.node.inputs[1] is s]
        if recs:
            rec = m.add(recs[0])
            why = "normalize: Reciprocal(std) not followed by Mul"
            norm = m.user(rec.outputs[0], "Mul", why=why)
            d_in = m.other(norm, rec.outputs[0])
        elif divs:
            norm = m.add(divs[0])
            d_in = norm.inputs[0]
        else:
            m.fail("normalize: std is not used by a Div(d, std) or Reciprocal")
        if d_in is not d:
            if not _centered(d_in, x):
                m.fail("normalize: numerator is not x - mean(x)", norm)
            m.add(d_in.producer())
            m.add(d_in.producer().inputs[1].producer())
        out = norm.outputs[0]
        hidden = last_dim(x)
        gamma = beta = None
        if self.gamma:
            mul = m.user(out, "Mul", why="scale: the normalized value is not used by a Mul")
            gamma = m.other(mul, out)
            if _vector(gamma, hidden) is None:
                m.fail(f"scale: Mul operand is not a float32 vector of {hidden} elements")
            out = mul.outputs[0]
        if self.beta:
            add = m.user(out, "Add", why="shift: no Add follows")
            beta = m.other(add, out)
            if _vector(beta, hidden) is None:
                m.fail(f"shift: Add operand is not a float32 vector of {hidden} elements")
            out = add.outputs[0]
        m.outputs = [out]
        return {"x": x, "gamma": gamma, "beta": beta, "eps": float(eps), "hidden": hidden}

    def check(self, rw: Rewriter, m: Match, *, x: ir.Value, gamma: ir.Value | None,
              beta: ir.Value | None, hidden: int | None, **_: Any) -> None:
        if x.dtype is not None and x.dtype != ir.DataType.FLOAT:
            m.fail(f"input dtype {x.dtype} is not float32", m.anchor)
        if hidden is None and (gamma is None or beta is None):
            m.fail("the last dim of x is unknown and gamma/beta are missing", m.anchor)

    def rewrite(self, rw: Rewriter, m: Match, *, x: ir.Value, gamma: ir.Value | None,
                beta: ir.Value | None, eps: float, hidden: int | None) -> list[ir.Value]:
        if gamma is None:
            gamma = rw.initializer(
                "ln_gamma", np.ones(hidden or len(const_array(beta).reshape(-1)), np.float32)
            )
        inputs = [x, _flat(rw, gamma)]
        if beta is not None:
            inputs.append(_flat(rw, beta))
        ln = rw.node("LayerNormalization", inputs, {"axis": -1, "epsilon": eps},
                     before=m.outputs[0].producer())
        return [ln.outputs[0]]


@register("fuse-layernorm")
class FuseLayerNormPass(RuleFusionPass):
    """Fuse the decomposed form of layer normalization over the last axis into
    ``LayerNormalization``.

    Before (opset <= 16 exports)::

        %m = ReduceMean(%x, axes=[-1]); %d = Sub(%x, %m); %p = Pow(%d, 2.0)
        %v = ReduceMean(%p, axes=[-1]); %e = Add(%v, 1e-12); %s = Sqrt(%e)
        %n = Div(%d, %s); %g = Mul(%n, %gamma); %y = Add(%g, %beta)

    After: ``%y = LayerNormalization(%x, %gamma, %beta) {axis=-1, epsilon=1e-12}``.

    Variants: ``x - mean`` computed once or twice; ``Pow(d, 2)`` or ``Mul(d, d)``; ``Div(d, s)`` or
    ``Mul(d, Reciprocal(s))``; operands of Mul/Add in either order; no ``gamma`` / ``beta`` (ones /
    zeros). ``Add(Sqrt(v), eps)`` (epsilon after the square root) is matched too (rule
    ``eps-after-sqrt``): it differs from LayerNormalization by a relative ``eps / std``, i.e. only
    for rows of nearly constant values. One :class:`LayerNormRule` per epilogue variant, the
    longest first; no intermediate may have users outside the match. Anchor: the mean
    ``ReduceMean``. Needs constant axes, epsilon and (1-D) gamma / beta. rtol 1e-4.
    """

    rules = tuple(
        LayerNormRule(eps_after_sqrt=e, gamma=g, beta=b)
        for e in (False, True)
        for g, b in ((True, True), (True, False), (False, True), (False, False))
    )

    def is_anchor(self, node: ir.Node) -> bool:
        # The second ReduceMean of a layer norm (the variance) is not an anchor: its mean ReduceMean
        # is.
        return super().is_anchor(node) and not self._is_variance(node)

    @staticmethod
    def _is_variance(node: ir.Node) -> bool:
        sq = producer(node.inputs[0], "Pow", "Mul")
        return sq is not None and producer(sq.inputs[0], "Sub") is not None

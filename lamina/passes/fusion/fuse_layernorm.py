"""``fuse-layernorm``: decomposed layer normalization -> ONNX ``LayerNormalization``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lamina.compiler.pipeline import register
from lamina.passes.fusion._match import (
    NoMatch,
    close,
    const_array,
    is_last_axis,
    is_op,
    keepdims,
    last_dim,
    only_used_by,
    other_input,
    producer,
    rank,
    reduce_axes,
    scalar,
    single_consumer,
)
from lamina.passes.fusion._utils import AnchoredFusionPass, Rewriter


def _centered(value: ir.Value | None, x: ir.Value) -> bool:
    """``value = x - ReduceMean(x)`` (the second copy some exporters compute)."""
    sub = producer(value, "Sub")
    if sub is None or sub.inputs[0] is not x:
        return False
    rm = producer(sub.inputs[1], "ReduceMean")
    return rm is not None and rm.inputs[0] is x


@register("fuse-layernorm")
class FuseLayerNormPass(AnchoredFusionPass):
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
    for rows of nearly constant values. Anchor: the mean ``ReduceMean``. Needs constant axes,
    epsilon and (1-D) gamma / beta. rtol 1e-4.
    """

    def is_anchor(self, node: ir.Node) -> bool:
        # The second ReduceMean of a layer norm (the variance) is not an anchor: its mean ReduceMean
        # is.
        return is_op(node, "ReduceMean") and not self._is_variance(node)

    @staticmethod
    def _is_variance(node: ir.Node) -> bool:
        sq = producer(node.inputs[0], "Pow", "Mul")
        return sq is not None and producer(sq.inputs[0], "Sub") is not None

    def rewrite(self, rw: Rewriter, mean: ir.Node) -> None:
        x = mean.inputs[0]
        if not is_last_axis(reduce_axes(mean), rank(x)) or not keepdims(mean):
            raise NoMatch("mean: ReduceMean is not over the last axis with keepdims=1")
        subs = [
            u.node
            for u in mean.outputs[0].uses()
            if is_op(u.node, "Sub")
            and u.node.inputs[0] is x
            and u.node.inputs[1] is mean.outputs[0]
        ]
        if not subs:
            raise NoMatch("mean: no Sub(x, mean) uses it (not a layer norm)")
        matched: list[ir.Node] = [mean]
        last_err = "no Sub(x, mean) leads to a normalization"
        for sub in subs:
            try:
                self._from_sub(rw, x, mean, sub, matched)
                return
            except NoMatch as exc:
                last_err = str(exc)
        raise NoMatch(last_err)

    def _from_sub(
        self, rw: Rewriter, x: ir.Value, mean: ir.Node, sub: ir.Node, matched: list[ir.Node]
    ) -> None:
        d = sub.outputs[0]
        nodes = [mean, sub]
        # Find the variance branch and the normalizing Div / Mul among the users of d.
        sq = None
        for use in d.uses():
            u = use.node
            if (is_op(u, "Pow") and u.inputs[0] is d) or (
                is_op(u, "Mul") and u.inputs[0] is d and u.inputs[1] is d
            ):
                sq = u
        if sq is None:
            raise NoMatch(
                f"x - mean: no Pow(d, 2) or Mul(d, d) among its users ({len(d.uses())} uses)"
            )
        if sq.op_type == "Pow" and not close(scalar(sq.inputs[1]), 2.0, 1e-6):
            raise NoMatch(f"variance: Pow exponent is {scalar(sq.inputs[1])}, not 2")
        var = single_consumer(sq.outputs[0])
        if (
            not is_op(var, "ReduceMean")
            or not is_last_axis(reduce_axes(var), rank(x))
            or not keepdims(var)
        ):
            raise NoMatch(
                "variance: square not followed by ReduceMean over the last axis (keepdims=1)"
            )
        nodes += [sq, var]
        after = single_consumer(var.outputs[0])
        rule = "eps-in-sqrt"
        if is_op(after, "Add"):  # Sqrt(var + eps)
            eps = scalar(other_input(after, var.outputs[0]))
            sqrt = single_consumer(after.outputs[0])
            if not is_op(sqrt, "Sqrt"):
                raise NoMatch("std: Add(var, eps) not followed by Sqrt")
            nodes += [after, sqrt]
            std = sqrt
        elif is_op(after, "Sqrt"):  # Sqrt(var) + eps
            add = single_consumer(after.outputs[0])
            if not is_op(add, "Add"):
                raise NoMatch("std: Sqrt(var) not followed by Add(eps)")
            eps = scalar(other_input(add, after.outputs[0]))
            nodes += [after, add]
            std, rule = add, "eps-after-sqrt"
        else:
            raise NoMatch(
                f"std: variance feeds {after.op_type if after else 'several nodes'}, not Add/Sqrt"
            )
        if eps is None or eps < 0:
            raise NoMatch("std: epsilon is not a non-negative scalar constant")
        s = std.outputs[0]
        norm = single_consumer(s)
        if is_op(norm, "Reciprocal"):
            rec = norm
            norm = single_consumer(rec.outputs[0])
            nodes.append(rec)
            if not is_op(norm, "Mul"):
                raise NoMatch("normalize: Reciprocal(std) not followed by Mul")
            d_in = other_input(norm, rec.outputs[0])
        elif is_op(norm, "Div") and norm.inputs[1] is s:
            d_in = norm.inputs[0]
        else:
            raise NoMatch("normalize: std is not used by one Div(d, std) or Reciprocal")
        if d_in is not d and not _centered(d_in, x):
            raise NoMatch("normalize: numerator is not x - mean(x)")
        if d_in is not d:
            nodes += [d_in.producer(), d_in.producer().inputs[1].producer()]
        nodes.append(norm)
        out = norm.outputs[0]
        hidden = last_dim(x)
        gamma = beta = None
        nxt = single_consumer(out)
        if is_op(nxt, "Mul") and self._vector(other_input(nxt, out), hidden) is not None:
            gamma = other_input(nxt, out)
            nodes.append(nxt)
            out = nxt.outputs[0]
            nxt = single_consumer(out)
        if is_op(nxt, "Add") and self._vector(other_input(nxt, out), hidden) is not None:
            beta = other_input(nxt, out)
            nodes.append(nxt)
            out = nxt.outputs[0]
        leak = only_used_by([n.outputs[0] for n in nodes[:-1]], nodes)
        if leak is not None:
            raise NoMatch(f"intermediate {leak.name!r} is used outside the layer norm")
        if x.dtype is not None and x.dtype != ir.DataType.FLOAT:
            raise NoMatch(f"input dtype {x.dtype} is not float32")
        if hidden is None and (gamma is None or beta is None):
            raise NoMatch("the last dim of x is unknown and gamma/beta are missing")
        if gamma is None:
            gamma = rw.initializer(
                "ln_gamma", np.ones(hidden or len(const_array(beta).reshape(-1)), np.float32)
            )
        inputs = [x, self._flat(rw, gamma)]
        if beta is not None:
            inputs.append(self._flat(rw, beta))
        ln = rw.node("LayerNormalization", inputs, {"axis": -1, "epsilon": float(eps)}, rule=rule,
                     before=out.producer())
        rw.replace(out, ln.outputs[0])
        rw.remove_dead(reversed(nodes))

    @staticmethod
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

    @staticmethod
    def _flat(rw: Rewriter, value: ir.Value) -> ir.Value:
        arr = const_array(value)
        if arr.ndim == 1:
            return value
        return rw.initializer(f"{value.name}_1d", arr.reshape(-1))

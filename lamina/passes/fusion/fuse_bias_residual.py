"""``fuse-bias-residual``: MatMul + bias (+ GELU) (+ residual Add) -> ``lamina::Linear``."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import register
from lamina.passes.fusion._match import NoMatch, is_op, other_input, single_consumer
from lamina.passes.fusion._utils import DOMAIN, AnchoredFusionPass, Rewriter
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


@register("fuse-bias-residual")
class FuseBiasResidualPass(AnchoredFusionPass):
    """Fuse a dense layer and its epilogue into ``lamina::Linear``.

    Before::

        %xw = MatMul(%x, %W)            # W constant [K, N]
        %z  = Add(%xw, %b)              # b constant [N], either operand order
        %a  = lamina::Gelu(%z)          # optional
        %y  = Add(%a, %r)               # optional residual, same shape as %a, either order

    After: ``%y = lamina::Linear(%x, %W, %b[, %r]) {activation="none"|"gelu"|"gelu_tanh",
    has_residual}``.

    Each step is taken only when the value before it has that single user, so no intermediate that
    something else reads is lost. Run after ``fuse-gelu`` (to fold the activation) and
    ``fuse-attention`` / ``merge-qkv`` (so attention projections are final). Anchor: ``MatMul``.
    rtol 1e-4 (same arithmetic).
    """

    requires = frozenset({GELU_FUSED})

    def is_anchor(self, node: ir.Node) -> bool:
        return is_op(node, "MatMul")

    def rewrite(self, rw: Rewriter, node: ir.Node) -> dict[str, int]:
        act, res = self._rewrite(rw, node)
        return {"with_gelu": int(act != "none"), "with_residual": int(res)}

    def _rewrite(self, rw: Rewriter, mm: ir.Node) -> tuple[str, bool]:
        x, w = mm.inputs[0], mm.inputs[1]
        warr = const_array(w)
        if warr is None or warr.ndim != 2:
            raise NoMatch("weight is not a constant 2-D tensor (activation x activation MatMul)")
        n = warr.shape[1]
        add = single_consumer(mm.outputs[0])
        if not is_op(add, "Add"):
            raise NoMatch("MatMul output is not used by exactly one bias Add")
        b = other_input(add, mm.outputs[0])
        barr = const_array(b)
        if (
            barr is None
            or barr.size != n
            or (barr.ndim > 1 and any(d != 1 for d in barr.shape[:-1]))
        ):
            raise NoMatch(f"Add operand is not a constant bias of {n} elements")
        if barr.ndim != 1:
            b = rw.initializer(f"{b.name}_1d", barr.reshape(-1))
        nodes = [mm, add]
        out = add.outputs[0]
        activation = "none"
        nxt = single_consumer(out)
        if is_op(nxt, "Gelu", domain=DOMAIN):
            approx = nxt.attributes.get("approximate")
            activation = GELU_ACTIVATION.get(approx.value if approx is not None else "none", "")
            if not activation:
                raise NoMatch(f"unknown Gelu approximation {approx.value!r}")
            nodes.append(nxt)
            out = nxt.outputs[0]
            nxt = single_consumer(out)
        inputs = [x, w, b]
        if is_op(nxt, "Add"):
            r = other_input(nxt, out)
            if r is not None and r is not out and const_array(r) is None and _same_dims(r, out):
                nodes.append(nxt)
                out = nxt.outputs[0]
                inputs.append(r)
            elif rw.explain_on:
                rw.ctx.explain(
                    f"Add {nxt.name!r}",
                    "not folded as residual: operand is constant, the same "
                    "value, or of another shape (Add would broadcast)",
                )
        has_residual = len(inputs) == 4
        rule = "+".join(["bias", *([activation] if activation != "none" else []),
                         *(["residual"] if has_residual else [])])
        lin = rw.node(
            "Linear",
            inputs,
            {"activation": activation, "has_residual": int(has_residual)},
            domain=DOMAIN,
            rule=rule,
            before=out.producer(),
        )
        rw.replace(out, lin.outputs[0])
        rw.remove_dead(nodes)
        return activation, has_residual

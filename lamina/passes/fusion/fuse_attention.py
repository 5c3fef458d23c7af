"""``fuse-attention``: the multi-head attention core -> ``lamina::Attention``."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.fusion import _mask
from lamina.passes.fusion._heads import HeadPath, trace_back, trace_forward
from lamina.passes.fusion._match import NoMatch, is_op, scalar
from lamina.passes.fusion._utils import DOMAIN, Rewriter

Q_LAYOUT = [("b",), ("h",), ("s",), ("d",)]
K_LAYOUT = [("b",), ("h",), ("d",), ("s",)]


@register("fuse-attention")
class FuseAttentionPass(Pass):
    """Fuse scaled dot-product attention over split heads into ``lamina::Attention``.

    Before (one of many equivalent export forms)::

        %q4 = Transpose(Reshape(%q, [0,0,H,D]), perm=[0,2,1,3])      # likewise %v4
        %kt = Transpose(Reshape(%k, [0,0,H,D]), perm=[0,2,3,1])
        %s  = Add(Mul(MatMul(%q4, %kt), 0.125), %mask4d)             # %mask4d from %attention_mask
        %p  = Softmax(%s, axis=-1)                                   # SDPA: Where(IsNaN(p), 0, p)
        %c  = Reshape(Transpose(MatMul(%p, %v4), perm=[0,2,1,3]), [0,0,-1])

    After: ``%c = lamina::Attention(%q, %k, %v, %attention_mask) {num_heads=H, scale=0.125,
    mask_kind="key_padding"}``.

    Matched variants: head split / merge / K^T through any Reshape/Transpose chain that provably
    yields the needed layout (see ``_heads.py``); scale as Mul or Div by scalars on Q, K (e.g. sqrt
    on both), or the scores, multiplied together; mask ``Add`` in either operand order or absent;
    the SDPA NaN guard. The mask becomes ``key_padding`` (the raw [batch, seq] input) when
    ``_mask.analyze`` proves it is one, else ``additive`` (the mask tensor as is). Projections
    (MatMul + Add) stay outside: see ``merge-qkv`` and ``fuse-bias-residual``. Anchor: ``Softmax``.
    rtol 1e-4.
    """

    rtol = 1e-4
    atol = 1e-5

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rw = Rewriter(model, ctx, self.name)
        masks: dict[int, tuple[ir.Value, ir.Value | None, str]] = {}
        fused = 0
        kinds: dict[str, int] = {}
        for node in list(model.graph):
            if node.graph is None or not is_op(node, "Softmax"):
                continue
            try:
                kind = self._rewrite(rw, node, masks)
                fused += 1
                kinds[kind] = kinds.get(kind, 0) + 1
            except NoMatch as exc:
                rw.explain(node, str(exc))
        for mask, key, reason in masks.values():
            if key is None and rw.explain_on:
                ctx.explain(f"mask {mask.name!r}", f"kept as an additive input: {reason}")
        return PassResult(
            model,
            changed=fused > 0,
            stats={
                "fused": fused,
                "unmatched": rw.misses,
                **{f"mask_{k}": v for k, v in kinds.items()},
            },
        )

    def _rewrite(self, rw: Rewriter, softmax: ir.Node,
                 masks: dict[int, tuple[ir.Value, ir.Value | None, str]]) -> str:
        s = softmax.inputs[0]
        axis = softmax.attributes.get("axis")
        axis_v = -1 if axis is None else int(axis.value)
        if s.shape is not None and len(s.shape) != 4 or axis_v not in (-1, 3):
            raise NoMatch("Softmax is not over the last axis of a rank-4 [b, h, q, k] tensor")
        nodes: list[ir.Node] = [softmax]
        mask = None
        scores = s
        add = s.producer()
        if is_op(add, "Add"):
            for i in (0, 1):
                try:
                    qk, scale, chain = self._scores(add.inputs[i])
                    mask = add.inputs[1 - i]
                    break
                except NoMatch as exc:
                    err = exc
            else:
                raise NoMatch(f"scores: neither Add operand is scale * MatMul(Q, K^T) ({err})")
            nodes.append(add)
        else:
            qk, scale, chain = self._scores(scores)
        nodes += chain
        q = trace_back(qk.inputs[0], Q_LAYOUT, "Q")
        k = trace_back(qk.inputs[1], K_LAYOUT, "K")
        # softmax -> [Where(IsNaN(p), 0, p)] -> MatMul(p, V)
        p = softmax.outputs[0]
        users = [u.node for u in p.uses()]
        guard = next((u for u in users if is_op(u, "Where")), None)
        if guard is not None:
            isnan = guard.inputs[0].producer()
            if not (is_op(isnan, "IsNaN") and isnan.inputs[0] is p and guard.inputs[2] is p
                    and scalar(guard.inputs[1]) == 0.0 and len(users) == 2 and isnan in users):
                raise NoMatch("softmax output: Where is not the Where(IsNaN(p), 0, p) guard")
            nodes += [isnan, guard]
            p = guard.outputs[0]
            users = [u.node for u in p.uses()]
        if (
            len(users) != 1
            or not is_op(users[0], "MatMul")
            or users[0].inputs[0] is not p
            or p.is_graph_output()
        ):
            raise NoMatch(
                "softmax output is not used only by MatMul(p, V) (attention probs exported?)"
            )
        pv = users[0]
        v = trace_back(pv.inputs[1], Q_LAYOUT, "V")
        if (q.heads, q.head_dim) != (k.heads, k.head_dim) or q.heads != v.heads:
            raise NoMatch(
                f"Q/K/V head splits differ: {q.heads}x{q.head_dim}, {k.heads}x{k.head_dim}, "
                f"{v.heads}x{v.head_dim}"
            )
        b, sq = q.proj.shape[0], q.proj.shape[1]
        sizes = {"b": b if isinstance(b, int) else None, "s": sq if isinstance(sq, int) else None,
                 "h": v.heads, "d": v.head_dim}
        ctx_value, merge = trace_forward(pv.outputs[0], sizes)
        nodes += [qk, pv, *merge]
        for path in (q, k, v):
            nodes += path.nodes
        self._check_private(nodes, ctx_value)
        total_scale = scale * q.scale * k.scale * v.scale
        if v.scale != 1.0:
            raise NoMatch("V is scaled (not an attention pattern Lamina knows)")
        inputs = [q.proj, k.proj, v.proj]
        kind = "none"
        if mask is not None:
            if id(mask) not in masks:
                masks[id(mask)] = (mask, *_mask.analyze(rw.model, mask))
            _, key, _ = masks[id(mask)]
            kind = "key_padding" if key is not None else "additive"
            inputs.append(key if key is not None else mask)
        attn = rw.node("Attention", inputs,
                       {"num_heads": q.heads, "scale": float(total_scale), "mask_kind": kind},
                       domain=DOMAIN, rule=kind, before=ctx_value.producer())
        rw.replace(ctx_value, attn.outputs[0])
        # What only fed the replaced nodes (the mask and head-split shape arithmetic) goes with
        # them.
        rw.remove_dead(nodes, cascade=True)
        return kind

    @staticmethod
    def _scores(value: ir.Value) -> tuple[ir.Node, float, list[ir.Node]]:
        """``value = c * MatMul(a, b)`` through scalar Mul/Div: (the MatMul, c, the scale nodes)."""
        scale, chain = 1.0, []
        node = value.producer()
        while is_op(node, "Mul", "Div"):
            k, data = scalar(node.inputs[1]), node.inputs[0]
            if k is None and node.op_type == "Mul":
                k, data = scalar(node.inputs[0]), node.inputs[1]
            if not k:
                raise NoMatch(f"scores: {node.op_type} {node.name!r} is not by a scalar constant")
            scale = scale / k if node.op_type == "Div" else scale * k
            chain.append(node)
            node = data.producer()
        if not is_op(node, "MatMul"):
            got = f"{node.op_type} {node.name!r}" if node is not None else "a graph input"
            raise NoMatch(f"scores: expected MatMul(Q, K^T), found {got}")
        return node, scale, chain

    @staticmethod
    def _check_private(nodes: list[ir.Node], result: ir.Value) -> None:
        inside = {id(n) for n in nodes}
        for n in nodes:
            for out in n.outputs:
                if out is result:
                    continue
                if out.is_graph_output():
                    raise NoMatch(f"intermediate {out.name!r} is a graph output")
                for use in out.uses():
                    if id(use.node) not in inside and not is_op(use.node, "Shape"):
                        raise NoMatch(
                            f"intermediate {out.name!r} is also used by {use.node.op_type} "
                            f"{use.node.name!r}"
                        )


__all__ = ["FuseAttentionPass", "HeadPath"]

"""``merge-qkv``: the Q, K, V projections of one ``lamina::Attention`` -> one GEMM + Split."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import register
from lamina.passes.fusion._match import is_op
from lamina.passes.fusion._rules import Match, Rule, RuleFusionPass
from lamina.passes.fusion._utils import DOMAIN, Rewriter


class MergeQkvRule(Rule):
    """The three projections of one ``lamina::Attention``, all ``Add(MatMul(x, W), b)`` or (with
    ``linear``) all plain ``lamina::Linear``."""

    anchor_ops = ("Attention",)
    anchor_domain = DOMAIN

    def __init__(self, *, linear: bool) -> None:
        self.linear = linear

    def pattern(self, m: Match) -> dict[str, Any]:
        attn = m.anchor
        q, k, v = attn.inputs[0], attn.inputs[1], attn.inputs[2]
        if q is None or k is None or v is None or len({id(q), id(k), id(v)}) != 3:
            m.fail("Q, K, V are not three distinct values")
        parts = [self._projection(m, val, role) for val, role in ((q, "Q"), (k, "K"), (v, "V"))]
        x = parts[0][0]
        if any(p[0] is not x for p in parts):
            m.fail("Q, K, V projections read different inputs (cross-attention): nothing to share")
        ws, bs = [p[1] for p in parts], [p[2] for p in parts]
        if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws + bs}) != 1:
            m.fail("Q, K, V weights differ in input size or dtype")
        m.outputs = [q, k, v]
        return {"x": x, "ws": ws, "bs": bs}

    def _projection(self, m: Match, value: ir.Value, role: str
                    ) -> tuple[ir.Value, np.ndarray, np.ndarray]:
        """``value = x @ W + b`` (MatMul + Add, or a plain ``lamina::Linear``): (x, W, b)."""
        attn = m.anchor
        if value.is_graph_output() or [u.node for u in value.uses()] != [attn]:
            m.fail(f"{role}: projection output has other users (or feeds several attention "
                   "inputs)", attn)
        node = value.producer()
        if self.linear:
            if not is_op(node, "Linear", domain=DOMAIN):
                m.fail(f"{role}: not produced by a lamina::Linear", attn)
            m.add(node)
            act = node.attributes.get("activation")
            res = node.attributes.get("has_residual")
            if (act is not None and act.value != "none") or (res is not None and res.value):
                m.fail(f"{role}: Linear has an activation or residual epilogue")
            w, b = const_array(node.inputs[1]), const_array(node.inputs[2])
            if w is None or b is None:
                m.fail(f"{role}: Linear weight or bias is not constant")
            return node.inputs[0], w, b.reshape(-1)
        if not is_op(node, "Add"):
            m.fail(f"{role}: not produced by a bias Add", attn)
        m.add(node)

        def matmul_plus_bias(xw: ir.Value | None, b: ir.Value | None
                             ) -> tuple[ir.Value, np.ndarray, np.ndarray]:
            mm = xw.producer() if xw is not None else None
            if not is_op(mm, "MatMul"):
                m.fail(f"{role}: not Add(MatMul(x, W const), b const)")
            w, barr = const_array(mm.inputs[1]), const_array(b)
            if w is None or w.ndim != 2 or barr is None or barr.size != w.shape[1]:
                m.fail(f"{role}: not Add(MatMul(x, W const), b const)")
            m.add(mm)
            return mm.inputs[0], w, barr.reshape(-1)

        return m.either(node, matmul_plus_bias)

    def rewrite(self, rw: Rewriter, m: Match, *, x: ir.Value, ws: list[np.ndarray],
                bs: list[np.ndarray]) -> list[ir.Value]:
        attn, q = m.anchor, m.outputs[0]
        w = rw.initializer("qkv_weight", np.concatenate(ws, axis=1))
        b = rw.initializer("qkv_bias", np.concatenate(bs))
        widths = [int(wi.shape[1]) for wi in ws]
        if self.linear:
            lin = rw.node(
                "Linear",
                [x, w, b],
                {"activation": "none", "has_residual": 0},
                domain=DOMAIN,
                rule="linear",
                before=attn,
            )
            qkv = lin.outputs[0]
        else:
            mm = rw.node("MatMul", [x, w], rule="matmul", before=attn)
            add = rw.node("Add", [mm.outputs[0], b], rule="matmul", before=attn)
            qkv = add.outputs[0]
        if q.shape is not None:
            qkv.dtype = q.dtype
            qkv.shape = ir.Shape([*list(q.shape)[:-1], sum(widths)])
        sizes = rw.initializer("qkv_split", np.array(widths, np.int64))
        split = rw.node(
            "Split", [qkv, sizes], {"axis": -1}, num_outputs=3, rule="split", before=attn
        )
        return list(split.outputs)


@register("merge-qkv")
class MergeQkvPass(RuleFusionPass):
    """Concatenate the three projections feeding one ``lamina::Attention`` into a single GEMM.

    Before::

        %q = Add(MatMul(%x, %Wq), %bq); %k = ...(%Wk, %bk); %v = ...(%Wv, %bv)
        %c = lamina::Attention(%q, %k, %v, %mask) {...}

    After::

        %qkv = Add(MatMul(%x, %Wqkv), %bqkv)     # Wqkv = [Wq | Wk | Wv] (K x 3N), bqkv likewise
        %q, %k, %v = Split(%qkv, [Nq, Nk, Nv], axis=-1)
        %c = lamina::Attention(%q, %k, %v, %mask) {...}

    It pays whenever the three read the same ``x`` (self-attention): ``x`` is read once and one K x
    3N GEMM keeps the cores busier than three K x N ones. ``fuse-bias-residual`` then turns the
    merged MatMul + Add into a ``lamina::Linear``; already-fused plain ``lamina::Linear``
    projections are merged into a ``lamina::Linear`` directly, so the two passes compose in either
    order. One :class:`MergeQkvRule` per projection kind (mixed kinds are left alone); the
    projections' intermediates must have no other users. Anchor: ``lamina::Attention``. Exact up
    to GEMM summation order (rtol 1e-4).
    """

    count_stat = "merged"
    rules = (MergeQkvRule(linear=False), MergeQkvRule(linear=True))

"""``merge-qkv``: the Q, K, V projections of one ``lamina::Attention`` -> one GEMM + Split."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import register
from lamina.passes.fusion._match import NoMatch, is_op, other_input, single_consumer
from lamina.passes.fusion._utils import DOMAIN, AnchoredFusionPass, Rewriter


def _projection(
    value: ir.Value, attn: ir.Node, role: str
) -> tuple[ir.Value, np.ndarray, np.ndarray, list[ir.Node], bool]:
    """``value = x @ W + b`` (MatMul + Add, or a plain ``lamina::Linear``): (x, W, b, nodes,
    is_linear)."""
    if single_consumer(value) is not attn or sum(1 for i in attn.inputs if i is value) != 1:
        raise NoMatch(
            f"{role}: projection output has other users (or feeds several attention inputs)"
        )
    node = value.producer()
    if is_op(node, "Linear", domain=DOMAIN):
        act = node.attributes.get("activation")
        res = node.attributes.get("has_residual")
        if (act is not None and act.value != "none") or (res is not None and res.value):
            raise NoMatch(f"{role}: Linear has an activation or residual epilogue")
        w, b = const_array(node.inputs[1]), const_array(node.inputs[2])
        if w is None or b is None:
            raise NoMatch(f"{role}: Linear weight or bias is not constant")
        return node.inputs[0], w, b.reshape(-1), [node], True
    if not is_op(node, "Add"):
        raise NoMatch(f"{role}: not produced by a bias Add or a lamina::Linear")
    for i in (0, 1):
        mm = node.inputs[i].producer() if node.inputs[i] is not None else None
        if is_op(mm, "MatMul") and single_consumer(node.inputs[i]) is node:
            w, b = const_array(mm.inputs[1]), const_array(other_input(node, node.inputs[i]))
            if w is not None and w.ndim == 2 and b is not None and b.size == w.shape[1]:
                return mm.inputs[0], w, b.reshape(-1), [node, mm], False
    raise NoMatch(f"{role}: not Add(MatMul(x, W const), b const)")


@register("merge-qkv")
class MergeQkvPass(AnchoredFusionPass):
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
    order. Anchor: ``lamina::Attention``. Exact up to GEMM summation order (rtol 1e-4).
    """

    count_stat = "merged"

    def is_anchor(self, node: ir.Node) -> bool:
        return is_op(node, "Attention", domain=DOMAIN)

    def rewrite(self, rw: Rewriter, attn: ir.Node) -> None:
        q, k, v = attn.inputs[0], attn.inputs[1], attn.inputs[2]
        if q is None or k is None or v is None or len({id(q), id(k), id(v)}) != 3:
            raise NoMatch("Q, K, V are not three distinct values")
        parts = [_projection(val, attn, role) for val, role in ((q, "Q"), (k, "K"), (v, "V"))]
        x = parts[0][0]
        if any(p[0] is not x for p in parts):
            raise NoMatch(
                "Q, K, V projections read different inputs (cross-attention): nothing to share"
            )
        if len({p[4] for p in parts}) != 1:
            raise NoMatch(
                "Q, K, V projections are of mixed kinds (MatMul + Add and lamina::Linear)"
            )
        ws, bs = [p[1] for p in parts], [p[2] for p in parts]
        if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws + bs}) != 1:
            raise NoMatch("Q, K, V weights differ in input size or dtype")
        w = rw.initializer("qkv_weight", np.concatenate(ws, axis=1))
        b = rw.initializer("qkv_bias", np.concatenate(bs))
        widths = [int(wi.shape[1]) for wi in ws]
        if parts[0][4]:
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
        for i, old in enumerate((q, k, v)):
            rw.replace(old, split.outputs[i])
        rw.remove_dead([n for p in parts for n in p[3]])

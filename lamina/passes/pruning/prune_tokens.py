"""``prune-tokens{keep=1:1:0.7:0.5:0.4:0.3}``: training-free token pruning, layer by layer.

Before a layer whose keep ratio drops, each row keeps its most important tokens: importance is the
attention a token received in the layer before, averaged over heads (``lamina::TokenImportance``);
``lamina::SelectTokens`` keeps ``max(2, ceil(r * length))`` of them per row, [CLS] and [SEP]
always, padding never (the math: ``lamina/compiler/ir/ops/token_pruning.py``). A dropped token
stops being computed: it is no longer a key of later attentions, and its hidden state is carried
unchanged to the output, so ``last_hidden_state`` keeps its shape and meaning for poolers.

Before (layer ``l`` of an O1 graph, ``%h`` its input)::

    %qkv = lamina::Linear(%h, %Wqkv, %bqkv)
    %q, %k, %v = Split(%qkv)
    %c = lamina::Attention(%q, %k, %v, %attention_mask) {num_heads: 12, mask_kind: key_padding}
    ...
    %h_next = LayerNormalization(...)

After, with ``keep[l] < keep[l-1]`` (``%q_prev``, ``%k_prev``: layer ``l-1``'s queries and keys,
``%alive_prev``: the tokens layer ``l-1`` computed, at first ``%attention_mask``)::

    %imp = lamina::TokenImportance(%q_prev, %k_prev, %alive_prev) {num_heads: 12, scale: ...}
    %alive = lamina::SelectTokens(%imp, %alive_prev, %attention_mask) {keep_ratio: 0.7}
    %c = lamina::Attention(%q, %k, %v, %alive) {...}
    ...
    %h_next' = Where(Unsqueeze(Cast(%alive, bool), -1), %h_next, %h)

Layers from the first pruned one on take ``alive`` as their attention mask and the ``Where``;
layers whose ratio does not drop reuse the previous ``alive``. Layer boundaries: ``%h`` is the
input of the Linear that makes the layer's queries; the last layer's output is the output of the
last node of the same kind as layer 0's output (the LayerNorm closing a BERT layer).

Preconditions: O1 (``fuse-attention`` with a ``key_padding`` mask that is a graph input; with or
without ``merge-qkv``). Lossy: checked against the unpruned model with an accuracy bound (the
length search, ``lamina/compiler/driver/length.py``), not ``--verify-each``'s tolerance; the TVM
backend runs it layer by layer with the tokens really removed (``backends/tvm/pruned_runtime.py``).
Does nothing (with the reason, under ``--debug-match prune-tokens``) when ``keep`` is all ones or
malformed for the graph, when there is no such attention, or when the graph is already pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.compiler.pipeline import Pass, PassContext, PassResult, option, register
from lamina.passes.fusion._utils import DOMAIN, Rewriter


@dataclass(frozen=True)
class PruneTokensOptions:
    keep: str = option("", "per-layer keep ratios, one per attention layer, e.g. 1:1:0.7:0.5 "
                       "(the first 1, none above the one before)")


def parse_keep(text: str) -> list[float]:
    try:
        keep = [float(x) for x in text.replace(",", ":").split(":") if x.strip()]
    except ValueError:
        raise UsageError(f"prune-tokens: keep={text!r}: give ratios like 1:1:0.7:0.5") from None
    return keep


def _dom(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _layer_input(q: ir.Value | None) -> ir.Value | None:
    node = q.producer() if q is not None else None
    if node is not None and node.op_type == "Split" and _dom(node) == "":
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Linear" or _dom(node) != DOMAIN:
        return None
    return node.inputs[0]


@register("prune-tokens")
class PruneTokensPass(Pass):
    """Drop unimportant tokens before the layers whose keep ratio drops (attention received;
    pruned tokens carry their last state to the output)."""

    Options = PruneTokensOptions
    atol = 1e9   # lossy: judged by the length search's accuracy bound, not by --verify-each
    rtol = 1e9

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rw = Rewriter(model, ctx, self.name)
        g = model.graph
        stats: dict = {"layers_pruned": 0, "pruning_points": 0, "mean_keep": 1.0, "reason": ""}

        def skip(reason: str) -> PassResult:
            stats["reason"] = reason
            if ctx.wants_explanations(self.name):
                ctx.explain("graph", reason)
            return PassResult(model, changed=False, stats=stats)

        if any(n.op_type == "SelectTokens" and n.domain == DOMAIN for n in g):
            return skip("already pruned (has lamina::SelectTokens)")
        attns = [n for n in g if n.op_type == "Attention" and n.domain == DOMAIN]
        if not attns:
            return skip("no lamina::Attention (run O1 first)")
        mask = None
        for a in attns:
            kind = a.attributes["mask_kind"].value if "mask_kind" in a.attributes else "none"
            m = a.inputs[3] if len(a.inputs) > 3 else None
            if kind != "key_padding" or m is None or not m.is_graph_input():
                return skip(f"attention {a.name!r} has no key_padding mask from a graph input")
            if mask is not None and m is not mask:
                return skip("attentions read different masks")
            mask = m
        keep = parse_keep(self.options.keep)
        if not keep or all(r == 1 for r in keep):
            return skip("keep is empty or all ones: nothing to prune")
        if (len(keep) != len(attns) or keep[0] != 1 or any(not 0 < r <= 1 for r in keep)
                or any(b > a for a, b in zip(keep, keep[1:], strict=False))):
            return skip(f"keep={self.options.keep!r}: need {len(attns)} ratios in (0, 1], the "
                        "first 1, none above the one before")
        hs = [_layer_input(a.inputs[0]) for a in attns]
        if any(h is None or h.producer() is None for h in hs) or len(attns) < 2:
            return skip("cannot find each layer's input hidden state")
        kind = hs[1].producer()
        last = [n for n in g if n.op_type == kind.op_type and _dom(n) == _dom(kind)]
        h_last = last[-1].outputs[0] if last else None
        if h_last is None or h_last in hs:
            return skip("cannot find the last layer's output")
        outs = [*hs[1:], h_last]
        axes = rw.initializer("prune_tokens_axes", np.array([-1], np.int64))
        alive = mask
        first = next(i for i, r in enumerate(keep) if r < 1)
        cur_in = hs[first]
        for layer in range(first, len(attns)):
            a = attns[layer]
            if keep[layer] < keep[layer - 1]:
                prev = attns[layer - 1]
                attrs = {"num_heads": prev.attributes["num_heads"].value,
                         "scale": (prev.attributes["scale"].value if "scale" in prev.attributes
                                   else 1.0)}
                imp = rw.node("TokenImportance", [prev.inputs[0], prev.inputs[1], alive], attrs,
                              domain=DOMAIN, before=a)
                imp.outputs[0].dtype = ir.DataType.FLOAT
                imp.outputs[0].shape = mask.shape
                sel = rw.node("SelectTokens", [imp.outputs[0], alive, mask],
                              {"keep_ratio": float(keep[layer])}, domain=DOMAIN, before=a)
                sel.outputs[0].dtype = ir.DataType.INT64
                sel.outputs[0].shape = mask.shape
                alive = sel.outputs[0]
                stats["pruning_points"] += 1
            a.replace_input_with(3, alive)
            out = outs[layer]
            users = [u for u, _ in out.uses()]
            anchor = users[0] if users else a
            cast = rw.node("Cast", [alive], {"to": ir.DataType.BOOL}, before=anchor)
            cond = rw.node("Unsqueeze", [cast.outputs[0], axes], before=anchor)
            where = rw.node("Where", [cond.outputs[0], out, cur_in], before=anchor)
            rw.replace(out, where.outputs[0])
            where.replace_input_with(1, out)
            cur_in = where.outputs[0]
            stats["layers_pruned"] += 1
        stats["mean_keep"] = round(float(np.mean(keep)), 4)  # mean ratio over all layers
        g.sort()
        return PassResult(model, changed=True, stats=stats)

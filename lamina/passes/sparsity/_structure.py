"""Where the attention heads and FFN neurons of an encoder live in an O1 graph.

O1 (``fuse-attention``, ``merge-qkv``, ``fuse-bias-residual``) leaves every layer as::

    %qkv = lamina::Linear(%x, %Wqkv, %bqkv)            # or three Linears without merge-qkv
    %q, %k, %v = Split(%qkv, [H*D, H*D, H*D], axis=-1)
    %ctx = lamina::Attention(%q, %k, %v, %mask) {num_heads: H}
    %y = lamina::Linear(%ctx, %Wo, %bo, %res)           # the output projection
    %h = lamina::Linear(%z, %W1, %b1) {activation: gelu}   # FFN up
    %f = lamina::Linear(%h, %W2, %b2, %z2)              # FFN down

Head ``h`` owns output columns ``[h*D, (h+1)*D)`` of each of Q, K, V and input rows ``[h*D,
(h+1)*D)`` of ``Wo``; FFN neuron ``j`` owns output column ``j`` of ``W1`` (and ``b1[j]``) and input
row ``j`` of ``W2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.ir.domain import DOMAIN


@dataclass
class Proj:
    """Output columns ``[lo, hi)`` of a constant-weight ``lamina::Linear``."""

    linear: ir.Node
    lo: int
    hi: int

    def weight(self) -> np.ndarray:
        return const_array(self.linear.inputs[1])[:, self.lo:self.hi]

    def bias(self) -> np.ndarray:
        return const_array(self.linear.inputs[2]).reshape(-1)[self.lo:self.hi]


@dataclass
class AttentionBlock:
    attn: ir.Node
    heads: int
    head_dim: int
    q: Proj
    k: Proj
    v: Proj
    out: ir.Node        # the output projection Linear (reads the attention output as X)

    def zero_heads(self) -> dict[str, np.ndarray]:
        """Per head: True where Q / K / V columns (weights and biases) or Wo's rows are all zero."""
        h, d = self.heads, self.head_dim

        def cols(p: Proj) -> np.ndarray:
            w, b = p.weight(), p.bias()
            return ~((w != 0).reshape(w.shape[0], h, d).any(axis=(0, 2))
                     | (b != 0).reshape(h, d).any(axis=1))

        wo = const_array(self.out.inputs[1])
        rows = ~(wo != 0).reshape(h, d, wo.shape[1]).any(axis=(1, 2))
        return {"q": cols(self.q), "k": cols(self.k), "v": cols(self.v), "o": rows}


@dataclass
class FfnBlock:
    up: ir.Node         # Linear with an activation
    down: ir.Node       # Linear reading the up projection's output

    def zero_neurons(self) -> dict[str, np.ndarray]:
        w1 = const_array(self.up.inputs[1])
        b1 = const_array(self.up.inputs[2]).reshape(-1)
        w2 = const_array(self.down.inputs[1])
        return {"up": ~(w1 != 0).any(axis=0), "up_bias": b1 == 0, "down": ~(w2 != 0).any(axis=1)}


def is_linear(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Linear" and node.domain == DOMAIN


def _const_linear(node: ir.Node | None) -> bool:
    return (is_linear(node) and const_array(node.inputs[1]) is not None
            and const_array(node.inputs[2]) is not None and const_array(node.inputs[1]).ndim == 2)


def _attr(node: ir.Node, name: str, default: object) -> object:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _proj(value: ir.Value | None, width: int) -> Proj | None:
    if value is None:
        return None
    node = value.producer()
    if _const_linear(node) and _attr(node, "activation", "none") == "none" \
            and not int(_attr(node, "has_residual", 0)):
        n = const_array(node.inputs[1]).shape[1]
        return Proj(node, 0, n) if n == width else None
    if node is None or node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
        return None
    src = node.inputs[0].producer() if node.inputs[0] is not None else None
    if not _const_linear(src) or _attr(src, "activation", "none") != "none" \
            or int(_attr(src, "has_residual", 0)) or int(_attr(node, "axis", 0)) not in (-1, 2):
        return None
    sizes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if sizes is None:
        return None
    sizes = [int(s) for s in sizes.reshape(-1)]
    idx = list(node.outputs).index(value)
    lo = sum(sizes[:idx])
    return Proj(src, lo, lo + sizes[idx]) if sizes[idx] == width else None


def find_attention_blocks(model: ir.Model) -> list[AttentionBlock]:
    """Every self-attention whose projections are constant-weight Linears (see the module doc)."""
    out = []
    for node in model.graph:
        if node.op_type != "Attention" or node.domain != DOMAIN:
            continue
        heads = int(_attr(node, "num_heads", 0))
        q = node.inputs[0]
        if heads <= 0 or q is None or q.shape is None or not isinstance(q.shape[-1], int):
            continue
        width = int(q.shape[-1])
        if width % heads:
            continue
        projs = [_proj(v, width) for v in node.inputs[:3]]
        users = node.outputs[0].uses()
        if any(p is None for p in projs) or len(users) != 1:
            continue
        user, idx = users[0]
        if not _const_linear(user) or idx != 0 or node.outputs[0].is_graph_output():
            continue
        out.append(AttentionBlock(node, heads, width // heads, projs[0], projs[1], projs[2], user))
    return out


def find_ffn_blocks(model: ir.Model) -> list[FfnBlock]:
    """Every ``Linear{activation} -> Linear`` pair with constant weights and no other user
    between."""
    out = []
    for node in model.graph:
        if not _const_linear(node) or _attr(node, "activation", "none") == "none":
            continue
        users = node.outputs[0].uses()
        if len(users) != 1 or node.outputs[0].is_graph_output():
            continue
        user, idx = users[0]
        if _const_linear(user) and idx == 0:
            out.append(FfnBlock(node, user))
    return out

"""``lamina::Attention``: multi-head scaled dot-product attention on projected Q, K, V.

Signature::

    ctx = lamina::Attention(Q, K, V, [mask]) {num_heads: int, scale: float, mask_kind: str = "none"}

- ``Q``: float ``[batch, q_seq, num_heads * head_dim]`` (the query projection, heads not yet split).
- ``K``, ``V``: float ``[batch, kv_seq, num_heads * head_dim]``.
- ``mask``: absent when ``mask_kind="none"``; otherwise

  - ``mask_kind="key_padding"``: ``[batch, kv_seq]``, any numeric or bool type (the model's
    ``attention_mask``): nonzero = attend, zero = padding. Inside the op it becomes the additive
    bias ``where(mask != 0, 0, finfo(float32).min)`` broadcast to ``[batch, 1, 1, kv_seq]``.
  - ``mask_kind="additive"``: float, broadcastable to ``[batch, num_heads, q_seq, kv_seq]``, added
    to the scaled scores as is.
- ``ctx``: float ``[batch, q_seq, num_heads * head_dim]`` (heads merged back).

Math (``h`` = head, ``Qh = Q[..., h*D:(h+1)*D]``, ``D = head_dim``)::

    S_h   = scale * Qh @ Kh^T + bias          # [batch, q_seq, kv_seq]
    P_h   = softmax(S_h, axis=-1)
    P_h   = where(isnan(P_h), 0, P_h)          # rows with every key masked by -inf give 0, not NaN
    ctx_h = P_h @ Vh

With ``key_padding`` a query row whose keys are all padding sees uniform weights (the eager Hugging
Face behaviour); valid rows match every export form exactly up to float rounding.

Why projected Q, K, V and not the hidden states plus six weights: the projections stay ordinary
``lamina::Linear`` GEMMs that ``merge-qkv`` concatenates into one (``Q, K, V = Split(Linear(X,
Wqkv))``), and the kernel a backend needs is just the softmax(QK^T)V core with a [batch, kv_seq]
padding mask. Created by ``fuse-attention``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

from lamina.compiler.ir.domain import FunctionBody, reference_op

MASK_KINDS = ("none", "key_padding", "additive")
MASK_FILL = float(np.finfo(np.float32).min)


def _ints(name: str, values: list[int]) -> Any:
    return helper.make_node("Constant", [], [name], value_ints=values)


def _float(name: str, value: float) -> Any:
    return helper.make_node("Constant", [], [name], value_float=value)


@reference_op("Attention", doc="softmax(scale * Q K^T + mask) V, per head")
def _attention(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    heads = int(attrs["num_heads"])
    scale = float(attrs.get("scale", 1.0))
    kind = attrs.get("mask_kind", "none")
    if kind not in MASK_KINDS:
        raise ValueError(f"lamina::Attention: mask_kind must be one of {MASK_KINDS}, got {kind!r}")
    want = 3 if kind == "none" else 4
    if n_inputs != want:
        raise ValueError(
            f"lamina::Attention: mask_kind={kind!r} needs {want} inputs, got {n_inputs}"
        )
    mk = helper.make_node
    nodes = [
        _ints("split_shape", [0, 0, heads, -1]),
        _ints("merge_shape", [0, 0, -1]),
        _float("scale", scale),
        _float("zero", 0.0),
        mk("Reshape", ["Q", "split_shape"], ["q4"]),
        mk("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["K", "split_shape"], ["k4"]),
        mk("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        mk("Reshape", ["V", "split_shape"], ["v4"]),
        mk("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        mk("MatMul", ["qh", "kt"], ["qk"]),
        mk("Mul", ["qk", "scale"], ["scores"]),
    ]
    scores = "scores"
    if kind == "key_padding":
        nodes += [
            _float("fill", MASK_FILL),
            _ints("bias_axes", [1, 2]),
            mk("Cast", ["mask"], ["keep"], to=TensorProto.BOOL),
            mk("Where", ["keep", "zero", "fill"], ["bias2"]),
            mk("Unsqueeze", ["bias2", "bias_axes"], ["bias"]),
            mk("Add", ["scores", "bias"], ["masked"]),
        ]
        scores = "masked"
    elif kind == "additive":
        nodes.append(mk("Add", ["scores", "mask"], ["masked"]))
        scores = "masked"
    nodes += [
        mk("Softmax", [scores], ["probs0"], axis=-1),
        mk("IsNaN", ["probs0"], ["nan"]),
        mk("Where", ["nan", "zero", "probs0"], ["probs"]),
        mk("MatMul", ["probs", "vh"], ["oh"]),
        mk("Transpose", ["oh"], ["o4"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["o4", "merge_shape"], ["ctx"]),
    ]
    inputs = ["Q", "K", "V"] + ([] if kind == "none" else ["mask"])
    return FunctionBody(inputs=inputs, outputs=["ctx"], nodes=nodes)

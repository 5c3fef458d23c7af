"""``lamina::TokenImportance`` and ``lamina::SelectTokens``: training-free token pruning.

Signatures::

    imp   = lamina::TokenImportance(Q, K, alive) {num_heads: int, scale: float}
    alive' = lamina::SelectTokens(imp, alive, mask) {keep_ratio: float}

- ``Q``, ``K``: float ``[batch, seq, num_heads * head_dim]``, one layer's attention queries and keys
  (the inputs of its ``lamina::Attention``).
- ``alive``: ``[batch, seq]``, any numeric or bool type, nonzero where the token is still computed
  (at first the model's ``attention_mask``).
- ``mask``: the model's ``attention_mask`` (right-padded), for each row's real length.
- ``imp``: float ``[batch, seq]``; ``alive'``: int64 ``[batch, seq]``, a subset of ``alive``.

Math (``P_h`` exactly ``lamina::Attention``'s masked probabilities with ``alive`` as the key
mask)::

    P_h       = softmax(scale * Q_h K_h^T + where(alive[b, None, :] != 0, 0, finfo(f32).min))
    imp[b, t] = (1 / H) * sum_h sum_q alive[b, q] * P_h[b, q, t] / max(1, sum_q alive[b, q])

    n_b       = sum_t alive[b, t];  len_b = sum_t (mask[b, t] != 0)
    k_b       = min(n_b, max(2, ceil(f32(keep_ratio) * f32(len_b) - 0.001)))      (float32)
    last_b    = max{t : alive[b, t] != 0}
    score     = 3e38 where t == 0 or t == last_b ([CLS], [SEP]); imp where alive; -3e38 elsewhere
    alive'    = 1 where t's rank in the stable descending order of score (ties: lower index
                first) is below k_b, and alive

So a token's importance is the attention it receives, averaged over heads and over the queries
still alive; each row keeps ``k_b`` tokens, always its first and its last live token, and padding
is never kept. The ``- 0.001`` makes ``ceil`` of an exact product (0.7 * 10) independent of float
rounding. Created by ``prune-tokens``; the TVM backend runs the same math between its
layer-by-layer functions (``backends/tvm/pruned_runtime.py``). :func:`token_importance` and
:func:`select_tokens` are the NumPy definitions the reference bodies are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper

from lamina.compiler.ir.domain import FunctionBody, reference_op
from lamina.compiler.ir.ops.attention import MASK_FILL, _float, _ints

BIG = 3e38


def token_importance(q: np.ndarray, k: np.ndarray, alive: np.ndarray, num_heads: int,
                     scale: float) -> np.ndarray:
    """NumPy definition of ``lamina::TokenImportance`` (float32 ``[batch, seq]``)."""
    b, s, hd = q.shape
    d = hd // num_heads
    qh = q.reshape(b, s, num_heads, d).transpose(0, 2, 1, 3).astype(np.float32)
    kh = k.reshape(b, s, num_heads, d).transpose(0, 2, 3, 1).astype(np.float32)
    live = alive != 0
    scores = np.float32(scale) * (qh @ kh) + np.where(live, 0, MASK_FILL)[:, None, None, :]
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    received = (p * live[:, None, :, None]).sum(axis=(1, 2))
    n = np.maximum(1, live.sum(1, keepdims=True))
    return (received / (num_heads * n)).astype(np.float32)


def keep_counts(alive: np.ndarray, lengths: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Tokens each row keeps: ``min(alive, max(2, ceil(r * length - 0.001)))`` in float32."""
    want = np.ceil(np.float32(keep_ratio) * lengths.astype(np.float32) - np.float32(0.001))
    return np.minimum(alive, np.maximum(2, want.astype(np.int64)))


def select_rows(imp: np.ndarray, live: np.ndarray, lengths: np.ndarray,
                keep_ratio: float) -> np.ndarray:
    """Which tokens stay (bool ``[batch, seq]``) given each row's real length: the first and the
    last live token, then the most important (ties: the earlier token) up to :func:`keep_counts`."""
    live = live != 0
    b, s = live.shape
    k = keep_counts(live.sum(1), lengths, keep_ratio)
    t = np.arange(s)
    last = np.where(live, t[None, :], -1).max(1)
    forced = (t[None, :] == 0) | (t[None, :] == last[:, None])
    score = np.where(forced, np.float32(BIG), np.where(live, imp, np.float32(-BIG)))
    order = np.argsort(-score.astype(np.float32), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(t, (b, s)).copy(), axis=1)
    return (rank < k[:, None]) & live


def select_tokens(imp: np.ndarray, alive: np.ndarray, mask: np.ndarray,
                  keep_ratio: float) -> np.ndarray:
    """NumPy definition of ``lamina::SelectTokens`` (int64 ``[batch, seq]``)."""
    return select_rows(imp, alive, (mask != 0).sum(1), keep_ratio).astype(np.int64)


@reference_op("TokenImportance", doc="attention each token receives, mean over heads and queries")
def _token_importance(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    heads = int(attrs["num_heads"])
    scale = float(attrs.get("scale", 1.0))
    if n_inputs != 3:
        raise ValueError(f"lamina::TokenImportance needs 3 inputs, got {n_inputs}")
    mk = helper.make_node
    nodes = [
        _ints("split_shape", [0, 0, heads, -1]),
        _ints("axes12", [1, 2]),
        _ints("axes13", [1, 3]),
        _ints("axes1", [1]),
        _float("scale", scale),
        _float("zero", 0.0),
        _float("fill", MASK_FILL),
        _float("one", 1.0),
        _float("heads", float(heads)),
        mk("Reshape", ["Q", "split_shape"], ["q4"]),
        mk("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        mk("Reshape", ["K", "split_shape"], ["k4"]),
        mk("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        mk("MatMul", ["qh", "kt"], ["qk"]),
        mk("Mul", ["qk", "scale"], ["scaled"]),
        mk("Cast", ["alive"], ["live"], to=TensorProto.BOOL),
        mk("Where", ["live", "zero", "fill"], ["bias2"]),
        mk("Unsqueeze", ["bias2", "axes12"], ["bias"]),
        mk("Add", ["scaled", "bias"], ["scores"]),
        mk("Softmax", ["scores"], ["probs"], axis=-1),
        mk("Cast", ["live"], ["livef"], to=TensorProto.FLOAT),
        mk("Unsqueeze", ["livef", "axes13"], ["qmask"]),
        mk("Mul", ["probs", "qmask"], ["weighted"]),
        mk("ReduceSum", ["weighted", "axes12"], ["received"], keepdims=0),
        mk("ReduceSum", ["livef", "axes1"], ["count"], keepdims=1),
        mk("Max", ["count", "one"], ["count1"]),
        mk("Mul", ["count1", "heads"], ["denom"]),
        mk("Div", ["received", "denom"], ["imp"]),
    ]
    return FunctionBody(inputs=["Q", "K", "alive"], outputs=["imp"], nodes=nodes)


@reference_op("SelectTokens", doc="keep each row's most important tokens (TopK)")
def _select_tokens(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    ratio = float(attrs["keep_ratio"])
    if n_inputs != 3:
        raise ValueError(f"lamina::SelectTokens needs 3 inputs, got {n_inputs}")
    if not 0 < ratio <= 1:
        raise ValueError(f"lamina::SelectTokens: keep_ratio must be in (0, 1], got {ratio}")
    mk = helper.make_node
    nodes = [
        _ints("axes1", [1]),
        _ints("one_i", [1]),
        _ints("two_i", [2]),
        _float("ratio", ratio),
        _float("eps", 0.001),
        _float("two", 2.0),
        _float("zero", 0.0),
        _float("minus1", -1.0),
        _float("big", BIG),
        _float("nbig", -BIG),
        helper.make_node("Constant", [], ["start"], value_int=0),
        helper.make_node("Constant", [], ["step"], value_int=1),
        mk("Cast", ["alive"], ["live"], to=TensorProto.BOOL),
        mk("Cast", ["mask"], ["real"], to=TensorProto.BOOL),
        mk("Cast", ["live"], ["livef"], to=TensorProto.FLOAT),
        mk("Cast", ["real"], ["realf"], to=TensorProto.FLOAT),
        mk("ReduceSum", ["livef", "axes1"], ["n"], keepdims=1),
        mk("ReduceSum", ["realf", "axes1"], ["length"], keepdims=1),
        mk("Mul", ["length", "ratio"], ["prod"]),
        mk("Sub", ["prod", "eps"], ["prod_eps"]),
        mk("Ceil", ["prod_eps"], ["want"]),
        mk("Max", ["want", "two"], ["want2"]),
        mk("Min", ["n", "want2"], ["k"]),
        # token positions and each row's last live token
        mk("Shape", ["imp"], ["shape"]),
        mk("Slice", ["shape", "one_i", "two_i"], ["seq1"]),
        mk("Squeeze", ["seq1"], ["seq"]),
        mk("Range", ["start", "seq", "step"], ["t"]),
        mk("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        mk("Where", ["live", "tf", "minus1"], ["live_t"]),
        mk("ReduceMax", ["live_t", "axes1"], ["last"], keepdims=1),
        mk("Equal", ["tf", "zero"], ["is_first"]),
        mk("Equal", ["tf", "last"], ["is_last"]),
        mk("Or", ["is_first", "is_last"], ["forced"]),
        mk("Where", ["live", "imp", "nbig"], ["score0"]),
        mk("Where", ["forced", "big", "score0"], ["score"]),
        # rank of every token in the stable descending order, then rank < k
        mk("TopK", ["score", "seq1"], ["sorted", "order"], axis=1, largest=1, sorted=1),
        mk("Shape", ["order"], ["oshape"]),
        mk("Expand", ["t", "oshape"], ["positions"]),
        mk("ScatterElements", ["positions", "order", "positions"], ["rank"], axis=1),
        mk("Cast", ["rank"], ["rankf"], to=TensorProto.FLOAT),
        mk("Less", ["rankf", "k"], ["in_top"]),
        mk("And", ["in_top", "live"], ["kept"]),
        mk("Cast", ["kept"], ["out"], to=TensorProto.INT64),
    ]
    return FunctionBody(inputs=["imp", "alive", "mask"], outputs=["out"], nodes=nodes)

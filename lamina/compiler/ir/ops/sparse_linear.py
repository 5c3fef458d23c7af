"""``lamina::SparseLinear``: ``lamina::Linear`` with a block-compressed constant weight.

Signature::

    y = lamina::SparseLinear(X, data, index, B, [R])
        {in_features: int, out_features: int, block: int, activation: str = "none", has_residual:
        int = 0}

- ``X``: float ``[..., K]`` with ``K = in_features``; ``y``: float ``[..., N]`` with ``N =
  out_features``.
- The weight ``W[K, N]`` is stored as its nonzero blocks of ``block`` consecutive outputs of one
  input row
  (``Rx1`` in the ``[out, in]`` naming, see ``lamina.passes.sparsity._analysis``):

  - ``data``: float ``[nnzb, block]``, the blocks' weights;
  - ``index``: int64 ``[nnzb]``, ascending, ``g * K + k`` for the block at output group ``g``
    (columns
    ``[g*block, (g+1)*block)``) and input row ``k``.

- ``B``: float ``[N]``; ``R`` only with ``has_residual=1``; ``activation`` as in ``lamina::Linear``.

Math::

    W = zeros[N / block, K, block];  W[index // K, index % K, :] = data;  W = W.transpose(1, 0,
    2).reshape(K, N) y = act(X @ W + B) + R

The reference definition builds ``W`` with ``ScatterND`` and runs the dense ``lamina::Linear`` math,
so the result is exact against the same masked dense weight. Created by ``encode-sparsity``;
backends run it with a block-sparse kernel whose index arrays are derived from ``index`` at compile
time.
"""

from __future__ import annotations

from typing import Any

from onnx import helper

from lamina.compiler.ir.domain import FunctionBody, reference_op
from lamina.compiler.ir.ops.gelu import gelu_nodes
from lamina.compiler.ir.ops.linear import ACTIVATIONS


@reference_op("SparseLinear", doc="y = act(X @ W + B) (+ R), W block-compressed (data, index)")
def _sparse_linear(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    activation = attrs.get("activation", "none")
    if activation not in ACTIVATIONS:
        raise ValueError(f"lamina::SparseLinear: activation must be one of {sorted(ACTIVATIONS)}, "
                         f"got {activation!r}")
    k, n, r = int(attrs["in_features"]), int(attrs["out_features"]), int(attrs["block"])
    if r <= 0 or n % r:
        raise ValueError(f"lamina::SparseLinear: out_features {n} is not a multiple of block {r}")
    has_residual = bool(attrs.get("has_residual", 0))
    if n_inputs != (5 if has_residual else 4):
        raise ValueError(f"lamina::SparseLinear: has_residual={int(has_residual)} needs "
                         f"{5 if has_residual else 4} inputs, got {n_inputs}")
    mk = helper.make_node
    nodes = [
        mk("Constant", [], ["flat_shape"], value_ints=[(n // r) * k, r]),
        mk("Constant", [], ["w3_shape"], value_ints=[n // r, k, r]),
        mk("Constant", [], ["w_shape"], value_ints=[k, n]),
        mk("Constant", [], ["last"], value_ints=[-1]),
        mk("ConstantOfShape", ["flat_shape"], ["zeros"],
           value=helper.make_tensor("zero", 1, [1], [0.0])),
        mk("Unsqueeze", ["index", "last"], ["idx"]),
        mk("ScatterND", ["zeros", "idx", "data"], ["blocks"]),
        mk("Reshape", ["blocks", "w3_shape"], ["w3"]),
        mk("Transpose", ["w3"], ["wt"], perm=[1, 0, 2]),
        mk("Reshape", ["wt", "w_shape"], ["W"]),
        mk("MatMul", ["X", "W"], ["xw"]),
        mk("Add", ["xw", "B"], ["z"]),
    ]
    cur = "z"
    if ACTIVATIONS[activation] is not None:
        nodes += gelu_nodes(cur, "a", ACTIVATIONS[activation], prefix="act")
        cur = "a"
    if has_residual:
        nodes.append(mk("Add", [cur, "R"], ["r"]))
        cur = "r"
    nodes.append(mk("Identity", [cur], ["y"]))
    inputs = ["X", "data", "index", "B"] + (["R"] if has_residual else [])
    return FunctionBody(inputs=inputs, outputs=["y"], nodes=nodes)

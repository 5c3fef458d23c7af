"""``lamina::Linear``: a dense layer with a fused epilogue (bias, activation, residual).

Signature::

    y = lamina::Linear(X, W, B, [R]) {activation: str = "none", has_residual: int = 0}

- ``X``: float ``[..., K]`` (usually ``[batch, seq, K]``).
- ``W``: float ``[K, N]``, a constant (an initializer); ``B``: float ``[N]``, a constant.
- ``R`` (only when ``has_residual=1``): float, the shape of ``y`` (the residual / skip connection).
- ``y``: float ``[..., N]``.
- ``activation``: ``"none"``, ``"gelu"`` (erf form) or ``"gelu_tanh"`` (tanh approximation, see
  ``lamina::Gelu``).

Math, in this order::

    y = act(X @ W + B) + R

Created by ``fuse-bias-residual`` from ``MatMul`` + bias ``Add`` (+ ``lamina::Gelu``) (+ residual
``Add``). Backends lower it to one GEMM with the epilogue applied to the output tile.
"""

from __future__ import annotations

from typing import Any

from onnx import helper

from lamina.compiler.ir.domain import FunctionBody, reference_op
from lamina.compiler.ir.ops.gelu import gelu_nodes

ACTIVATIONS = {"none": None, "gelu": "none", "gelu_tanh": "tanh"}


@reference_op("Linear", doc="y = act(X @ W + B) (+ R)")
def _linear(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    activation = attrs.get("activation", "none")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"lamina::Linear: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    has_residual = bool(attrs.get("has_residual", 0))
    if n_inputs != (4 if has_residual else 3):
        raise ValueError(f"lamina::Linear: has_residual={int(has_residual)} needs "
                         f"{4 if has_residual else 3} inputs, got {n_inputs}")
    nodes = [helper.make_node("MatMul", ["X", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "B"], ["z"])]
    cur = "z"
    if ACTIVATIONS[activation] is not None:
        nodes += gelu_nodes(cur, "a", ACTIVATIONS[activation], prefix="act")
        cur = "a"
    if has_residual:
        nodes.append(helper.make_node("Add", [cur, "R"], ["r"]))
        cur = "r"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    inputs = ["X", "W", "B"] + (["R"] if has_residual else [])
    return FunctionBody(inputs=inputs, outputs=["y"], nodes=nodes)

"""``lamina::Gelu``: the Gaussian error linear unit.

Signature::

    y = lamina::Gelu(x) {approximate: str = "none"}

- ``x``: float tensor of any shape; ``y``: same shape and type.
- ``approximate="none"`` (exact, erf form)::

      y = 0.5 * x * (1 + erf(x / sqrt(2)))

- ``approximate="tanh"``::

      y = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))

Same meaning as ONNX ``Gelu`` (opset 20); a ``lamina`` op because the IR is opset 18. Created by
``fuse-gelu``; ``fuse-bias-residual`` folds it into ``lamina::Linear`` as an epilogue.
"""

from __future__ import annotations

import math
from typing import Any

import onnx
from onnx import helper

from lamina.compiler.ir.domain import FunctionBody, reference_op

APPROXIMATIONS = ("none", "tanh")


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value_float=value)


def gelu_nodes(x: str, y: str, approximate: str, prefix: str = "gelu") -> list[onnx.NodeProto]:
    """ONNX nodes computing ``y = gelu(x)``; value names are prefixed with ``prefix``."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(
            f"lamina::Gelu: approximate must be one of {APPROXIMATIONS}, got {approximate!r}"
        )
    p = prefix
    nodes = [_const(f"{p}_half", 0.5), _const(f"{p}_one", 1.0)]
    if approximate == "none":
        nodes += [
            _const(f"{p}_rsqrt2", 1.0 / math.sqrt(2.0)),
            helper.make_node("Mul", [x, f"{p}_rsqrt2"], [f"{p}_u"]),
            helper.make_node("Erf", [f"{p}_u"], [f"{p}_t"]),
        ]
    else:
        nodes += [
            _const(f"{p}_c", math.sqrt(2.0 / math.pi)),
            _const(f"{p}_k", 0.044715),
            helper.make_node("Mul", [x, x], [f"{p}_x2"]),
            helper.make_node("Mul", [f"{p}_x2", x], [f"{p}_x3"]),
            helper.make_node("Mul", [f"{p}_x3", f"{p}_k"], [f"{p}_kx3"]),
            helper.make_node("Add", [x, f"{p}_kx3"], [f"{p}_inner"]),
            helper.make_node("Mul", [f"{p}_inner", f"{p}_c"], [f"{p}_u"]),
            helper.make_node("Tanh", [f"{p}_u"], [f"{p}_t"]),
        ]
    nodes += [
        helper.make_node("Add", [f"{p}_t", f"{p}_one"], [f"{p}_1pt"]),
        helper.make_node("Mul", [x, f"{p}_half"], [f"{p}_hx"]),
        helper.make_node("Mul", [f"{p}_hx", f"{p}_1pt"], [y]),
    ]
    return nodes


@reference_op("Gelu", doc="y = 0.5 * x * (1 + erf(x / sqrt(2))), or the tanh approximation")
def _gelu(attrs: dict[str, Any], n_inputs: int, n_outputs: int) -> FunctionBody:
    approximate = attrs.get("approximate", "none")
    return FunctionBody(inputs=["x"], outputs=["y"], nodes=gelu_nodes("x", "y", approximate))

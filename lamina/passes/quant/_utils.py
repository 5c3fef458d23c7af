"""What INT8 rewriting quantizes, and the arithmetic of scales and zero points.

Quantizable ops (the contract with the INT8 kernels): ``lamina::Linear``, ``MatMul`` and ``Gemm``
(``transA=0``) whose weight is a constant 2-D float tensor. Input 0 is the activation X, input 1 the
weight W: ``[K, N]``, output channels on axis 1, except ``Gemm{transB=1}`` whose ``[N, K]`` weight
has them on axis 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.ir.domain import DOMAIN

QUANT_KEY = "lamina.quant"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class QuantOp:
    """One quantizable op: the node, its activation input, its constant weight and the weight's
    channel axis."""

    node: ir.Node
    x: ir.Value
    weight: np.ndarray
    axis: int

    @property
    def name(self) -> str:
        return self.node.name or ""

    @property
    def kind(self) -> str:
        return (
            f"{self.node.domain}::{self.node.op_type}"
            if self.node.domain == DOMAIN
            else self.node.op_type
        )


def _is(node: ir.Node, op_type: str, domain: str = "") -> bool:
    dom = "" if node.domain in ("", "ai.onnx") else node.domain
    return node.op_type == op_type and dom == domain


def classify(node: ir.Node) -> tuple[QuantOp | None, str]:
    """The node as a :class:`QuantOp`, or None and the reason it is not quantizable."""
    if _is(node, "Linear", DOMAIN) or _is(node, "MatMul"):
        axis = 1
    elif _is(node, "Gemm"):
        ta = node.attributes.get("transA")
        if ta is not None and ta.value:
            return None, "Gemm with transA=1"
        tb = node.attributes.get("transB")
        axis = 0 if tb is not None and tb.value else 1
    else:
        return None, "not a MatMul, Gemm or lamina::Linear"
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None, "missing inputs"
    x, w = node.inputs[0], node.inputs[1]
    wp = w.producer()
    if wp is not None and _is(wp, "DequantizeLinear"):
        return None, "already quantized (weight is a DequantizeLinear)"
    warr = const_array(w)
    if warr is None:
        return None, "weight is not a constant (activation x activation product)"
    if warr.ndim != 2 or warr.dtype != np.float32:
        return None, f"weight is {warr.dtype} of rank {warr.ndim}, not a 2-D float32 matrix"
    return QuantOp(node, x, warr, axis), ""


def quantizable_ops(model: ir.Model) -> list[QuantOp]:
    return [op for node in model.graph if (op := classify(node)[0]) is not None]


WEIGHT_BITS = (7, 8)


def quantize_weight(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 in [-q, q], q = 2^(bits-1) - 1 (127, or 63 for the AVX2
    kernels' 7 bits): (W_q int8, scale f32 [N]) with W ~ W_q * scale."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits must be 7 or 8, got {bits}")
    top = float(2 ** (bits - 1) - 1)
    amax = np.abs(w).max(axis=1 - axis)
    scale = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    q = np.clip(np.rint(w / shaped), -top, top).astype(np.int8)
    return q, scale


def activation_qparams(lo: float, hi: float, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor (scale f32 scalar, zero point scalar) for the range ``[lo, hi]``.

    ``u8``: asymmetric uint8, the range widened to include 0 so that 0 is exact; ``s8``: symmetric
    int8, zp 0.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if scheme == "s8":
        amax = max(-lo, hi)
        scale = amax / 127.0 if amax > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zp, np.uint8)


def quantize_ref(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, saturate."""
    return np.clip(np.rint(x / np.float32(scale)) + zp, qmin, qmax)


def quant_info(node: ir.Node) -> str | None:
    """The ``lamina.quant`` tag of a node (``static:u8:minmax``, ``dynamic:u8``, ``imported:...``),
    if any."""
    return node.metadata_props.get(QUANT_KEY)

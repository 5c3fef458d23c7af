"""Tiny graphs for the INT8 pass tests, and a calibration .npz writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h
import onnx_ir as ir

from tests.passes.fusion._graphs import B, S, const, f32, model

HID, FF = 16, 32


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return rng.normal(0, scale, shape).astype(np.float32)


def mlp(*, const_weight: bool = True, outlier: float = 1.0, seed: int = 0) -> ir.Model:
    """``y = Relu(x @ W1 + b1) @ W2 + b2 + x``, x [batch, seq, 16]; ``outlier`` scales channel 3 of
    W1's output (an activation outlier channel, as BERT has, for SmoothQuant and the fallback
    tests)."""
    rng = np.random.default_rng(seed)
    w1 = _w(rng, HID, FF)
    w1[:, 3] *= outlier
    n = [h.make_node("MatMul", ["x", "W1" if const_weight else "x2"], ["m1"], name="fc1"),
         h.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
         h.make_node("Relu", ["a1"], ["r1"], name="relu"),
         h.make_node("MatMul", ["r1", "W2"], ["m2"], name="fc2"),
         h.make_node("Add", ["m2", "b2"], ["a2"], name="fc2_bias"),
         h.make_node("Add", ["a2", "x"], ["y"], name="residual")]
    inits = [const("b1", _w(rng, FF)), const("W2", _w(rng, FF, HID)), const("b2", _w(rng, HID))]
    inputs = [f32("x", ["batch", "seq", HID])]
    if const_weight:
        inits.append(const("W1", w1))
    else:
        n[0] = h.make_node("MatMul", ["x", "x2"], ["m1"], name="fc1")
        inputs.append(f32("x2", ["batch", HID, FF]))
    return model(n, inputs, [f32("y", None)], inits)


def shared_input() -> ir.Model:
    """Two MatMuls reading the same x (one Q/DQ pair must serve both), plus a Gemm{transB=1} on a
    2-D input."""
    rng = np.random.default_rng(1)
    n = [
        h.make_node("MatMul", ["x", "Wa"], ["ya"], name="mm_a"),
        h.make_node("MatMul", ["x", "Wb"], ["yb"], name="mm_b"),
        h.make_node("Add", ["ya", "yb"], ["y"], name="sum"),
        h.make_node("Gemm", ["p", "Wg", "bg"], ["z"], name="gemm", transB=1),
    ]
    inits = [
        const("Wa", _w(rng, HID, HID)),
        const("Wb", _w(rng, HID, HID)),
        const("Wg", _w(rng, 8, HID)),
        const("bg", _w(rng, 8)),
    ]
    return model(
        n,
        [f32("x", ["batch", "seq", HID]), f32("p", ["batch", HID])],
        [f32("y", None), f32("z", None)],
        inits,
    )


def feeds(m: ir.Model, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in m.graph.inputs:
        shape = [n if i == 0 else (d if isinstance(d, int) else S) for i, d in enumerate(v.shape)]
        out[v.name] = rng.normal(0, 1, shape).astype(np.float32)
    return out


def write_npz(m: ir.Model, path: Path, n: int = 32, seed: int = 0) -> Path:
    np.savez(path, **feeds(m, n, seed))
    return path


__all__ = ["B", "HID", "FF", "mlp", "shared_input", "feeds", "write_npz", "onnx"]

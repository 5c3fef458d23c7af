"""Activation quantization for the INT8 kernels: ONNX QuantizeLinear into the u8 the kernels read,
and DynamicQuantizeLinear's run-time parameters.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from .common import (
    _L8,
    bit_reversed,
    finish_kernel,
    interleave_rounds,
    keep_params,
    root_block,
    saturate_u8,
)


def quantize_reference(x: np.ndarray, scale: float, zp: int, signed: bool = False) -> np.ndarray:
    """ONNX QuantizeLinear (round half to even, saturate), then as the u8 the kernel reads."""
    lo, hi = (-128, 127) if signed else (0, 255)
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zp, lo, hi)
    return (q + (128 if signed else 0)).astype(np.uint8)


def quantize_kernel(M: int, K: int, *, signed: bool = False, target: tvm.target.Target,
                    k_step: int = 4, smooth: bool = False) -> tirx.PrimFunc:
    """``Xq[M, Kp] = saturate(round_half_even(X / qp[0]) + qp[1])`` as the kernel's u8 (int8
    activations shifted by +128), zero-padded columns up to Kp; arguments ``X[M, K]``, ``qp[2]``
    (the ONNX scale and zero point), output ``Xq``. Parallel over rows, vectorized along them.

    With ``smooth`` a per-channel multiplier ``S[K]`` comes after ``X`` and the kernel quantizes
    ``X * S`` (the ``Mul`` that ``smooth-quant`` puts before the QuantizeLinear, fused: the same
    float operations in the same order, so the same integers)."""
    del target  # one form for every ISA: LLVM vectorizes the row loop to the target's width
    Kp = -(-K // k_step) * k_step

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), S: T.Buffer((K,), "float32"),
             QP: T.Buffer((2,), "float32"), Y: T.Buffer((M, Kp), "uint8")):
        T.func_attr({"tirx.noalias": True})
        for r in T.parallel(M):
            for c in T.vectorized(K):
                if smooth:
                    Y[r, c] = saturate_u8(X[r, c] * S[c] / QP[0], QP[1], signed)
                else:
                    Y[r, c] = saturate_u8(X[r, c] / QP[0], QP[1], signed)
            for c in range(Kp - K):
                Y[r, K + c] = T.uint8(0)

    keep = ["X", "S", "QP", "Y"] if smooth else ["X", "QP", "Y"]
    return finish_kernel(root_block(keep_params(func, keep)))


def quantize_transposed_kernel(M: int, K: int, *, signed: bool = False,
                               smooth: bool = False) -> tirx.PrimFunc:
    """:func:`quantize_kernel`'s u8, transposed: ``XT[K, M]`` (tokens contiguous), the layout the
    block-sparse INT8 kernel reads. Arguments ``X[M, K]``, ``S[K]`` if ``smooth``, ``qp[2]``.

    Blocks of 16 tokens x 16 channels: 16 rows of X are quantized (vectorised) into a 16 x 16 byte
    tile, transposed by four levels of unpacks (bytes, words, dwords, qwords, each pairing tile
    rows i and i + 8; fed the rows in bit-reversed order, row j comes out as column j), and
    stored as 16-byte pieces of XT. (Gathering down the columns of X instead read one float per
    cache line, rows a few KB apart sharing L1 sets: 8-35x slower than quantizing row-major.)"""
    if M % 16 or K % 16:
        raise ValueError(f"M={M} and K={K} must be multiples of 16")

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), S: T.Buffer((K,), "float32"),
             QP: T.Buffer((2,), "float32"), Y: T.Buffer((K, M), "uint8")):
        T.func_attr({"tirx.noalias": True})
        for mb in T.parallel(M // 16):
            ta = T.alloc_buffer((16, 16), "uint8", scope="local")
            tb = T.alloc_buffer((16, 16), "uint8", scope="local")
            for kb in range(K // 16):
                for r in T.unroll(16):
                    for c in T.vectorized(16):
                        if smooth:
                            ta[bit_reversed(r), c] = saturate_u8(
                                X[mb * 16 + r, kb * 16 + c] * S[kb * 16 + c] / QP[0], QP[1],
                                signed)
                        else:
                            ta[bit_reversed(r), c] = saturate_u8(
                                X[mb * 16 + r, kb * 16 + c] / QP[0], QP[1], signed)
                interleave_rounds(ta, tb)
                for i in T.unroll(8):
                    Y[kb * 16 + 2 * i, T.ramp(mb * 16, 1, 16)] = T.Shuffle(
                        [tb[i, T.ramp(0, 1, 16)], tb[i + 8, T.ramp(0, 1, 16)]], _L8[0])
                    Y[kb * 16 + 2 * i + 1, T.ramp(mb * 16, 1, 16)] = T.Shuffle(
                        [tb[i, T.ramp(0, 1, 16)], tb[i + 8, T.ramp(0, 1, 16)]], _L8[1])

    keep = ["X", "S", "QP", "Y"] if smooth else ["X", "QP", "Y"]
    return finish_kernel(root_block(keep_params(func, keep)))


def dynamic_qparams_kernel(M: int, K: int) -> tirx.PrimFunc:
    """ONNX DynamicQuantizeLinear's parameters of ``X[M, K]``: ``qp = [scale, zero point]`` with
    ``scale = (max(0, max X) - min(0, min X)) / 255`` (1 when X is all zeros) and
    ``zp = saturate(round_half_even(-min(0, min X) / scale))``."""
    n = M * K

    @T.prim_func(private=True)
    def func(X: T.Buffer((n,), "float32"), QP: T.Buffer((2,), "float32")):
        T.func_attr({"tirx.noalias": True})
        lohi = T.alloc_buffer((32,), "float32", scope="local")
        for v in T.vectorized(16):
            lohi[v] = T.float32(0)
            lohi[16 + v] = T.float32(0)
        for o in range(n // 16):
            for v in T.vectorized(16):
                lohi[v] = T.min(lohi[v], X[o * 16 + v])
                lohi[16 + v] = T.max(lohi[16 + v], X[o * 16 + v])
        for t in range(n % 16):
            lohi[0] = T.min(lohi[0], X[n // 16 * 16 + t])
            lohi[16] = T.max(lohi[16], X[n // 16 * 16 + t])
        for v in range(1, 16):
            lohi[0] = T.min(lohi[0], lohi[v])
            lohi[16] = T.max(lohi[16], lohi[16 + v])
        QP[0] = T.Select(lohi[16] - lohi[0] > T.float32(0), (lohi[16] - lohi[0]) / T.float32(255),
                         T.float32(1))
        QP[1] = T.max(T.min(T.nearbyint(T.float32(0) - lohi[0] / QP[0]), T.float32(255)),
                      T.float32(0))

    return finish_kernel(root_block(func))

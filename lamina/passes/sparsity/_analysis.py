"""Sparsity analysis of weights: what zeros a weight holds and which pattern they follow.

Used by ``lamina inspect`` (the report), ``lamina prune`` (to check what it made) and the sparsity
passes (the cost model reads the block densities measured here).

Orientation. A MatMul weight is stored ``W[K, N]`` (inputs x outputs). Block shapes are named the
way pruning papers and Intel's / Neural Magic's engines name them, in the PyTorch ``Linear``
orientation ``[out, in]``: ``RxC`` = R consecutive *outputs* x C consecutive *inputs*. So ``4x1`` is
one input row of ``W[K, N]`` times 4 consecutive output columns (what Lamina's block-sparse kernel
reads as one unit), and ``1x4`` is 4 consecutive inputs of one output. ``N:M`` (``2:4``) counts
nonzeros in groups of M consecutive inputs of one output, as NVIDIA's sparse tensor cores do.

Detection: a weight pruned with blocks of ``b`` elements at sparsity ``s`` has a fraction of
all-zero ``b``-blocks close to ``s``; random (unstructured) zeros give about ``s ** b``. The
detected pattern is the largest block shape whose all-zero fraction holds at least :data:`COVER` of
the zeros, else 2:4 when every group of 4 holds at most 2 nonzeros, else ``unstructured``;
``outputs`` / ``inputs`` when whole output columns (neurons, heads) / input rows are zero (or
``dense`` below :data:`MIN_ZEROS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Block shapes reported, as (outputs, inputs) = (R, C) in the [out, in] orientation.
BLOCKS: tuple[tuple[int, int], ...] = ((1, 1), (4, 1), (1, 4), (8, 1), (1, 8), (16, 1), (1, 16))
# Preference when several fit: the larger block first, then outputs-major (what the kernel runs
# best).
_DETECT_ORDER: tuple[tuple[int, int], ...] = ((16, 1), (1, 16), (8, 1), (1, 8), (4, 1), (1, 4))
MIN_ZEROS = 0.05   # below this a weight is reported dense
COVER = 0.95       # a block shape "explains" the zeros when its all-zero blocks hold 95% of them


def block_name(r: int, c: int) -> str:
    return f"{r}x{c}"


def parse_block(text: str) -> tuple[int, int]:
    """``"4x1"`` -> ``(4, 1)`` (outputs, inputs)."""
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"block {text!r}: expected ROWSxCOLS, e.g. 4x1") from None
    if r <= 0 or c <= 0:
        raise ValueError(f"block {text!r}: sizes must be positive")
    return r, c


def block_mask(w_kn: np.ndarray, r: int, c: int) -> np.ndarray | None:
    """``[K / c, N / r]`` booleans, True where the (r outputs x c inputs) block of ``W[K, N]`` has a
    nonzero; None when the shape does not divide."""
    k, n = w_kn.shape
    if k % c or n % r:
        return None
    nz = w_kn != 0
    return nz.reshape(k // c, c, n // r, r).any(axis=(1, 3))


def zero_block_fraction(w_kn: np.ndarray, r: int, c: int) -> float | None:
    mask = block_mask(w_kn, r, c)
    return None if mask is None else float(1.0 - mask.mean())


def nm_fraction(w_kn: np.ndarray, n: int = 2, m: int = 4) -> float | None:
    """Fraction of groups of ``m`` consecutive inputs (per output) with at most ``n`` nonzeros."""
    k = w_kn.shape[0]
    if k % m:
        return None
    groups = (w_kn != 0).reshape(k // m, m, -1).sum(axis=1)
    return float(np.mean(groups <= n))


@dataclass
class WeightSparsity:
    """What :func:`analyze_weight` found in one ``W[K, N]``."""

    shape: tuple[int, int]
    zeros: float                               # fraction of exact zeros
    blocks: dict[str, float] = field(default_factory=dict)  # "4x1" -> fraction of all-zero blocks
    nm_2_4: float | None = None                # fraction of input groups of 4 with <= 2 nonzeros
    zero_outputs: int = 0                      # all-zero output columns (neurons)
    zero_inputs: int = 0                       # all-zero input rows
    pattern: str = "dense"                     # detected: dense, unstructured, 2:4, RxC

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "zeros": round(self.zeros, 6),
                "zero_blocks": {k: round(v, 6) for k, v in self.blocks.items()},
                "nm_2_4": None if self.nm_2_4 is None else round(self.nm_2_4, 6),
                "zero_outputs": self.zero_outputs, "zero_inputs": self.zero_inputs,
                "pattern": self.pattern}


def analyze_weight(w_kn: np.ndarray) -> WeightSparsity:
    """Zeros, all-zero block fractions, 2:4, all-zero rows / columns and the detected pattern of a
    2-D weight ``W[K, N]`` (MatMul orientation; transpose a Gemm ``transB=1`` weight first)."""
    w = np.asarray(w_kn)
    if w.ndim != 2:
        raise ValueError(f"analyze_weight expects a 2-D weight, got shape {w.shape}")
    nz = w != 0
    zeros = float(1.0 - nz.mean()) if w.size else 0.0
    info = WeightSparsity(shape=(int(w.shape[0]), int(w.shape[1])), zeros=zeros)
    for r, c in BLOCKS:
        frac = zero_block_fraction(w, r, c)
        if frac is not None:
            info.blocks[block_name(r, c)] = frac
    info.nm_2_4 = nm_fraction(w)
    info.zero_outputs = int((~nz.any(axis=0)).sum())
    info.zero_inputs = int((~nz.any(axis=1)).sum())
    info.pattern = detect_pattern(info)
    return info


def detect_pattern(info: WeightSparsity) -> str:
    """The pattern the zeros follow (see the module doc)."""
    z = info.zeros
    if z < MIN_ZEROS:
        return "dense"
    k, n = info.shape
    if info.zero_outputs and info.zero_outputs / n >= COVER * z:
        return "outputs"
    if info.zero_inputs and info.zero_inputs / k >= COVER * z:
        return "inputs"
    for r, c in _DETECT_ORDER:
        frac = info.blocks.get(block_name(r, c))
        if frac is not None and frac >= COVER * z:
            return block_name(r, c)
    if info.nm_2_4 is not None and info.nm_2_4 >= 0.999 and z >= 0.45:
        return "2:4"
    return "unstructured"


def head_zero_mask(w_kn: np.ndarray, heads: int, axis: int) -> np.ndarray:
    """``[heads]`` booleans: True where head ``h``'s slice (``head_dim`` outputs when ``axis=1``,
    inputs when ``axis=0``) is all zero."""
    size = w_kn.shape[axis]
    if size % heads:
        raise ValueError(f"{size} is not a multiple of {heads} heads")
    nz = w_kn != 0
    d = size // heads
    if axis == 1:
        return ~nz.reshape(w_kn.shape[0], heads, d).any(axis=(0, 2))
    return ~nz.reshape(heads, d, w_kn.shape[1]).any(axis=(1, 2))

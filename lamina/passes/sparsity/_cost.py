"""The sparse-vs-dense cost model: per-token kernel times fitted to timings measured on the target.

A calibration table (JSON, measured once per target by
``lamina.backends.tvm.kernels.sparse_calibrate`` and cached beside the tuning records as
``<db>/<target key>/sparse_costs_v2.json``) holds::

    {"target": "...", "tokens": 128,
     "dense":  {"ns_per_mac": c},                    # dense kernel, cold weights: t = c * K * N
     "sparse": {"4": {"ns_per_block": a, "ns_per_dim": o}, "1": {...}}}
                                                     # block-sparse, R outputs a block:
                                                     # t = a * stored_blocks + o * (K + N)

all per token (the kernels' times grow linearly with the tokens M). :func:`predict` evaluates both
for a weight from its block counts (``_analysis.block_mask``), for every block width the table has,
and returns the fastest choice; ``encode-sparsity`` rewrites a matmul when the predicted gain clears
``min_gain``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lamina.passes.sparsity._analysis import block_mask

# Versioned with the sparse kernels: a table measured on older kernels is measured again (v2: the
# unstructured R = 1 kernel stages its output columns; it was 3-4x slower before).
COSTS_FILE = "sparse_costs_v2.json"


@dataclass(frozen=True)
class Prediction:
    dense_ns: float          # per token
    sparse_ns: float         # per token, best block width
    block: int               # the best block width R (outputs per block)
    stored_blocks: int
    density: float           # stored blocks / all blocks at that width

    @property
    def gain(self) -> float:
        return self.dense_ns / self.sparse_ns if self.sparse_ns > 0 else float("inf")


@dataclass(frozen=True)
class CostTable:
    target: str
    dense_ns_per_mac: float
    sparse: dict[int, tuple[float, float]]   # R -> (ns per stored block, ns per (K + N))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostTable:
        sparse = {
            int(r): (float(v["ns_per_block"]), float(v["ns_per_dim"]))
            for r, v in d["sparse"].items()
        }
        return cls(str(d.get("target", "")), float(d["dense"]["ns_per_mac"]), sparse)

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        return _load(cls, path, "sparsity cost table")

    def predict(self, w_kn: np.ndarray) -> Prediction:
        """Dense and best block-sparse per-token time for ``W[K, N]``."""
        k, n = w_kn.shape
        dense = self.dense_ns_per_mac * k * n
        cands: list[Prediction] = []
        for r, (per_block, per_dim) in sorted(self.sparse.items()):
            mask = block_mask(w_kn, r, 1)
            if mask is None:
                continue
            stored = int(mask.sum())
            t = per_block * stored + per_dim * (k + n)
            cands.append(Prediction(dense, t, r, stored, stored / max(1, mask.size)))
        # A weight whose zeros already come in wide blocks (its wide-block density at most 1.25x
        # the narrow one's) runs the wide kernel: the narrow one would only load each input row
        # R times as often, which the linear model (fitted on K = 768) underrates for large K or
        # small N (measured: 1536 x 384 at 4x1 90%, R = 4 2.7x dense, R = 1 1.5x).
        wide = [c for c in cands
                if not any(o.block > c.block and o.density <= 1.25 * c.density for o in cands)]
        best = min(wide or cands, key=lambda c: c.sparse_ns) if cands else None
        if best is None:
            return Prediction(dense, float("inf"), 0, 0, 1.0)
        return best


def _load(cls: Any, path: str | Path, what: str) -> Any:
    """``cls.from_dict`` of the JSON at ``path``; one ``ValueError`` line when it is unreadable."""
    try:
        return cls.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{what} {path}: unreadable ({exc})") from None


def fit(
    dense_samples: list[tuple[int, int, float]],
    sparse_samples: dict[int, list[tuple[int, int, int, float]]],
    target: str,
    tokens: int,
) -> dict[str, Any]:
    """A table from measurements: dense ``(K, N, ns per token)``; sparse per R
    ``(K, N, stored blocks, ns per token)`` (least squares of ``a * blocks + o * (K + N)``)."""
    c = float(np.mean([t / (k * n) for k, n, t in dense_samples]))
    sparse = {}
    for r, rows in sparse_samples.items():
        a = np.array([[b, k + n] for k, n, b, _ in rows], np.float64)
        y = np.array([t for *_, t in rows], np.float64)
        (per_block, per_dim), *_ = np.linalg.lstsq(a, y, rcond=None)
        sparse[str(r)] = {
            "ns_per_block": max(float(per_block), 1e-6),
            "ns_per_dim": max(float(per_dim), 0.0),
        }
    return {"target": target, "tokens": tokens, "dense": {"ns_per_mac": c}, "sparse": sparse}


# The block-sparse INT8 kernel's table (``<db>/<target key>/sparse_int8_costs_v1.json``, measured by
# ``sparse_calibrate.calibrate_int8`` on VNNI targets the first time a pruned INT8 layer is
# lowered)::
#
#     {"target": "...", "tokens": 128,
#      "dense":  {"ns_per_mac": c},                   # dense INT8 kernel: t = c * K * N
#      "sparse": {"ns_per_block": a, "ns_per_col": o}} # block-sparse: t = a * blocks + o * N
#
# per token; ``blocks`` counts the 4x1 blocks the kernel multiplies (quad padding included), ``N``
# the outputs, whose dequantization, epilogue and transposed store the sparse kernel pays whatever
# the density.
INT8_COSTS_FILE = "sparse_int8_costs_v1.json"
# The table used where the host cannot run the target's kernels (a cross-compile): measured on AMD
# Zen5 (AVX-512 VNNI, 2 threads) by ``calibrate_int8``.
SHIPPED_INT8_COSTS = Path(__file__).with_name("default_int8_costs.json")


@dataclass(frozen=True)
class Int8CostTable:
    target: str
    dense_ns_per_mac: float
    ns_per_block: float
    ns_per_col: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Int8CostTable:
        return cls(str(d.get("target", "")), float(d["dense"]["ns_per_mac"]),
                   float(d["sparse"]["ns_per_block"]), float(d["sparse"]["ns_per_col"]))

    @classmethod
    def load(cls, path: str | Path) -> Int8CostTable:
        return _load(cls, path, "sparse INT8 cost table")

    def predict(self, k: int, n: int, blocks: int) -> Prediction:
        """Dense and block-sparse per-token time of an INT8 ``[K, N]`` layer whose sparse encoding
        multiplies ``blocks`` 4x1 blocks."""
        dense = self.dense_ns_per_mac * k * n
        sparse = self.ns_per_block * blocks + self.ns_per_col * n
        return Prediction(dense, sparse, 4, blocks, blocks / max(1, k * (n // 4)))


def fit_int8(dense_samples: list[tuple[int, int, float]],
             sparse_samples: list[tuple[int, int, int, float]], target: str,
             tokens: int) -> dict[str, Any]:
    """:class:`Int8CostTable` from measurements: dense ``(K, N, ns per token)``, sparse
    ``(K, N, blocks, ns per token)`` (least squares of ``a * blocks + o * N`` in relative error:
    the decision is a ratio, and the small layers' times matter as much as the large ones')."""
    c = float(np.mean([t / (k * n) for k, n, t in dense_samples]))
    a = np.array([[b, n] for _, n, b, _ in sparse_samples], np.float64)
    y = np.array([t for *_, t in sparse_samples], np.float64)
    (per_block, per_col), *_ = np.linalg.lstsq(a / y[:, None], np.ones_like(y), rcond=None)
    return {"target": target, "tokens": tokens, "dense": {"ns_per_mac": c},
            "sparse": {"ns_per_block": max(float(per_block), 1e-6),
                       "ns_per_col": max(float(per_col), 0.0)}}

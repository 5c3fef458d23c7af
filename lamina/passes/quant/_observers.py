"""Range observers for activation calibration: min-max, percentile, entropy (KL) and MSE-optimal.

An observer sees every calibration batch of one tensor and returns the range ``(lo, hi)`` to
quantize to. Min-max needs one sweep over the data. The histogram methods need two: the first finds
the min and max, the second fills a fixed histogram over that range (``HIST_BINS`` bins); the range
is then chosen on the histogram:

- ``percentile``: the ``p``-th and ``(100 - p)``-th percentiles (``p`` = 99.999 by default);
- ``entropy``: TensorRT's KL-divergence threshold search on the histogram of ``|x|`` (symmetric
  threshold ``T``,
  range ``[max(min, -T), min(max, T)]``), 128 quantization levels per side;
- ``mse``: the range, among ``[min, max]`` shrunk towards zero in 1% steps on each side, that
  minimises the
  expected squared quantization error (rounding inside the range, clipping outside) under the
  histogram.
"""

from __future__ import annotations

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")
HIST_BINS = 2048


class Observer:
    """Accumulates statistics of one tensor; ``needs_histogram`` says whether a second sweep is
    needed."""

    def __init__(self, method: str, percentile: float = 99.999, levels: int = 256) -> None:
        if method not in METHODS:
            raise ValueError(
                f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}"
            )
        self.method = method
        self.percentile = percentile
        self.levels = levels
        self.lo = np.inf
        self.hi = -np.inf
        self.hist: np.ndarray | None = None
        self.abs_hist: np.ndarray | None = None

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def observe_range(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def observe_histogram(self, x: np.ndarray) -> None:
        if not x.size or not np.isfinite(self.lo):
            return
        lo, hi = self.lo, self.hi if self.hi > self.lo else self.lo + 1e-6
        h, _ = np.histogram(x, bins=HIST_BINS, range=(lo, hi))
        self.hist = h if self.hist is None else self.hist + h
        amax = max(abs(lo), abs(hi))
        ah, _ = np.histogram(np.abs(x), bins=HIST_BINS, range=(0.0, amax if amax > 0 else 1e-6))
        self.abs_hist = ah if self.abs_hist is None else self.abs_hist + ah

    def range(self) -> tuple[float, float]:
        if not np.isfinite(self.lo):
            return 0.0, 0.0
        if self.method == "minmax" or self.hist is None or self.hi <= self.lo:
            return self.lo, self.hi
        if self.method == "percentile":
            return self._percentile()
        if self.method == "entropy":
            return self._entropy()
        return self._mse()

    def _edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, HIST_BINS + 1)

    def _percentile(self) -> tuple[float, float]:
        cdf = np.cumsum(self.hist) / max(1, self.hist.sum())
        edges = self._edges()
        q = 1.0 - self.percentile / 100.0
        lo_i = int(np.searchsorted(cdf, q))
        hi_i = int(np.searchsorted(cdf, 1.0 - q))
        return float(edges[min(lo_i, HIST_BINS)]), float(edges[min(hi_i + 1, HIST_BINS)])

    def _entropy(self) -> tuple[float, float]:
        hist = self.abs_hist.astype(np.float64)
        amax = max(abs(self.lo), abs(self.hi))
        width = amax / HIST_BINS
        half = self.levels // 2
        best_kl, best_i = np.inf, HIST_BINS
        for i in range(half, HIST_BINS + 1, 16):
            ref = hist[:i].copy()
            ref[i - 1] += hist[i:].sum()
            if ref.sum() == 0:
                continue
            # Merge i bins into `half` levels, expand back over the non-empty bins.
            chunks = np.array_split(hist[:i], half)
            cand = np.concatenate(
                [np.where(c > 0, c.sum() / max(1, np.count_nonzero(c)), 0.0) for c in chunks]
            )
            p = ref / ref.sum()
            q = cand / max(cand.sum(), 1e-12)
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best_kl, best_i = kl, i
        t = best_i * width
        return max(self.lo, -t), min(self.hi, t)

    def _mse(self) -> tuple[float, float]:
        edges = self._edges()
        centers = (edges[:-1] + edges[1:]) / 2
        counts = self.hist.astype(np.float64)
        best, best_err = (self.lo, self.hi), np.inf
        steps = np.linspace(1.0, 0.3, 71)
        for s_lo in steps:
            for s_hi in steps:
                lo, hi = min(self.lo * s_lo, 0.0), max(self.hi * s_hi, 0.0)
                scale = (hi - lo) / (self.levels - 1)
                if scale <= 0:
                    continue
                q = np.clip(np.round((centers - lo) / scale), 0, self.levels - 1) * scale + lo
                err = float(np.sum(counts * (centers - q) ** 2))
                if err < best_err:
                    best, best_err = (lo, hi), err
        return best

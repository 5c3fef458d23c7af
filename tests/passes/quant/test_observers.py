"""Range observers: min-max, percentile, entropy (KL), MSE."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.passes.quant._observers import Observer


def _observe(method: str, x: np.ndarray) -> tuple[float, float]:
    obs = Observer(method)
    for part in np.array_split(x, 4):
        obs.observe_range(part)
    if obs.needs_histogram:
        for part in np.array_split(x, 4):
            obs.observe_histogram(part)
    return obs.range()


def test_minmax_is_exact() -> None:
    x = np.random.default_rng(0).normal(0, 1, 10_000).astype(np.float32)
    assert _observe("minmax", x) == (float(x.min()), float(x.max()))


@pytest.mark.parametrize(
    ("method", "bound"), [("percentile", 30.0), ("entropy", 30.0), ("mse", 50.0)]
)
def test_histogram_methods_clip_a_rare_outlier(method: str, bound: float) -> None:
    x = np.random.default_rng(0).normal(0, 1, 200_000).astype(np.float32)
    x[0] = 60.0  # one outlier: min-max would spend most of the levels on it
    lo, hi = _observe(method, x)
    # MSE weighs the one clipped value against 200,000 rounding errors: it clips less than the
    # others.
    assert hi < bound, (method, lo, hi)
    assert lo <= -2.5 and hi >= 2.5, (method, lo, hi)  # the bulk stays in range


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown calibration method"):
        Observer("kl")

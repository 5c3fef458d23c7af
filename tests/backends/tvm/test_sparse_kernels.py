"""The block-sparse fp32 kernel against numpy on random patterns (no timing)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lamina.backends.tvm.kernels import host_supports, host_target, isa_of, standalone_module
from lamina.backends.tvm.kernels.sparse_dense import (
    encode_blocks,
    sparse_dense_kernel,
    sparse_dense_reference,
)

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)


def _target(isa: str) -> tvm.target.Target:
    if not host_supports(isa):
        pytest.skip(f"host CPU cannot run {isa} code (host ISA: {isa_of(host_target())})")
    return host_target(2, isa)


def _weight(kind: str, K: int, N: int, R: int) -> np.ndarray:
    w = RNG.normal(size=(K, N)).astype(np.float32)
    if kind == "blocks":      # 80% of the R x 1 blocks empty
        keep = RNG.random((K, N // R)) < 0.2
        w *= np.repeat(keep, R, axis=1)
    elif kind == "unstructured":   # zeros inside stored blocks too
        w *= RNG.random((K, N)) < 0.3
    elif kind == "empty_rows":     # whole output groups (and input rows) without a block
        w *= RNG.random((K, N)) < 0.5
        w[:, : 2 * R] = 0
        w[3:9] = 0
    elif kind == "empty":
        w[:] = 0
    return w


def _check(M: int, w: np.ndarray, R: int, target, *, epilogue=None, residual=False,
           config=None) -> None:
    sw = encode_blocks(w, R)
    np.testing.assert_array_equal(sw.to_dense(), w)
    K, N = w.shape
    x = RNG.normal(size=(M, K)).astype(np.float32)
    b = RNG.normal(size=N).astype(np.float32)
    r = RNG.normal(size=(M, N)).astype(np.float32) if residual else None
    func = sparse_dense_kernel(M, sw, epilogue=epilogue, residual=residual, target=target,
                               config=config)
    ex = tvm.compile(standalone_module(func), target)
    args = (
        [x, sw.indptr, sw.kidx, sw.data, b]
        + ([r] if residual else [])
        + [np.zeros((M, N), np.float32)]
    )
    tens = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    ex.mod["main"](*tens)
    ref = sparse_dense_reference(x, sw, b, epilogue, r)
    np.testing.assert_allclose(tens[-1].numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("kind", ["blocks", "unstructured", "empty_rows", "dense", "empty"])
def test_patterns(isa: str, kind: str) -> None:
    target = _target(isa)
    for R in (1, 4):
        _check(32, _weight(kind, 48, 64, R), R, target)


@pytest.mark.parametrize(
    "epilogue,residual", [("gelu_erf", False), (None, True), ("gelu_tanh", True)]
)
def test_epilogues(epilogue, residual) -> None:
    target = host_target(2)
    _check(128, _weight("blocks", 64, 96, 4), 4, target, epilogue=epilogue, residual=residual)


@pytest.mark.parametrize("M", [1, 12, 40])
def test_odd_token_counts(M: int) -> None:
    _check(M, _weight("blocks", 32, 32, 4), 4, host_target(2), epilogue="gelu_erf")


def test_encode_rejects_bad_width() -> None:
    with pytest.raises(ValueError):
        encode_blocks(np.ones((4, 6), np.float32), 4)


@pytest.mark.parametrize("epilogue,residual", [("gelu_erf", False), (None, True)])
def test_unstructured_staged_store(epilogue, residual) -> None:
    """R = 1 with whole stages of output groups (written SG contiguous floats per token)."""
    target = host_target(2)
    _check(128, _weight("unstructured", 96, 384, 1), 1, target, epilogue=epilogue,
           residual=residual)


def test_every_candidate_tile_matches_numpy() -> None:
    """The tiles the search may pick (token tiles, task splits) all compute the same result."""
    from lamina.backends.tvm.kernels.sparse_dense import candidate_sparse_configs

    target = _target("avx512") if host_supports("avx512") else _target("avx2")
    for R, kind in ((4, "blocks"), (1, "unstructured")):
        w = _weight(kind, 48, 128, R)
        configs = candidate_sparse_configs(64, 128 // R, R, target)
        assert len(configs) > 2 and len(set(configs)) == len(configs)
        for cfg in configs:
            _check(64, w, R, target, epilogue="gelu_erf", residual=True, config=cfg)

"""The block-sparse INT8 kernel (AVX-512 VNNI) against numpy: exact int32 sums, epilogues, residual,
empty groups, a fully dense weight; the quad encoding round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tvm

from lamina.backends.tvm.kernels import host_supports, target_for
from lamina.backends.tvm.kernels.common import epilogue_reference, standalone_module
from lamina.backends.tvm.kernels.sparse_int8 import encode_int8_blocks, sparse_int8_kernel


def _pruned(K: int, N: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (K, N)).astype(np.int8)
    keep = rng.random((K, N // 4)) < density
    keep[:, :4] = False  # some all-empty output groups
    return (w.reshape(K, N // 4, 4) * keep[:, :, None]).reshape(K, N).astype(np.int8)


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_encoding_round_trips(density):
    w = _pruned(40, 64, density, 1)
    sw = encode_int8_blocks(w)
    np.testing.assert_array_equal(sw.to_dense(), w)
    assert (np.diff(sw.qptr) >= 1).all()  # every group has at least one (zero) quad
    np.testing.assert_array_equal(sw.colsum, w.astype(np.int32).sum(axis=0))


@pytest.mark.parametrize("M, K, N, density, epilogue, residual", [
    (64, 40, 64, 0.1, None, False),
    (128, 96, 128, 0.3, "gelu_erf", False),
    (64, 33, 64, 1.0, None, True),
    (64, 48, 192, 0.05, "relu", True),
])
def test_sparse_int8_kernel_matches_numpy(M, K, N, density, epilogue, residual):
    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    target = target_for("vnni", 2)
    rng = np.random.default_rng(2)
    w = _pruned(K, N, density, 3)
    sw = encode_int8_blocks(w)
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    ws = (rng.random(N) * 0.01 + 0.001).astype(np.float32)
    qp = np.array([0.02, 9], np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    res = rng.standard_normal((M, N)).astype(np.float32)
    func = sparse_int8_kernel(M, sw, target=target, epilogue=epilogue, residual=residual)
    lib = tvm.compile(standalone_module(func), target=target)
    dev = tvm.cpu()
    arrays = [np.ascontiguousarray(x.T), sw.qptr, sw.qk, sw.qw, sw.colsum, ws, qp, b]
    if residual:
        arrays.append(res)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in arrays), y)
    acc = x.astype(np.int64) @ w.astype(np.int64) - 9 * sw.colsum.astype(np.int64)
    ref = epilogue_reference(acc.astype(np.float32) * (np.float32(0.02) * ws) + b, epilogue)
    if residual:
        ref = ref + res
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("signed", [False, True])
def test_sparse_int8_kernel_quantizes_transposed_for_the_next_sparse_layer(signed):
    """``quant_out``: the u8 the next block-sparse layer reads, ``YT[N, M]``, exactly the
    quantization of the kernel's own float result, in token order."""
    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    target = target_for("vnni", 2)
    M, K, N = 128, 48, 64
    rng = np.random.default_rng(4)
    sw = encode_int8_blocks(_pruned(K, N, 0.2, 5))
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    ws = (rng.random(N) * 0.01 + 0.001).astype(np.float32)
    qp = np.array([0.02, 9], np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    s = (rng.random(N) * 20 + 5).astype(np.float32)
    zp = -3.0 if signed else 100.0
    qo = np.array([0.05, zp], np.float32)
    dev = tvm.cpu()
    common = [np.ascontiguousarray(x.T), sw.qptr, sw.qk, sw.qw, sw.colsum, ws, qp, b]
    fy = tvm.compile(standalone_module(sparse_int8_kernel(M, sw, target=target,
                                                          epilogue="gelu_erf")), target=target)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    fy["main"](*(tvm.runtime.tensor(a, dev) for a in common), y)
    fq = tvm.compile(standalone_module(sparse_int8_kernel(
        M, sw, target=target, epilogue="gelu_erf", quant_out=True, out_signed=signed)),
        target=target)
    yt = tvm.runtime.tensor(np.zeros((N, M), np.uint8), dev)
    fq["main"](*(tvm.runtime.tensor(a, dev) for a in [*common, s, qo]), yt)
    lo, hi = (-128, 127) if signed else (0, 255)
    want = np.clip(np.rint(y.numpy() * s) + zp, lo, hi) + (128 if signed else 0)
    np.testing.assert_array_equal(yt.numpy(), want.astype(np.uint8).T)


def test_sparse_int8_kernel_refuses_untiled_shapes():
    sw = encode_int8_blocks(_pruned(16, 64, 0.5, 0))
    with pytest.raises(ValueError, match="64-token tile"):
        sparse_int8_kernel(32, sw, target=target_for("vnni", 2))
    with pytest.raises(ValueError, match="multiple of 64"):
        sparse_int8_kernel(64, encode_int8_blocks(_pruned(16, 32, 0.5, 0)),
                           target=target_for("vnni", 2))


def test_int8_cost_model_fits_and_predicts():
    from lamina.passes.sparsity._cost import Int8CostTable, fit_int8

    # Times made by a known model: the fit recovers it, and the prediction follows the blocks.
    a, o, c = 0.006, 0.15, 0.0013
    sparse = [(k, n, b, a * b + o * n) for k, n in ((384, 1536), (1536, 384))
              for b in (5000, 20000, 60000)]
    dense = [(k, n, c * k * n) for k, n in ((384, 1536), (1536, 384))]
    table = Int8CostTable.from_dict(fit_int8(dense, sparse, "t", 128))
    assert table.ns_per_block == pytest.approx(a) and table.ns_per_col == pytest.approx(o)
    few, many = table.predict(384, 1536, 8000), table.predict(384, 1536, 140000)
    assert few.gain > 1.5 > 1 > many.gain
    assert few.dense_ns == pytest.approx(c * 384 * 1536)


def test_int8_cost_table_is_measured_once_per_database(tmp_path, monkeypatch):
    import lamina.backends.tvm.kernels.sparse_calibrate as cal
    from lamina.passes.sparsity._cost import SHIPPED_INT8_COSTS, Int8CostTable

    calls = []
    shipped = json.loads(SHIPPED_INT8_COSTS.read_text())
    monkeypatch.setattr(cal, "calibrate_int8", lambda t: calls.append(t) or shipped)
    target = target_for("vnni", 2)
    first = cal.int8_cost_table(target, tmp_path)
    second = cal.int8_cost_table(target, tmp_path)
    assert first == second and first.is_file() and len(calls) == 1
    assert Int8CostTable.load(first) == Int8CostTable.from_dict(shipped)


def test_int8_calibration_measures_both_kernels():
    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    from lamina.backends.tvm.kernels.sparse_calibrate import INT8_DENSITIES, calibrate_int8
    from lamina.passes.sparsity._cost import Int8CostTable

    table = calibrate_int8(target_for("vnni", 2), rounds=1, shapes=((128, 256), (256, 128)))
    assert len(table["measured"]["dense"]) == 2
    assert len(table["measured"]["sparse"]) == 2 * len(INT8_DENSITIES)
    assert all(t > 0 for *_, t in table["measured"]["sparse"])
    Int8CostTable.from_dict(table)  # a loadable table


def test_cross_compile_decides_from_the_shipped_table(monkeypatch, caplog):
    import logging

    import lamina.backends.tvm.target as tgt
    from lamina.backends.tvm.api import _int8_sparse_policy
    from lamina.backends.tvm.target import resolve_target
    from lamina.passes.sparsity._cost import SHIPPED_INT8_COSTS, Int8CostTable

    monkeypatch.setattr(tgt, "host_features", lambda: frozenset({"avx2", "fma"}))
    policy = _int8_sparse_policy(True, resolve_target("x86-avx512-vnni", 2), Path("/nonexistent"))
    with caplog.at_level(logging.WARNING):
        assert policy.costs() == Int8CostTable.load(SHIPPED_INT8_COSTS)
    assert "cannot measure" in caplog.text
    assert _int8_sparse_policy(False, resolve_target("x86-avx512-vnni", 2), Path(".")) is None


def test_every_task_split_matches_numpy():
    """Each task split the tile search may pick gives the same integers; others are refused."""
    from lamina.backends.tvm.kernels.sparse_int8 import candidate_chunks, default_chunks

    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    target = target_for("vnni", 2)
    M, K, N = 128, 40, 256
    w = _pruned(K, N, 0.2, 5)
    sw = encode_int8_blocks(w)
    splits = candidate_chunks(M, N, target)
    assert splits[0] == default_chunks(M, N, target) and len(splits) > 1
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (M, K)).astype(np.uint8)
    args = [np.ascontiguousarray(x.T), sw.qptr, sw.qk, sw.qw, sw.colsum,
            np.full(N, 0.01, np.float32), np.array([0.02, 3], np.float32), np.zeros(N, np.float32)]
    want = ((x.astype(np.int64) @ w.astype(np.int64) - 3 * sw.colsum.astype(np.int64))
            .astype(np.float32) * np.float32(0.02 * 0.01))
    dev = tvm.cpu()
    for chunks in splits:
        lib = tvm.compile(standalone_module(sparse_int8_kernel(M, sw, target=target,
                                                               chunks=chunks)), target=target)
        y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
        lib["main"](*(tvm.runtime.tensor(a, dev) for a in args), y)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chunks=3"):
        sparse_int8_kernel(M, sw, target=target, chunks=3)

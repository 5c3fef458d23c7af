"""INT8 dense kernels per ISA family: bit-exact int32 accumulators against numpy, the dequantizing
epilogue, the quantize and dynamic-parameter kernels."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lamina.backends.tvm.kernels import host_supports, target_for  # noqa: E402
from lamina.backends.tvm.kernels.common import standalone_module  # noqa: E402
from lamina.backends.tvm.kernels.dense_amx import amx_dense_int8_kernel  # noqa: E402
from lamina.backends.tvm.kernels.dense_int8 import (  # noqa: E402
    Int8Config,
    candidate_int8_configs,
    column_sums,
    dense_int8_float_reference,
    dense_int8_kernel,
    dense_int8_reference,
    lanes32,
    pack_weight_int8,
    padded_k,
    reduce_range,
    resolve_int8_config,
)
from lamina.backends.tvm.kernels.quantize import (  # noqa: E402
    dynamic_qparams_kernel,
    quantize_kernel,
    quantize_reference,
)

pytestmark = pytest.mark.tvm


def _target(fam: str):
    if not host_supports(fam):
        pytest.skip(f"host CPU cannot run {fam} code")
    return target_for(fam, 2)


def _run(func, arrays, out_shape, out_dtype, target) -> np.ndarray:
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    ex.mod["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], out)
    return out.numpy()


def _operands(M, K, N, seed=0, avx2=False):
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, (M, K), dtype=np.uint8)
    # Extreme values on purpose: 255 x +-127 pairs are where vpmaddubsw saturates.
    wq = rng.integers(-127, 128, (K, N), dtype=np.int8)
    wq[:4] = 127
    xq[:, :4] = 255
    if avx2:
        wq, _ = reduce_range(wq, np.ones(N, np.float32))
    return xq, wq


def _pad(xq: np.ndarray) -> np.ndarray:
    M, K = xq.shape
    return np.concatenate([xq, np.zeros((M, padded_k(K) - K), np.uint8)], axis=1)


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
@pytest.mark.parametrize("M, K, N, tile", [(16, 64, 64, None), (24, 30, 48, (4, 2)),
                                           (7, 128, 32, (8, 1)), (128, 384, 96, (6, 3)),
                                           (256, 64, 96, None), (256, 32, 64, (4, 2, 64)),
                                           (24, 64, 128, (3, 8))])
def test_int8_accumulators_bit_exact(fam, M, K, N, tile):
    target = _target(fam)
    cfg = resolve_int8_config(M, K, N, target, Int8Config(*tile) if tile else None)
    xq, wq = _operands(M, K, N, avx2=fam == "avx2")
    func = dense_int8_kernel(M, K, N, target=target, config=cfg, raw=True)
    wp = pack_weight_int8(wq, cfg.nv * lanes32(fam))
    got = _run(func, [_pad(xq), wp], (M, N), np.int32, target)
    np.testing.assert_array_equal(got, dense_int8_reference(xq, wq))


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
def test_every_candidate_tile_is_exact(fam):
    target = _target(fam)
    M, K, N = 24, 40, 96
    xq, wq = _operands(M, K, N, seed=3, avx2=fam == "avx2")
    ref = dense_int8_reference(xq, wq)
    for cfg in candidate_int8_configs(M, K, N, target):
        wp = pack_weight_int8(wq, cfg.nv * lanes32(fam))
        func = dense_int8_kernel(M, K, N, target=target, config=cfg, raw=True)
        np.testing.assert_array_equal(_run(func, [_pad(xq), wp], (M, N), np.int32, target), ref,
                                      err_msg=cfg.key())


def test_avx2_without_reduce_range_would_saturate():
    """Why the AVX2 family needs 7-bit weights: full int8 weights give wrong sums."""
    target = _target("avx2")
    M, K, N = 8, 16, 16
    xq = np.full((M, K), 255, np.uint8)
    wq = np.full((K, N), 127, np.int8)
    cfg = resolve_int8_config(M, K, N, target)
    got = _run(dense_int8_kernel(M, K, N, target=target, config=cfg, raw=True),
               [xq, pack_weight_int8(wq, cfg.nv * 8)], (M, N), np.int32, target)
    assert (got != dense_int8_reference(xq, wq)).all()


@pytest.mark.parametrize("epilogue, bias, residual", [(None, True, False), ("gelu_erf", True, True),
                                                      (None, False, True)])
def test_int8_dequantizing_epilogue(epilogue, bias, residual):
    target = _target("vnni")
    M, K, N = 32, 64, 64
    xq, wq = _operands(M, K, N, seed=1)
    rng = np.random.default_rng(2)
    ws = rng.uniform(0.001, 0.01, N).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    xs, zp = 0.02, 131
    cfg = resolve_int8_config(M, K, N, target)
    func = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=bias, epilogue=epilogue,
                             residual=residual)
    args = [xq, pack_weight_int8(wq, cfg.nv * 16), column_sums(wq), ws,
            np.array([xs, zp], np.float32)] + ([b] if bias else []) + ([r] if residual else [])
    got = _run(func, args, (M, N), np.float32, target)
    ref = dense_int8_float_reference(xq, wq, zp, xs, ws, b if bias else None, epilogue,
                                     r if residual else None)
    # GELU is the table (common.gelu_table): within 1.3e-4 of the exact one.
    atol = 1.5e-4 if epilogue == "gelu_erf" else 1e-5
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
@pytest.mark.parametrize("smooth, signed", [(True, False), (False, True)])
def test_int8_epilogue_quantizes_for_the_next_kernel(fam, smooth, signed):
    """``quant_out``: the consumer's QuantizeLinear (after smooth-quant's Mul) in the epilogue."""
    target = _target(fam)
    M, K, N = 32, 64, 64
    xq, wq = _operands(M, K, N, seed=3, avx2=fam == "avx2")
    rng = np.random.default_rng(6)
    ws = rng.uniform(0.001, 0.01, N).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    s = rng.uniform(0.5, 2.0, N).astype(np.float32)
    xs, zp, out_scale, out_zp = 0.02, 131, 0.03, (0 if signed else 40)
    cfg = resolve_int8_config(M, K, N, target)
    func = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, epilogue="gelu_erf",
                             quant_out=True, out_signed=signed)
    if not smooth:
        s[:] = 1
    args = [xq, pack_weight_int8(wq, cfg.nv * lanes32(fam)), column_sums(wq), ws,
            np.array([xs, zp], np.float32), b, (s / np.float32(out_scale)).astype(np.float32),
            np.array([out_scale, out_zp], np.float32)]
    got = _run(func, args, (M, N), np.uint8, target)
    y = dense_int8_float_reference(xq, wq, zp, xs, ws, b, "gelu_erf")
    want = quantize_reference(y * s, out_scale, out_zp, signed)
    # Float rounding of the epilogue may move a value across a rounding boundary: one step.
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
@pytest.mark.parametrize("quant, signed", [(False, False), (True, False), (True, True)])
def test_fused_layer_norm_is_the_layer_norm_kernel_on_the_output(fam, quant, signed):
    """``layer_norm``: the rows normalised (and quantized) inside the dense kernel, by each row
    block's core, are byte for byte the separate LayerNorm kernel's on the dense output."""
    from lamina.backends.tvm.kernels.dense_int8 import FusedLayerNorm, layer_norm_fusable
    from lamina.backends.tvm.kernels.layernorm import layer_norm_kernel

    target = _target(fam)
    M, K, N = 128, 64, 64  # two row blocks of 64: one for each of the target's two threads
    assert layer_norm_fusable(M, K, N, target)
    assert not layer_norm_fusable(32, K, N, target)  # one block: the LayerNorm would run serially
    xq, wq = _operands(M, K, N, seed=5, avx2=fam == "avx2")
    rng = np.random.default_rng(8)
    ws = rng.uniform(0.001, 0.01, N).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, N).astype(np.float32)
    beta = (0.1 * rng.standard_normal(N)).astype(np.float32)
    s = rng.uniform(40, 80, N).astype(np.float32)
    qo = np.array([0.05, 0 if signed else 128], np.float32)
    cfg = resolve_int8_config(M, K, N, target)
    args = [xq, pack_weight_int8(wq, cfg.nv * lanes32(fam)), column_sums(wq), ws,
            np.array([0.02, 131], np.float32), b, r]
    y = _run(dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, residual=True),
             args, (M, N), np.float32, target)
    ln = layer_norm_kernel(M, N, 1e-12, target, quant_out=quant, out_signed=signed)
    fused = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, residual=True,
                              layer_norm=FusedLayerNorm(1e-12, quant, signed))
    extra = [s, qo] if quant else []
    outs = [(M, N, np.float32)] + ([(M, N, np.uint8)] if quant else [])
    want = _run_outputs(ln, [y, g, beta, *extra], outs, target)
    got = _run_outputs(fused, [*args, g, beta, *extra], outs, target)
    for a, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, w)
    if quant:  # saturation at both ends is exercised
        assert (want[1] == 0).any() and (want[1] == 255).any()


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
def test_sectioned_panel_order_computes_the_same_output(fam):
    """``sections``: thread t computing the t-th slice of each section (a QKV projection's heads)
    only reorders the tasks; where the panels do not split so, ``sections_fit`` says no."""
    from lamina.backends.tvm.kernels.dense_int8 import sections_fit

    target = _target(fam)
    M, K, N = 32, 64, 192
    cfg = sections_fit(M, K, N, target, 3, 6, Int8Config(4, 2 if fam == "vnni" else 4))
    assert cfg is not None and cfg.mc == M and N // (cfg.nv * lanes32(fam)) == 6
    assert sections_fit(M, K, N, target, 3, 3, cfg) is None  # 3 heads do not split in 2
    assert sections_fit(M, K, N, target, 3, 6, Int8Config(4, 6 if fam == "vnni" else 12)) is None
    xq, wq = _operands(M, K, N, seed=7, avx2=fam == "avx2")
    rng = np.random.default_rng(9)
    args = [xq, pack_weight_int8(wq, cfg.nv * lanes32(fam)), column_sums(wq),
            rng.uniform(0.001, 0.01, N).astype(np.float32), np.array([0.02, 131], np.float32),
            rng.standard_normal(N).astype(np.float32)]
    plain = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True)
    sectioned = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, sections=3)
    np.testing.assert_array_equal(_run(sectioned, args, (M, N), np.float32, target),
                                  _run(plain, args, (M, N), np.float32, target))


def _run_outputs(func, arrays, outs, target) -> list[np.ndarray]:
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    res = [tvm.runtime.tensor(np.zeros((m, n), dt), dev) for m, n, dt in outs]
    ex.mod["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays], *res)
    return [o.numpy() for o in res]


@pytest.mark.parametrize("signed", [False, True])
def test_quantize_kernel_matches_onnx_rounding(signed):
    target = _target("avx2")
    M, K = 6, 30
    rng = np.random.default_rng(4)
    scale = np.float32(0.05)
    x = (rng.standard_normal((M, K)) * 4).astype(np.float32)
    x[0, :6] = np.array([0.025, 0.075, -0.025, 100.0, -100.0, 0.125], np.float32)  # ties, clamp
    zp = 0 if signed else 128
    got = _run(quantize_kernel(M, K, signed=signed, target=target),
               [x, np.array([scale, zp], np.float32)], (M, padded_k(K)), np.uint8, target)
    np.testing.assert_array_equal(got[:, :K], quantize_reference(x, scale, zp, signed))
    assert (got[:, K:] == 0).all()


@pytest.mark.parametrize("signed, smooth", [(False, False), (True, False), (False, True)])
def test_transposed_quantize_kernel_is_the_quantize_kernel_transposed(signed, smooth):
    """The block-sparse INT8 kernel's input: ``XT[K, M]``, byte for byte the transpose of the
    row-major quantization (ONNX rounding; smooth-quant's multiply first)."""
    from lamina.backends.tvm.kernels.quantize import quantize_transposed_kernel

    target = _target("avx2")
    M, K = 48, 32
    rng = np.random.default_rng(6)
    scale = np.float32(0.05)
    x = (rng.standard_normal((M, K)) * 4).astype(np.float32)
    x[0, :6] = np.array([0.025, 0.075, -0.025, 100.0, -100.0, 0.125], np.float32)
    s = rng.uniform(0.5, 2.0, K).astype(np.float32)
    zp = 0 if signed else 128
    qp = np.array([scale, zp], np.float32)
    func = quantize_transposed_kernel(M, K, signed=signed, smooth=smooth)
    got = _run(func, [x, s, qp] if smooth else [x, qp], (K, M), np.uint8, target)
    np.testing.assert_array_equal(got, quantize_reference(x * s if smooth else x, scale, zp,
                                                          signed).T)


def test_dynamic_qparams_kernel():
    target = _target("avx2")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((5, 37)) * 3 + 1).astype(np.float32)
    got = _run(dynamic_qparams_kernel(5, 37), [x.reshape(-1)], (2,), np.float32, target)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(255))
    assert got[0] == scale
    assert got[1] == np.clip(np.rint(-np.float32(lo) / scale), 0, 255)


@pytest.mark.parametrize("fam", ["vnni", "avx2"])
@pytest.mark.parametrize("tile", [(6, 4), (4, 6), (3, 8)])
def test_register_tile_stays_off_the_workspace_pool(fam, tile):
    """The register tile is stack arrays (registers after LLVM), not a workspace buffer that
    costs an allocate / free call pair and a memset per task; the next panel is prefetched
    (compiles on any host)."""
    target = target_for(fam, 2)
    M, K, N = 96, 384, 384
    cfg = resolve_int8_config(M, K, N, target, Int8Config(*tile))
    func = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, epilogue="gelu_erf",
                             quant_out=True)
    asm = tvm.compile(standalone_module(func), target).mod.inspect_source("asm")
    assert "AllocWorkspace" not in asm and "memset" not in asm
    assert "prefetcht0" in asm  # the next weight panel, K in chunks


def test_amx_kernel_compiles_to_tile_instructions():
    """AMX code builds on any host; it runs (bit-exact) only where the CPU has AMX."""
    target = target_for("amx", 2)
    M, K, N = 64, 100, 64
    func = amx_dense_int8_kernel(M, K, N, threads=2, raw=True)
    ex = tvm.compile(standalone_module(func), target)
    asm = ex.mod.inspect_source("asm")
    for ins in ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored", "tilerelease"):
        assert ins in asm, ins
    if not host_supports("amx"):
        return
    from lamina.backends.tvm.amx import request_amx

    assert request_amx()
    xq, wq = _operands(M, K, N)
    xp = np.concatenate([xq, np.zeros((M, padded_k(K, "amx") - K), np.uint8)], axis=1)
    got = _run(func, [xp, pack_weight_int8(wq, 16, 64)], (M, N), np.int32, target)
    np.testing.assert_array_equal(got, dense_int8_reference(xq, wq))


def test_amx_permission_request():
    from lamina.backends.tvm import amx

    class FakeLibc:
        def __init__(self, rc: int) -> None:
            self.rc, self.calls = rc, []

        def syscall(self, *args):
            self.calls.append(args)
            return self.rc

    ok = FakeLibc(0)
    assert amx.request_amx(ok) and ok.calls == [(158, 0x1023, 18)]
    assert not amx.request_amx(FakeLibc(-1))


def test_bf16_output_is_the_rounded_float_output():
    """``bf16_out``: the uint16 bf16 bits of exactly the float result (round to nearest even)."""
    from lamina.backends.tvm.kernels.dense_bf16 import to_bf16

    target = _target("vnni")
    M, K, N = 32, 64, 96
    xq, wq = _operands(M, K, N, seed=7)
    cfg = resolve_int8_config(M, K, N, target)
    rng = np.random.default_rng(8)
    arrays = [_pad(xq), pack_weight_int8(wq, cfg.nv * 16), column_sums(wq),
              (rng.random(N) * 0.01).astype(np.float32), np.array([0.05, 3], np.float32),
              rng.standard_normal(N).astype(np.float32)]
    y = _run(dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, epilogue="gelu_erf"),
             arrays, (M, N), np.float32, target)
    yb = _run(dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True, epilogue="gelu_erf",
                                bf16_out=True), arrays, (M, N), np.uint16, target)
    np.testing.assert_array_equal(yb, to_bf16(y))


@pytest.mark.parametrize("fam, lanes", [("vnni", 16), ("avx2", 8)])
def test_gelu_table_is_within_its_error_bound(fam, lanes):
    """The INT8 kernels' GELU (vpermps tables, common.gelu_table) against the exact GELU, over and
    beyond the tabulated [-4, 4), on 16 (AVX-512) and 8 (AVX2) lanes."""
    import math

    from tvm.script import tirx as T

    from lamina.backends.tvm.kernels.common import gelu_table

    target = _target(fam)
    n = 40_000

    @T.prim_func
    def gelu(X: T.Buffer((n,), "float32"), Y: T.Buffer((n,), "float32")):
        for o in range(n // lanes):
            for c in T.vectorized(lanes):
                Y[o * lanes + c] = gelu_table(X[o * lanes + c], c, lanes)

    x = np.linspace(-20, 20, n).astype(np.float32)
    got = _run(gelu, [x], (n,), np.float32, target)
    xd = x.astype(np.float64)
    want = 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2)))
    err = np.abs(got - want)
    assert err.max() < 1.3e-4
    assert err[np.abs(x) < 3.9].max() < 3e-5

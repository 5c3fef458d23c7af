"""BF16 dense kernels (``kernels/dense_bf16.py``, AMX in ``dense_amx.py``): rounding, packing, the
conversion kernel, the ``vdpbf16ps`` kernel against numpy on bf16-rounded inputs, its generated
code, and the AMX-BF16 kernel's build. Running a BF16 kernel needs a host with AVX512-BF16 (AMX-BF16
for the tile kernel): those tests skip with the reason elsewhere."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lamina.backends.tvm.kernels.dense_bf16 import (
    Bf16Config,
    candidate_bf16_configs,
    dense_bf16_reference,
    from_bf16,
    pack_weight_bf16,
    packing,
    padded_k,
    resolve_bf16_config,
    round_bf16,
    to_bf16,
    unpack_weight_bf16,
)

pytestmark = pytest.mark.tvm


def _target(name: str = "x86-avx512-bf16"):
    from lamina.backends.tvm.target import resolve_target

    return resolve_target(name, threads=2).tvm_target


def _need_bf16_host() -> None:
    from lamina.backends.tvm.kernels import host_supports

    if not host_supports("avx512bf16"):
        pytest.skip("host CPU has no AVX512-BF16 (vdpbf16ps)")


def _asm(func, target) -> str:
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module

    ex = tvm.compile(standalone_module(func), target)
    mod = ex.mod.imports[0] if ex.mod.imports else ex.mod
    return mod.inspect_source("asm")


def test_register_rows_split_a_tile_into_stack_sized_groups():
    from lamina.backends.tvm.kernels.common import STACK_BYTES, register_rows

    assert register_rows(8, 3 * 64) == ((0, 5), (5, 3), (8, 0))
    assert register_rows(3, 8 * 64) == ((0, 1), (1, 1), (2, 1))
    assert register_rows(4, 64) == ((0, 4), (4, 0), (4, 0))
    for mr, row in ((6, 256), (12, 128), (1, 1008)):
        groups = register_rows(mr, row)
        assert sum(n for _, n in groups) == mr
        assert all(n * row < STACK_BYTES for _, n in groups)
    with pytest.raises(ValueError, match="groups"):
        register_rows(4, 1000)


def test_bf16_dense_register_tile_stays_off_the_workspace_pool():
    from lamina.backends.tvm.kernels.dense_bf16 import dense_bf16_kernel
    from lamina.backends.tvm.kernels.isa import target_for

    target = target_for("avx512bf16", 2)
    asm = _asm(dense_bf16_kernel(128, 384, 384, target=target, bias=True, epilogue="gelu_erf"),
               target)
    assert "vdpbf16ps" in asm
    assert "AllocWorkspace" not in asm and "memset" not in asm


# -- numpy side -------------------------------------------------------------------------------


def test_to_bf16_rounds_to_nearest_even_and_keeps_specials():
    one = np.float32(1.0).view(np.uint32)
    x = np.array([1.0, (one + 0x8000).view(np.float32),        # tie below: to even (1.0)
                  (one + 0x18000).view(np.float32),              # tie above odd: up
                  (one + 0x8001).view(np.float32),               # above the tie: up
                  np.inf, -np.inf, np.nan, -0.0, 3.4e38], np.float32)
    b = to_bf16(x)
    assert list(b[:4]) == [0x3F80, 0x3F80, 0x3F82, 0x3F81]
    assert list(b[4:6]) == [0x7F80, 0xFF80] and b[7] == 0x8000
    assert np.isnan(from_bf16(b[6:7]))[0] and np.isinf(from_bf16(b[8:9]))[0]  # RNE overflow
    r = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.abs(round_bf16(r) - r).max() <= np.abs(r).max() * 2.0**-8


@pytest.mark.parametrize("K,N,nb", [(33, 96, 48), (64, 32, 16), (7, 48, 16)])
def test_pack_weight_bf16_layout_and_roundtrip(K, N, nb):
    w = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    wp = pack_weight_bf16(w, nb)
    assert wp.shape == (N // nb, padded_k(K) // 2, 2 * nb) and wp.dtype == np.uint16
    # Wp[p, k2, 2c + j] = bf16(W[2 k2 + j, p nb + c])
    assert wp[1 if N > nb else 0, 2, 2 * 3 + 1] == to_bf16(w[5, (nb if N > nb else 0) + 3])
    assert np.array_equal(unpack_weight_bf16(wp, K), round_bf16(w))
    assert np.array_equal(pack_weight_bf16(w.T.copy(), nb, "NK"), wp)
    amx = pack_weight_bf16(w, 16, step=32)
    assert amx.shape == (N // 16, 16 * -(-K // 32), 32)
    with pytest.raises(ValueError, match="multiple of the panel"):
        pack_weight_bf16(w, 40)


def test_tiles_fit_the_shape_and_the_register_budget():
    t = _target()
    cfg = resolve_bf16_config(128, 384, 1536, t)
    assert (cfg.mr, cfg.nv) == (8, 3) and 128 % cfg.mc == 0 and cfg.mc % 8 == 0
    for M, N in [(1, 48), (7, 32), (16, 80), (100, 400), (128, 384)]:
        for cfg in candidate_bf16_configs(M, 64, N, t):
            assert M % cfg.mr == 0 and (N // 16) % cfg.nv == 0 and cfg.mr * cfg.nv <= 24
            assert M % cfg.mc == 0 and cfg.mc % cfg.mr == 0
    assert packing(128, 384, 1536, t) == (48, 2)
    assert packing(128, 384, 1536, _target("x86-avx512-amx")) == (16, 32)
    assert packing(8, 384, 1536, _target("x86-avx512-amx"))[1] == 2  # not whole AMX tiles
    with pytest.raises(ValueError, match="multiple of the 16"):
        resolve_bf16_config(8, 64, 40, t)


# -- TIR side ---------------------------------------------------------------------------------


def test_conversion_kernel_matches_numpy_on_any_host():
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.dense_bf16 import to_bf16_kernel

    M, K, Kp = 5, 37, 38
    x = np.random.default_rng(2).standard_normal((M, K)).astype(np.float32)
    x[0, :4] = [np.nan, np.inf, -0.0, 1e-40]
    x[1, 0] = (np.float32(1.0).view(np.uint32) + 0x8000).view(np.float32)
    tgt = _target("x86-64")
    ex = tvm.compile(standalone_module(to_bf16_kernel(M, K, Kp)), tgt)
    out = tvm.runtime.tensor(np.full((M, Kp), 7, np.uint16))
    ex.mod["main"](tvm.runtime.tensor(x), out)
    want = np.concatenate([to_bf16(x), np.zeros((M, 1), np.uint16)], axis=1)
    assert np.array_equal(out.numpy(), want)


CASES = [
    # M, K, N, bias, epilogue, residual, tile
    (16, 33, 80, True, "gelu_erf", True, None),   # K odd, N = 5 vectors (not a multiple of 48)
    (128, 384, 1536, True, None, False, None),     # the MiniLM FFN1 shape, default 8 x 3 tile
    (24, 64, 96, False, "relu", False, Bf16Config(6, 4)),
    (7, 10, 32, False, "gelu_tanh", False, None),   # M prime: mr = 7
    (1, 64, 48, True, None, True, None),            # one row
    (32, 256, 96, True, None, True, Bf16Config(8, 3, -1)),  # K in 4 chunks with prefetch
    (64, 96, 96, True, "gelu_erf", True, Bf16Config(8, 3, -1, 16)),  # 4 row blocks
]


@pytest.mark.parametrize("M,K,N,bias,epilogue,residual,tile", CASES)
def test_bf16_dense_matches_numpy(M, K, N, bias, epilogue, residual, tile):
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.dense_bf16 import dense_bf16_kernel

    _need_bf16_host()
    t = _target()
    rng = np.random.default_rng(M + K + N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((K, N)) * 0.2).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((M, N)).astype(np.float32)
    cfg = resolve_bf16_config(M, K, N, t, tile)
    func = dense_bf16_kernel(M, K, N, target=t, config=cfg, bias=bias, epilogue=epilogue,
                             residual=residual)
    ex = tvm.compile(standalone_module(func), t)
    xb = np.zeros((M, padded_k(K)), np.uint16)
    xb[:, :K] = to_bf16(x)
    args = [xb, pack_weight_bf16(w, cfg.nv * 16)] + ([b] if bias else []) + (
        [r] if residual else [])
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32))
    ex.mod["main"](*[tvm.runtime.tensor(a) for a in args], y)
    want = dense_bf16_reference(x, w, b if bias else None, epilogue, r if residual else None)
    # fp32 accumulation of exact bf16 products (and the fast erf / tanh: ~1e-6).
    tol = 1e-5 * np.sqrt(K) * (np.abs(want).max() + 1)
    np.testing.assert_allclose(y.numpy(), want, atol=tol, rtol=0)
    # The bf16 rounding is the only loss against the fp32 product, and it is visible.
    exact = x.astype(np.float64) @ w.astype(np.float64)
    if not bias and not epilogue and not residual:
        assert np.abs(y.numpy() - exact).max() > tol


def test_generated_inner_loop_keeps_the_tile_in_registers():
    """24 ``vdpbf16ps`` on zmm accumulators per k step, nothing stored to the stack in the loop
    (builds on any host)."""
    from lamina.backends.tvm.kernels.dense_bf16 import dense_bf16_kernel

    t = _target()
    asm = _asm(dense_bf16_kernel(128, 384, 1536, target=t, bias=True, epilogue="gelu_erf",
                                 config=Bf16Config(8, 3, -1)), t)
    assert "prefetcht0" in asm
    lines = asm.splitlines()
    hits = [i for i, line in enumerate(lines) if "vdpbf16ps" in line]
    assert len(hits) >= 24
    loop = lines[hits[0]: hits[23] + 1]
    assert sum("vdpbf16ps" in line for line in loop) == 24
    assert all(re.search(r"vdpbf16ps\s.*%zmm\d+, %zmm\d+$", ln.strip()) or "vdpbf16ps" not in ln
               for ln in loop), loop
    assert not any("rsp" in line for line in loop), "the register tile spills in the inner loop"


def test_amx_bf16_kernel_builds_anywhere_and_runs_where_amx_is():
    import tvm

    from lamina.backends.tvm.kernels import host_supports
    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.dense_amx import amx_dense_bf16_kernel
    from lamina.backends.tvm.kernels.dense_bf16 import dense_bf16_kernel

    t = _target("x86-avx512-amx")
    M, K, N = 64, 40, 64
    func = dense_bf16_kernel(M, K, N, target=t, bias=True, epilogue="gelu_erf")
    asm = _asm(func, t)
    assert "tdpbf16ps" in asm and "ldtilecfg" in asm and "vdpbf16ps" not in asm
    with pytest.raises(ValueError, match="multiples of 32"):
        amx_dense_bf16_kernel(48, K, N, threads=2)
    if not (host_supports("amx") and "amx-bf16" in _host_features()):
        pytest.skip("built only: host CPU has no AMX-BF16 to run tdpbf16ps")
    from lamina.backends.tvm.amx import request_amx

    assert request_amx()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    xb = np.zeros((M, padded_k(K, "amx")), np.uint16)
    xb[:, :K] = to_bf16(x)
    ex = tvm.compile(standalone_module(func), t)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32))
    ex.mod["main"](tvm.runtime.tensor(xb), tvm.runtime.tensor(pack_weight_bf16(w, 16, step=32)),
                   tvm.runtime.tensor(b), y)
    want = dense_bf16_reference(x, w, b, "gelu_erf")
    np.testing.assert_allclose(y.numpy(), want, atol=1e-4 * (np.abs(want).max() + 1), rtol=0)


def _host_features() -> frozenset[str]:
    from lamina.backends.tvm.target import host_features

    return host_features()


def test_bf16_tiles_are_searched_once_and_cached_per_family(tmp_path):
    import json

    from lamina.backends.tvm.tuning.kernel_search import KernelTiles, best_bf16_config, tiles_file

    t = _target()
    default = resolve_bf16_config(16, 64, 96, t)
    assert best_bf16_config(16, 64, 96, t, cache=tmp_path, measure=False) == default
    path = tiles_file(tmp_path, t, "bf16")
    assert not path.exists() and path.name == "bf16_tiles.json"
    path.parent.mkdir(parents=True)
    rec = {"config": {"mr": 4, "nv": 2, "prefetch_kc": 0, "mc": 8}, "us": 1.0, "candidates": 2}
    path.write_text(json.dumps({"16x64x96_avx512bf16": rec}))
    assert KernelTiles(tmp_path).bf16(16, 64, 96, t) == Bf16Config(4, 2, 0, 8)
    assert tiles_file(tmp_path, t, "dense") != path  # one file per kernel family
    _need_bf16_host()
    seen = []
    cfg = best_bf16_config(32, 64, 96, t, cache=tmp_path,
                           on_search=lambda what, best, *_: seen.append((what, best)))
    assert seen and seen[0][0] == "bf16 dense 32x64x96_avx512bf16" and seen[0][1] == cfg.key()
    assert "32x64x96_avx512bf16" in json.loads(path.read_text())


@pytest.mark.parametrize("cs", [2, 4])
def test_bf16_attention_skips_the_keys_past_the_last_unmasked_one(cs):
    """Right-padded rows with the lowering's fill: the kernel stops at the last unmasked key (in
    whole score tiles) and still equals the reference, which weighs every key; a row with a hole
    keeps its later keys, a fully masked row gets uniform weights."""
    import tvm

    from lamina.backends.tvm.kernels.attention_bf16 import (
        AttentionBf16Config,
        attention_bf16_kernel,
        attention_bf16_reference,
    )
    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.compiler.ir.ops.attention import MASK_FILL

    _need_bf16_host()
    target = _target()
    batch, s, heads, d = 5, 128, 2, 32
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((3, batch, s, heads, d)).astype(np.float32)
    bias = np.zeros((batch, s), np.float32)
    for row, length in enumerate([5, 33, 128, 0]):
        bias[row, length:] = MASK_FILL
    bias[4, 3:100] = MASK_FILL  # a hole: keys 100.. stay
    x = np.concatenate([a.reshape(batch * s, heads * d) for a in (q, k, v)], axis=1)
    func = attention_bf16_kernel(batch, s, s, heads, d, scale=0.2, merged=True, mask=True,
                                 threads=2, config=AttentionBf16Config(8, 4, cs))
    lib = tvm.compile(standalone_module(func), target=target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((batch, s, heads, d), np.float32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(bias, dev), out)
    want = attention_bf16_reference(q, k, v, 0.2, bias)
    err = np.abs(out.numpy() - want)
    assert np.isfinite(out.numpy()).all()
    assert np.mean(err < 1e-4) > 0.99 and err.max() < 2e-3, err.max()


def test_softmax_exp_is_exp_to_bf16_precision():
    """The lossy attentions' exponential: within 1e-4 of exp (P is then rounded to bf16, 2e-3), and
    exactly 0 for the mask fill."""
    from lamina.backends.tvm.kernels.varlen_attention import softmax_exp_reference
    from lamina.compiler.ir.ops.attention import MASK_FILL

    x = np.linspace(-87.0, 0.0, 200001, dtype=np.float32)
    rel = np.abs(softmax_exp_reference(x).astype(np.float64) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 1e-4
    assert softmax_exp_reference(np.float32([MASK_FILL, -1e30, -200.0])).tolist() == [0, 0, 0]
    assert softmax_exp_reference(np.float32([0.0]))[0] == np.float32(0.9999289)


@pytest.mark.parametrize("batch, sq, skv, heads, d, merged, mask", [
    (1, 128, 128, 12, 32, True, True),
    (2, 32, 64, 2, 64, False, True),
    (2, 24, 32, 3, 32, False, False),
    (1, 64, 64, 4, 32, True, False),
    (1, 32, 32, 3, 32, True, True),  # 3 tasks in 2 chunks
])
def test_bf16_attention_matches_the_bf16_reference(batch, sq, skv, heads, d, merged, mask):
    """The BF16 attention kernel against numpy on the same bf16-rounded Q, K, P and V (fp32
    sums), and within bf16's error of the exact fp32 attention; padded keys get no weight."""
    import tvm

    from lamina.backends.tvm.kernels.attention_bf16 import (
        attention_bf16_kernel,
        attention_bf16_reference,
    )
    from lamina.backends.tvm.kernels.common import standalone_module

    _need_bf16_host()
    target = _target()
    rng = np.random.default_rng(4)
    hid = heads * d
    q = rng.standard_normal((batch, sq, heads, d)).astype(np.float32)
    k = rng.standard_normal((batch, skv, heads, d)).astype(np.float32)
    v = rng.standard_normal((batch, skv, heads, d)).astype(np.float32)
    bias = np.zeros((batch, skv), np.float32)
    bias[0, skv - 5:] = -10000.0  # padding
    if merged:
        srcs = [np.concatenate([q.reshape(batch * sq, hid), k.reshape(batch * skv, hid),
                                v.reshape(batch * skv, hid)], axis=1)]
    else:
        srcs = [a.reshape(-1, hid) for a in (q, k, v)]
    if mask:
        srcs.append(bias)
    func = attention_bf16_kernel(batch, sq, skv, heads, d, scale=0.2, merged=merged, mask=mask,
                                 threads=2)
    lib = tvm.compile(standalone_module(func), target=target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((batch, sq, heads, d), np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in srcs), out)
    got = out.numpy()
    want = attention_bf16_reference(q, k, v, 0.2, bias if mask else None)
    # The kernel's fast exp and numpy's differ by ~1e-7, which can move a probability across a
    # bf16 rounding boundary (one step: 2^-8 of it): a few outputs then differ by ~1e-4.
    err = np.abs(got - want)
    assert np.mean(err < 1e-4) > 0.99 and err.max() < 2e-3, err.max()
    # exact attention (float64): bf16 operands move the output by ~1e-2 at most
    s = np.einsum("bihe,bjhe->bhij", q.astype(np.float64), k.astype(np.float64)) * 0.2
    if mask:
        s = s + bias[:, None, None, :]
    p = np.exp(s - s.max(-1, keepdims=True))
    exact = np.einsum("bhij,bjhe->bihe", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    assert np.abs(got - exact).max() < 3e-2


def test_bf16_attention_refuses_shapes_it_does_not_tile():
    from lamina.backends.tvm.kernels.attention_bf16 import attention_bf16_kernel, fits

    assert fits(128, 128, 32) and fits(7, 64, 64)
    assert not fits(16, 16, 32) and not fits(32, 32, 48)
    with pytest.raises(ValueError, match="skv % 32"):
        attention_bf16_kernel(1, 16, 16, 2, 32, scale=1.0, merged=True, mask=False, threads=2)


def test_every_bf16_attention_tile_matches_the_reference():
    import tvm

    from lamina.backends.tvm.kernels.attention_bf16 import (
        attention_bf16_kernel,
        attention_bf16_reference,
        candidate_attention_bf16_configs,
    )
    from lamina.backends.tvm.kernels.common import standalone_module

    _need_bf16_host()
    target = _target()
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 64, 2, 64)).astype(np.float32) for _ in range(3))
    x = np.concatenate([a.reshape(64, 128) for a in (q, k, v)], axis=1)
    want = attention_bf16_reference(q, k, v, 0.125)
    configs = candidate_attention_bf16_configs(64, 64, 64)
    assert len(configs) > 2 and all(c.mr * 4 <= 32 for c in configs)  # PV tile in registers
    dev = tvm.cpu()
    for cfg in configs:
        lib = tvm.compile(standalone_module(attention_bf16_kernel(
            1, 64, 64, 2, 64, scale=0.125, merged=True, mask=False, threads=2, config=cfg)),
            target=target)
        out = tvm.runtime.tensor(np.zeros((1, 64, 2, 64), np.float32), dev)
        lib["main"](tvm.runtime.tensor(x, dev), out)
        err = np.abs(out.numpy() - want)
        assert np.mean(err < 1e-4) > 0.99 and err.max() < 2e-3, (cfg, err.max())


def test_bf16_attention_on_bf16_sources_equals_rounding_float_ones():
    import tvm

    from lamina.backends.tvm.kernels.attention_bf16 import attention_bf16_kernel
    from lamina.backends.tvm.kernels.common import standalone_module

    _need_bf16_host()
    target = _target()
    x = np.random.default_rng(9).standard_normal((64, 3 * 64)).astype(np.float32)
    dev = tvm.cpu()
    outs = []
    for bf16_in, src in ((False, x), (True, to_bf16(x))):
        lib = tvm.compile(standalone_module(attention_bf16_kernel(
            1, 64, 64, 2, 32, scale=0.2, merged=True, mask=False, threads=2, bf16_in=bf16_in)),
            target=target)
        out = tvm.runtime.tensor(np.zeros((1, 64, 2, 32), np.float32), dev)
        lib["main"](tvm.runtime.tensor(src, dev), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bf16_attention_quantizes_its_output_for_an_int8_consumer():
    """``quant_out`` writes the codes of its float output quantized (the INT8 out-projection's
    QuantizeLinear, fused)."""
    import tvm

    from lamina.backends.tvm.kernels.attention_bf16 import attention_bf16_kernel
    from lamina.backends.tvm.kernels.common import standalone_module

    _need_bf16_host()
    target = _target()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((64, 3 * 64)).astype(np.float32)
    bias = np.zeros((1, 64), np.float32)
    bias[0, 50:] = np.finfo(np.float32).min
    smul = rng.uniform(100, 300, 64).astype(np.float32)
    qo = np.array([0.01, 120.0], np.float32)
    dev = tvm.cpu()
    outs = []
    for quant in (False, True):
        lib = tvm.compile(standalone_module(attention_bf16_kernel(
            1, 64, 64, 2, 32, scale=0.2, merged=True, mask=True, threads=2, quant_out=quant)),
            target=target)
        args = [x, bias] + ([smul, qo] if quant else [])
        out = tvm.runtime.tensor(np.zeros((1, 64, 2, 32), np.uint8 if quant else np.float32), dev)
        lib["main"](*[tvm.runtime.tensor(a, dev) for a in args], out)
        outs.append(out.numpy().reshape(64, 64))
    want = np.clip(np.rint(outs[0] * smul) + 120.0, 0, 255)
    assert (want == 255).any() and (want == 0).any()
    got = outs[1].astype(np.int64)
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99

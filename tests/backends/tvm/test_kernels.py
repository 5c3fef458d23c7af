"""Correctness of the hand-scheduled dense / batched matmul kernels against numpy (no timing)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from lamina.backends.tvm.kernels import (
    DenseConfig,
    batch_matmul_kernel,
    candidate_configs,
    default_config,
    dense_kernel,
    dense_reference,
    host_supports,
    host_target,
    isa_of,
    pack_weight,
    resolve_config,
    standalone_module,
    target_for,
    unpack_weight,
)

pytestmark = pytest.mark.tvm

ISAS = ["avx512", "avx2", "generic"]


def _target(isa: str) -> tvm.target.Target:
    if not host_supports(isa):
        pytest.skip(f"host CPU cannot run {isa} code (host ISA: {isa_of(host_target())})")
    return target_for(isa, 2)


def _run(func, args: list[np.ndarray], target) -> np.ndarray:
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    tens = [tvm.runtime.tensor(a, dev) for a in args]
    ex.mod["main"](*tens)
    return tens[-1].numpy()


def test_pack_roundtrip() -> None:
    w = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    wp = pack_weight(w, 4)
    assert wp.shape == (2, 6, 4)
    np.testing.assert_array_equal(unpack_weight(wp), w)
    np.testing.assert_array_equal(pack_weight(w.T, 4, layout="NK"), wp)
    with pytest.raises(ValueError):
        pack_weight(w, 3)


@pytest.mark.parametrize("isa", ISAS)
def test_isa_detection(isa: str) -> None:
    assert isa_of(target_for(isa, 2)) == isa


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "M,K,N,bias,epilogue,residual",
    [
        (16, 32, 64, False, None, False),
        (24, 48, 96, True, "gelu_erf", False),
        (20, 40, 64, True, "gelu_tanh", False),  # M not a multiple of the register tile
        (32, 64, 32, True, None, True),
        (7, 16, 24, True, "relu", True),  # N not a multiple of the default panel width
    ],
)
def test_dense_matches_numpy(isa, M, K, N, bias, epilogue, residual) -> None:
    target = _target(isa)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32) / np.sqrt(K)
    b = rng.standard_normal(N, dtype=np.float32)
    r = rng.standard_normal((M, N), dtype=np.float32)
    cfg = resolve_config(M, K, N, target)
    func = dense_kernel(M, K, N, bias=bias, epilogue=epilogue, residual=residual, target=target)
    args = [x, pack_weight(w, cfg.nb)] + ([b] if bias else []) + ([r] if residual else [])
    out = _run(func, [*args, np.zeros((M, N), np.float32)], target)
    ref = dense_reference(x, w, b if bias else None, epilogue, r if residual else None)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_every_candidate_tile_is_correct(isa: str) -> None:
    target = _target(isa)
    M, K, N = 24, 32, 64
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    cands = candidate_configs(M, K, N, target)
    assert cands[0] == default_config(M, K, N, target)
    for cfg in cands:
        func = dense_kernel(M, K, N, target=target, config=cfg)
        out = _run(func, [x, pack_weight(w, cfg.nb), np.zeros((M, N), np.float32)], target)
        np.testing.assert_allclose(out, x @ w, rtol=1e-4, atol=1e-4, err_msg=cfg.key())


def test_config_knobs_are_fitted_to_shape() -> None:
    target = target_for("avx2", 2)
    cfg = resolve_config(10, 8, 24, target, DenseConfig(mr=14, nb=32, mc=64, n_inner=5))
    assert 24 % cfg.nb == 0 and cfg.mr <= 10 and cfg.mc <= 10
    assert (24 // cfg.nb) % cfg.n_inner == 0
    assert DenseConfig.from_dict(cfg.to_dict()) == cfg


def test_scheduled_attr_set() -> None:
    target = target_for("generic", 2)
    func = dense_kernel(8, 8, 8, target=target)
    assert bool(func.attrs["tirx.is_scheduled"])
    assert "global_symbol" not in func.attrs


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("scale", [None, 0.125])
def test_batch_matmul_matches_numpy(isa: str, scale) -> None:
    target = _target(isa)
    B, M, K, N = 3, 20, 16, 32
    rng = np.random.default_rng(2)
    a = rng.standard_normal((B, M, K), dtype=np.float32)
    b = rng.standard_normal((B, K, N), dtype=np.float32)
    func = batch_matmul_kernel(B, M, K, N, scale=scale, target=target)
    out = _run(func, [a, b, np.zeros((B, M, N), np.float32)], target)
    np.testing.assert_allclose(out, (a @ b) * (scale or 1.0), rtol=1e-4, atol=1e-4)


def test_emit_into_relax_matches_numpy() -> None:
    """Converter path: emit_dense / emit_batch_matmul in a Relax program, default tvm.compile."""
    from tvm import relax

    from lamina.backends.tvm.kernels.relax_emit import emit_batch_matmul, emit_dense

    target = host_target(1)
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((32, 64), dtype=np.float32) / 6
    b1 = rng.standard_normal(64, dtype=np.float32)
    w2 = rng.standard_normal((64, 32), dtype=np.float32) / 8
    b2 = rng.standard_normal(32, dtype=np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 8, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = emit_dense(bb, x, w1, b1, epilogue="gelu_erf", target=target)
            y = emit_dense(bb, h, np.ascontiguousarray(w2.T), b2, residual=x, target=target,
                           weight_layout="NK")
            q = bb.emit(relax.op.reshape(y, (2, 2, 8, 16)))
            kt = bb.emit(relax.op.permute_dims(q, [0, 1, 3, 2]))
            s = emit_batch_matmul(bb, q, kt, scale=0.25, target=target)
            o = bb.emit_output(emit_batch_matmul(bb, s, q, target=target))
        bb.emit_func_output(o)
    ex = tvm.compile(bb.get(), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xv = rng.standard_normal((2, 8, 32), dtype=np.float32)
    out = vm["main"](tvm.runtime.tensor(xv)).numpy()
    hv = dense_reference(xv.reshape(16, 32), w1, b1, "gelu_erf")
    qv = dense_reference(hv, w2, b2, None, xv.reshape(16, 32)).reshape(2, 2, 8, 16)
    ref = (qv @ qv.transpose(0, 1, 3, 2) * 0.25) @ qv
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cfg", [DenseConfig(mr=4, nb=16, mc=8, n_inner=2, unroll_k=4),
                                 DenseConfig(mr=3, nb=8, mc=0, n_inner=1, unroll_k=2)])
def test_all_knobs(cfg: DenseConfig) -> None:
    _check_biased_dense(16, 24, 64, cfg, "gelu_tanh", _target("avx2"), seed=4)


def _check_biased_dense(M: int, K: int, N: int, cfg: DenseConfig, epilogue: str, target,
                        seed: int):
    """``epilogue(x @ w + b)`` with tile ``cfg`` against numpy; returns the scheduled PrimFunc."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    func = dense_kernel(M, K, N, bias=True, epilogue=epilogue, target=target, config=cfg)
    out = _run(func, [x, pack_weight(w, cfg.nb), b, np.zeros((M, N), np.float32)], target)
    np.testing.assert_allclose(out, dense_reference(x, w, b, epilogue), rtol=1e-4, atol=1e-4)
    return func


def _attention_reference(q, k, v, bias, heads, scale):
    b, sq, hid = q.shape
    d = hid // heads

    def split(t):
        return t.astype(np.float64).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)

    s = split(q) @ split(k).transpose(0, 1, 3, 2) * scale
    if bias is not None:
        s = s + bias[:, None, None, :]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(0, 2, 1, 3).reshape(b, sq, hid)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch, sq, skv, heads, d, merged, mask", [
    (2, 5, 5, 3, 8, True, True),      # odd lengths: scalar softmax, 5-query tiles
    (1, 7, 12, 2, 6, False, True),    # cross-attention lengths, d not a multiple of the lanes
    (2, 16, 16, 2, 16, False, False),
    (1, 40, 40, 2, 32, True, True),   # 16-lane reductions, 8-query tiles (the MiniLM path)
    (1, 24, 32, 1, 64, False, True),  # a d = 64 head (BERT-base)
])
def test_attention_kernel(isa, batch, sq, skv, heads, d, merged, mask):
    from lamina.backends.tvm.kernels.attention import attention_kernel

    target = _target(isa)
    rng = np.random.default_rng(4)
    hid = heads * d
    q, k, v = (rng.standard_normal((batch, n, hid), dtype=np.float32) for n in (sq, skv, skv))
    bias = None
    if mask:
        bias = np.zeros((batch, skv), np.float32)
        bias[-1, skv // 2:] = np.finfo(np.float32).min
        if batch > 1:
            bias[0, :] = np.finfo(np.float32).min  # a fully masked row: uniform weights, no NaN
    srcs = ([np.concatenate([q, k, v], -1).reshape(batch * sq, 3 * hid)] if merged else
            [q.reshape(-1, hid), k.reshape(-1, hid), v.reshape(-1, hid)])
    func = attention_kernel(batch, sq, skv, heads, d, scale=d ** -0.5, merged=merged,
                            mask=mask, target=target)
    out = _run(func, [*srcs, *([bias] if mask else []),
                      np.zeros((batch, sq, heads, d), np.float32)], target)
    got = out.reshape(batch, sq, hid)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, _attention_reference(q, k, v, bias, heads, d ** -0.5),
                               atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("signed", [False, True])
def test_attention_quantizes_its_output_for_an_int8_consumer(isa, signed):
    """``quant_out``: the u8 of ``saturate(round_half_even(o * S) + zp)`` (int8 codes shifted by
    +128), the codes of the float output quantized the same way; a scale that saturates some."""
    from lamina.backends.tvm.kernels.attention import attention_kernel

    target = _target(isa)
    batch, s, heads, d = 1, 16, 2, 16
    hid = heads * d
    rng = np.random.default_rng(6)
    x = rng.standard_normal((batch * s, 3 * hid), dtype=np.float32)
    smul = rng.uniform(100, 300, hid).astype(np.float32)
    zp = 3.0 if signed else 120.0
    outs = []
    for quant in (False, True):
        func = attention_kernel(batch, s, s, heads, d, scale=0.25, merged=True, mask=False,
                                target=target, quant_out=quant, out_signed=signed)
        extra = [smul, np.array([0.01, zp], np.float32)] if quant else []
        outs.append(_run(func, [x, *extra, np.zeros((batch, s, heads, d),
                                                    np.uint8 if quant else np.float32)], target))
    lo, hi, shift = (-128, 127, 128) if signed else (0, 255, 0)
    want = np.clip(np.rint(outs[0].reshape(-1, hid) * smul) + zp, lo, hi) + shift
    got = outs[1].reshape(-1, hid).astype(np.int64)
    assert ((want == 0) | (want == 255)).any()  # saturation exercised
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


@pytest.mark.parametrize("isa", ISAS)
def test_every_attention_candidate_is_correct(isa):
    from lamina.backends.tvm.kernels.attention import attention_kernel, candidate_attention_configs

    target = _target(isa)
    batch, sq, skv, heads, d = 1, 16, 24, 2, 16
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((batch, n, heads * d), dtype=np.float32) for n in (sq, skv, skv))
    want = _attention_reference(q, k, v, None, heads, 0.25)
    cands = candidate_attention_configs(sq, skv, d, target)
    assert len(set(cands)) == len(cands) > 1
    for cfg in cands:
        func = attention_kernel(batch, sq, skv, heads, d, scale=0.25, merged=False, mask=False,
                                target=target, config=cfg)
        out = _run(func, [q.reshape(-1, heads * d), k.reshape(-1, heads * d),
                          v.reshape(-1, heads * d), np.zeros((batch, sq, heads, d), np.float32)],
                   target)
        np.testing.assert_allclose(out.reshape(want.shape), want, atol=2e-6, rtol=1e-5,
                                   err_msg=cfg.key())


@pytest.mark.parametrize("kc", [0, 16, 32])
def test_dense_panel_prefetch_is_correct_and_emitted(kc) -> None:
    """The prefetch chunks split K (accumulators stored between chunks) without changing results;
    the compiled kernel holds the prefetches only when a chunk size is given."""
    target = target_for("generic", 2)
    M, K, N = 24, 64, 48
    cfg = resolve_config(M, K, N, target, DenseConfig(mr=4, nb=16, mc=12, prefetch_kc=kc))
    assert cfg.prefetch_kc == kc
    func = _check_biased_dense(M, K, N, cfg, "gelu_erf", target, seed=6)
    asm = tvm.tirx.build(standalone_module(func), target).inspect_source("asm")
    assert ("prefetch" in asm) == (kc > 0)


def test_prefetch_chunks_fit_k() -> None:
    target = target_for("avx2", 2)
    assert resolve_config(128, 384, 1536, target).prefetch_kc == 64
    assert resolve_config(128, 1536, 384, target).prefetch_kc == 64
    assert resolve_config(128, 20, 64, target).prefetch_kc == 0  # too short to split
    assert resolve_config(128, 96, 64, target).prefetch_kc == 48


def test_register_tiles_fit_the_isa() -> None:
    from lamina.backends.tvm.kernels.attention import register_tile

    for isa, budget, nl in (("avx512", 16, 16), ("avx2", 12, 8), ("generic", 8, 4)):
        target = target_for(isa, 2)
        for rows, cols in ((8, 32), (8, 64), (8, 128), (5, 12), (1, 6)):
            r, c = register_tile(rows, cols, target)
            assert rows % r == 0 and cols % c == 0
            assert r * -(-c // nl) <= budget
    assert register_tile(8, 32, target_for("avx512", 2)) == (8, 32)


@pytest.mark.parametrize("rows, n", [(5, 48), (3, 20), (128, 384)])
def test_layer_norm_kernel(rows, n):
    import tvm

    from lamina.backends.tvm.kernels.layernorm import layer_norm_kernel

    func = layer_norm_kernel(rows, n, 1e-12).with_attr("global_symbol", "ln")
    lib = tvm.compile(tvm.IRModule({"ln": func}), target=tvm.target.Target({"kind": "llvm"}))
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((rows, n)) * 3 + 5).astype("float32")
    g = rng.standard_normal(n).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros_like(x), dev)
    lib["ln"](*(tvm.runtime.tensor(a, dev) for a in (x, g, b)), out)
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-12) * g + b
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("rows, n", [(3, 20), (128, 384), (4, 40 * 16)])
def test_layer_norm_kernel_quantizes_for_the_next_int8_kernel(rows, n, signed, isa):
    """The fused ``Yq`` is exactly the u8 the INT8 kernels read for ``saturate(round(Y * S) +
    zp)`` of the kernel's own ``Y`` (int8 shifted by +128), and ``Y`` the LayerNorm, on each
    vector width the host runs (scalar code where the row is not whole vectors)."""
    import tvm

    from lamina.backends.tvm.kernels.layernorm import layer_norm_kernel

    target = _target(isa)
    func = layer_norm_kernel(rows, n, 1e-12, target, quant_out=True, out_signed=signed)
    lib = tvm.compile(standalone_module(func), target=target)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((rows, n)) * 3 + 5).astype("float32")
    g, b = rng.standard_normal((2, n)).astype("float32")
    s = (rng.random(n) * 40 + 10).astype("float32")
    zp = -3.0 if signed else 120.0
    qo = np.array([0.02, zp], "float32")
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros_like(x), dev)
    yq = tvm.runtime.tensor(np.zeros((rows, n), "uint8"), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in (x, g, b, s, qo)), y, yq)
    lo, hi = (-128, 127) if signed else (0, 255)
    ref = np.clip(np.rint(y.numpy() * s) + zp, lo, hi) + (128 if signed else 0)
    np.testing.assert_array_equal(yq.numpy(), ref.astype(np.uint8))
    xd = x.astype(np.float64)
    want = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-12) * g + b
    np.testing.assert_allclose(y.numpy(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tables, dense, quant", [
    ([(50, "int64"), (2, "int64")], 16, True),   # BERT: word + token type + position
    ([(50, "int32")], 32, False),                 # one lookup + a full-size term
    ([(50, "int64"), (2, "int32"), (40, "int64")], 0, True),  # three lookups
])
def test_embedding_layer_norm_kernel_is_the_layer_norm_of_the_sum(tables, dense, quant, isa):
    """The lookups (ids wrap: negative ones count from the end), the sum in the graph's order and
    the LayerNorm in one kernel: byte for byte the LayerNorm kernel on the sum."""
    import tvm

    from lamina.backends.tvm.kernels.layernorm import (
        embedding_layer_norm_kernel,
        layer_norm_kernel,
    )

    target = _target(isa)
    rows, n = 32, 64
    rng = np.random.default_rng(3)
    ids = [rng.integers(-v, v, rows).astype(dt) for v, dt in tables]
    embs = [rng.standard_normal((v, n)).astype("float32") for v, _ in tables]
    x = embs[0][np.mod(ids[0], tables[0][0])]
    for (v, _), i, e in zip(tables[1:], ids[1:], embs[1:], strict=True):
        x = x + e[np.mod(i, v)]
    args = [a for pair in zip(ids, embs, strict=True) for a in pair]
    if dense:
        d = rng.standard_normal((dense, n)).astype("float32")
        x = x + np.tile(d, (rows // dense, 1))
        args.append(d)
    g, b = rng.uniform(0.5, 1.5, (2, n)).astype("float32")
    extra = [(rng.random(n) * 40 + 40).astype("float32"), np.array([0.02, 128.0], "float32")] \
        if quant else []
    dev = tvm.cpu()

    def outputs(func, ins):
        lib = tvm.compile(standalone_module(func), target=target)
        outs = [tvm.runtime.tensor(np.zeros((rows, n), "float32"), dev)]
        outs += [tvm.runtime.tensor(np.zeros((rows, n), "uint8"), dev)] if quant else []
        lib["main"](*(tvm.runtime.tensor(a, dev) for a in ins), *outs)
        return [o.numpy() for o in outs]

    got = outputs(embedding_layer_norm_kernel(rows, n, 1e-12, target, tables, dense,
                                              quant_out=quant), [*args, g, b, *extra])
    want = outputs(layer_norm_kernel(rows, n, 1e-12, target, quant_out=quant),
                   [x.astype("float32"), g, b, *extra])
    for a, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, w)


def test_row_kernels_use_the_target_vector_width():
    from lamina.backends.tvm.kernels._rows import lanes_for

    assert lanes_for(384, target_for("avx512", 2)) == 16
    assert lanes_for(384, target_for("avx2", 2)) == 8
    assert lanes_for(20, target_for("avx2", 2)) == 1  # not a whole number of vectors: scalar

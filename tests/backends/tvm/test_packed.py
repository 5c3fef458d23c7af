"""Padding-free (packed) execution: the variable-length attention kernel, the packed graph, and the
runtime's packed path against the padded one and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tvm_test_utils import ort_run


def _cu(lens: list[int], seqs: int) -> np.ndarray:
    cu = np.zeros(seqs + 1, np.int32)
    cu[1:len(lens) + 1] = np.cumsum(lens)
    cu[len(lens) + 1:] = cu[len(lens)]
    return cu


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("lens", [[5, 1, 17, 40], [64], [3, 3, 3, 3, 3, 3], [16, 33, 8]])
def test_varlen_attention_kernel_matches_reference(lens: list[int], isa: str) -> None:
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.isa import host_supports, isa_of, target_for
    from lamina.backends.tvm.kernels.varlen_attention import (
        varlen_attention_kernel,
        varlen_attention_reference,
    )

    if not host_supports(isa):
        pytest.skip(f"host CPU cannot run {isa} code")
    tokens, seqs, heads, d = 80, 8, 4, 16
    tgt = target_for(isa, 2)
    assert isa_of(tgt) == isa
    lib = tvm.compile(standalone_module(varlen_attention_kernel(
        tokens, seqs, heads, d, 64, scale=d ** -0.5, target=tgt)), tgt)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, 3 * heads * d)).astype(np.float32)
    cu = _cu(lens, seqs)
    n = int(cu[-1])
    # Rows past every sequence are a token bucket's tail, which no kernel need have written (the
    # attention leaves its output's tail unwritten): NaN there must not reach a real token.
    x[n:] = np.nan
    dev = tvm.cpu()
    o = tvm.runtime.tensor(np.zeros((tokens, heads * d), np.float32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(cu, dev), o)
    ref = varlen_attention_reference(x, cu, heads, d ** -0.5)
    np.testing.assert_allclose(o.numpy()[:n], ref[:n], rtol=1e-4, atol=1e-5)


def test_pack_model_rewrites_attention_and_positions(tiny_bert: Path) -> None:
    from lamina.backends.tvm.varlen import CU_SEQLENS, POSITION_IDS, pack_model
    from lamina.compiler.driver import api
    from lamina.compiler.driver.api import canonicalize

    model, _ = api.optimize(api.load(tiny_bert), "O1")
    pg = pack_model(model, 64, 4, canonicalize=canonicalize)
    ops = [(n.domain, n.op_type) for n in pg.model.graph]
    assert ("lamina", "PackedAttention") in ops and ("lamina", "Attention") not in ops
    assert pg.inputs == ["input_ids", "token_type_ids", POSITION_IDS, CU_SEQLENS]
    assert pg.token_outputs == ["last_hidden_state"] and pg.seq_outputs == []
    assert [list(v.shape) for v in pg.model.graph.outputs] == [[1, 64, 64]]


def test_pack_model_takes_each_sequences_first_token_for_the_pooler(minilm_ts17: Path) -> None:
    from lamina.backends.tvm.varlen import FIRST_TOKEN, pack_model
    from lamina.compiler.driver import api
    from lamina.compiler.driver.api import canonicalize

    model, _ = api.optimize(api.load(minilm_ts17), "O1")
    pg = pack_model(model, 64, 4, canonicalize=canonicalize)
    assert pg.inputs[-1] == FIRST_TOKEN
    assert pg.token_outputs == ["last_hidden_state"] and pg.seq_outputs == ["pooler_output"]
    shapes = {v.name: list(v.shape) for v in pg.model.graph.outputs}
    assert shapes == {"last_hidden_state": [1, 64, 384], "pooler_output": [4, 384]}


def test_pack_model_refuses_unfused_graph(tiny_bert: Path) -> None:
    from lamina.backends.tvm.varlen import NotPackable, pack_model
    from lamina.compiler.driver import api
    from lamina.compiler.driver.api import canonicalize

    model, _ = api.optimize(api.load(tiny_bert), "O0")
    with pytest.raises(NotPackable, match="fused attention|may mix tokens|Gather"):
        pack_model(model, 64, 4, canonicalize=canonicalize)


def test_pack_model_refuses_positions_computed_from_ids(tiny_model) -> None:
    from lamina.backends.tvm.varlen import NotPackable, pack_model
    from lamina.compiler.driver import api
    from lamina.compiler.driver.api import canonicalize

    model, _ = api.optimize(api.load(tiny_model("roberta")), "O1")
    with pytest.raises(NotPackable, match="RoBERTa"):
        pack_model(model, 64, 4, canonicalize=canonicalize)


def test_default_token_buckets() -> None:
    from lamina.backends.tvm.varlen import default_token_buckets

    b = default_token_buckets(1024)
    assert b[0] == 32 and b[-1] == 1024 and b == sorted(b)
    steps = {lo: hi - lo for lo, hi in zip(b, b[1:], strict=False)}
    assert steps[32] == 32 and steps[256] == 64 and steps[512] == 128


def test_packed_runtime_equals_padded_and_ort(tiny_bert: Path, tmp_path: Path) -> None:
    from lamina.backends.tvm import load
    from lamina.compiler.driver import api

    out = api.compile(tiny_bert, tmp_path / "m.lamina", buckets=[(4, 32)], packed=[32, 64],
                      packed_seqs=4)
    m = load(out, threads=1)
    rng = np.random.default_rng(1)
    lens = [9, 2, 30, 17]
    batch, seq = len(lens), max(lens)
    ids = rng.integers(1, 1000, (batch, seq)).astype(np.int64)
    mask = (np.arange(seq)[None, :] < np.array(lens)[:, None]).astype(np.int64)
    ids *= mask
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    got = m.run(feeds)
    assert m.last_plan == "packed 64"
    ref = ort_run(tiny_bert, feeds)[0]
    real = mask.astype(bool)
    np.testing.assert_allclose(got["last_hidden_state"][real], ref[real], rtol=1e-4, atol=1e-4)
    assert not got["last_hidden_state"][~real].any()  # padding positions are zeros
    with m._slot():  # the fixed bucket, as run() would without the packed functions
        padded = m._run_bucket(feeds, (4, 32), batch, seq)["last_hidden_state"]
    np.testing.assert_allclose(got["last_hidden_state"][real], padded[real], rtol=1e-4, atol=1e-4)
    # The same request through the fixed bucket (a gap in the mask forces it) agrees at real tokens.
    gap = mask.copy()
    gap[2, 1] = 0
    m.run({**feeds, "attention_mask": gap})
    assert m.last_plan.startswith("bucket")
    # More rows than one packed call holds: consecutive chunks.
    lens8 = lens * 2
    ids8 = np.concatenate([ids, ids])
    mask8 = np.concatenate([mask, mask])
    feeds8 = {"input_ids": ids8, "attention_mask": mask8, "token_type_ids": np.zeros_like(ids8)}
    got8 = m.run(feeds8)
    assert m.last_plan == "packed 64+64" and len(lens8) == 8
    np.testing.assert_allclose(got8["last_hidden_state"][:4], got["last_hidden_state"], atol=1e-5)
    # A row longer than every fixed bucket (seq 40 > 32) still runs, packed.
    ids40 = rng.integers(1, 1000, (1, 40)).astype(np.int64)
    feeds40 = {"input_ids": ids40, "attention_mask": np.ones_like(ids40),
               "token_type_ids": np.zeros_like(ids40)}
    got40 = m.run(feeds40)["last_hidden_state"]
    assert m.last_plan == "packed 64"
    np.testing.assert_allclose(got40, ort_run(tiny_bert, feeds40)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value", ["abc", "0,64", ","])
def test_cli_packed_bad_value_is_one_line(value: str) -> None:
    from lamina.compiler.driver.cli import _parse_packed
    from lamina.compiler.errors import UsageError

    with pytest.raises(UsageError, match="--packed"):
        _parse_packed(value)
    assert _parse_packed("auto") is True and _parse_packed("128,64") == [64, 128]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_varlen_attention_quantizes_its_output_for_an_int8_consumer(isa: str) -> None:
    """``quant_out``: each real token's row as the codes of the float output quantized
    (``saturate(round_half_even(o * S) + zp)``)."""
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.isa import host_supports, target_for
    from lamina.backends.tvm.kernels.varlen_attention import varlen_attention_kernel

    if not host_supports(isa):
        pytest.skip(f"host CPU cannot run {isa} code")
    tokens, seqs, heads, d = 48, 4, 2, 16
    tgt = target_for(isa, 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((tokens, 3 * heads * d)).astype(np.float32)
    smul = rng.uniform(100, 300, heads * d).astype(np.float32)
    cu = _cu([7, 1, 20, 13], seqs)
    dev = tvm.cpu()
    outs = []
    for quant in (False, True):
        lib = tvm.compile(standalone_module(varlen_attention_kernel(
            tokens, seqs, heads, d, 32, scale=0.25, target=tgt, quant_out=quant)), tgt)
        extra = [smul, np.array([0.01, 120.0], np.float32)] if quant else []
        o = tvm.runtime.tensor(np.zeros((tokens, heads * d), np.uint8 if quant else np.float32),
                               dev)
        lib["main"](*[tvm.runtime.tensor(a, dev) for a in [x, cu, *extra]], o)
        outs.append(o.numpy()[:int(cu[-1])])
    want = np.clip(np.rint(outs[0] * smul) + 120.0, 0, 255)
    assert (want == 0).any() and (want == 255).any()
    got = outs[1].astype(np.int64)
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.99


@pytest.mark.slow
def test_packed_int8_artifact_runs_padding_free(tiny_bert: Path, tmp_path: Path) -> None:
    """Static INT8 (QDQ, calibrated scales) is row-independent, so an INT8 artifact packs too: the
    packed run agrees with the same artifact's fixed bucket at every real token (their attention
    precision may differ: BF16 in fixed buckets where the target has it, fp32 when packed)."""
    from lamina.backends.tvm import load
    from lamina.compiler.driver.cli import main
    from lamina.zoo import make_inputs

    np.savez(tmp_path / "calib.npz", **make_inputs(tiny_bert, 32, 16))
    out = tmp_path / "int8.lamina"
    assert main(["compile", str(tiny_bert), "-o", str(out), "--buckets", "4x32", "--packed",
                 "32,64", "--packed-seqs", "4", "--quantize", "int8", "--calibration",
                 str(tmp_path / "calib.npz"), "--calibration-size", "32", "--target-cos",
                 "0.9"]) == 0
    m = load(out, threads=1)
    lens = [9, 2, 30, 17]
    batch, seq = len(lens), max(lens)
    ids = np.random.default_rng(2).integers(1, 1000, (batch, seq)).astype(np.int64)
    mask = (np.arange(seq)[None, :] < np.array(lens)[:, None]).astype(np.int64)
    ids *= mask
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    got = m.run(feeds)["last_hidden_state"]
    assert m.last_plan == "packed 64"
    real = mask.astype(bool)
    assert not got[~real].any()
    with m._slot():
        padded = m._run_bucket(feeds, (4, 32), batch, seq)["last_hidden_state"]
    a, b = got[real], padded[real]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99, cos.min()

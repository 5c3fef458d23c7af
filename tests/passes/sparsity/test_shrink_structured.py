"""shrink-structured: zero heads / FFN neurons -> smaller dense matmuls (structure, no-fire,
numbers, idempotence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from lamina.backends.reference import run
from lamina.compiler.driver import api
from lamina.compiler.ir import clone, const_array
from lamina.compiler.pipeline import PassContext, get_pass
from lamina.passes.sparsity._structure import find_attention_blocks, find_ffn_blocks
from lamina.zoo import make_inputs


@pytest.fixture(scope="module")
def o1(tiny_bert: Path) -> ir.Model:
    return api.optimize(api.load(tiny_bert), "O1")[0]


def _set(lin: ir.Node, idx: int, arr: np.ndarray) -> None:
    v = lin.inputs[idx]
    v.const_value = ir.tensor(np.ascontiguousarray(arr.astype(np.float32)), name=v.name)


def _zero_heads(m: ir.Model, *, v_only: bool = False, qk_only: bool = False) -> None:
    """Zero head 0 (all of it, or only V weights, or only Q weights) in every layer; neurons 0..15
    of each FFN (8 with a zero up column and nonzero bias: a constant folded into the down bias)."""
    for blk in find_attention_blocks(m):
        d = blk.head_dim
        lin = blk.q.linear
        w = const_array(lin.inputs[1]).copy()
        if qk_only:
            w[:, blk.q.lo:blk.q.lo + d] = 0
        else:
            w[:, blk.v.lo:blk.v.lo + d] = 0
            if not v_only:
                wo = const_array(blk.out.inputs[1]).copy()
                wo[:d] = 0
                _set(blk.out, 1, wo)
        _set(lin, 1, w)
    if v_only or qk_only:
        return
    for ffn in find_ffn_blocks(m):
        w1, w2 = const_array(ffn.up.inputs[1]).copy(), const_array(ffn.down.inputs[1]).copy()
        w1[:, :8] = 0
        w2[8:16] = 0
        _set(ffn.up, 1, w1)
        _set(ffn.down, 1, w2)


def _apply(m: ir.Model):
    ctx = PassContext(
        debug_match=frozenset(["shrink-structured"]), current_pass="shrink-structured"
    )
    return get_pass("shrink-structured")().run(m, ctx), ctx


def _numbers(before: ir.Model, after: ir.Model, path: Path) -> None:
    feeds = make_inputs(path, 2, 8)
    feeds["attention_mask"][1, 5:] = 0
    a, b = run(before, feeds), run(after, feeds)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("v_only", [False, True])
def test_shrinks_heads_and_neurons(o1: ir.Model, tiny_bert: Path, v_only: bool):
    m = clone(o1)
    _zero_heads(m, v_only=v_only)
    before = clone(m)
    heads = [b.heads for b in find_attention_blocks(m)]
    widths = [const_array(f.up.inputs[1]).shape[1] for f in find_ffn_blocks(m)]
    result, _ = _apply(m)
    assert result.changed
    # Structure: one head fewer per layer (Q, K, V and Wo shrink with it); 16 neurons fewer per FFN.
    blocks = find_attention_blocks(result.model)
    assert [b.heads for b in blocks] == [h - 1 for h in heads]
    for b in blocks:
        assert const_array(b.q.linear.inputs[1]).shape[1] == 3 * b.heads * b.head_dim
        assert const_array(b.out.inputs[1]).shape[0] == b.heads * b.head_dim
    if not v_only:
        assert [const_array(f.up.inputs[1]).shape[1] for f in find_ffn_blocks(result.model)] == [
            w - 16 for w in widths
        ]
    _numbers(before, result.model, tiny_bert)
    again, _ = _apply(result.model)
    assert not again.changed


def test_keeps_heads_with_zero_q(o1: ir.Model):
    m = clone(o1)
    _zero_heads(m, qk_only=True)
    result, ctx = _apply(m)
    assert not result.changed
    assert any("zero Q or K weights but output the mean of V" in e for e in ctx.explanations), (
        ctx.explanations
    )


def test_dense_model_does_not_fire(o1: ir.Model):
    result, ctx = _apply(clone(o1))
    assert not result.changed
    assert any("no head with zero V" in e for e in ctx.explanations)


def test_few_zero_neurons_are_left(o1: ir.Model):
    m = clone(o1)
    for ffn in find_ffn_blocks(m):
        w2 = const_array(ffn.down.inputs[1]).copy()
        w2[:3] = 0
        _set(ffn.down, 1, w2)
    result, ctx = _apply(m)
    assert not result.changed
    assert any("only 3 of 128 neurons are zero" in e for e in ctx.explanations), ctx.explanations

"""``prune-tokens`` and its ops: structure, must-not-fire reasons, the reference definitions against
their NumPy math (ties, short rows, padding), accuracy against the unpruned graph, idempotence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from lamina.compiler.ir.ops.token_pruning import select_tokens, token_importance
from lamina.compiler.pipeline import PassContext

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _op_model(node: helper.NodeProto, inputs: list[tuple[str, int, list[int]]],
              out_type: int) -> ir.Model:
    g = helper.make_graph([node], "t",
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info(node.output[0], out_type, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("lamina", 1)])
    m.ir_version = 9
    return ir.from_proto(m)


def _mask(lens: list[int], seq: int) -> np.ndarray:
    return (np.arange(seq)[None, :] < np.array(lens)[:, None]).astype(np.int64)


@pytest.mark.parametrize("seed", range(3))
def test_token_importance_reference_equals_numpy(seed: int) -> None:
    from lamina.backends.reference import run

    rng = np.random.default_rng(seed)
    b, s, heads, d = 3, 9, 2, 4
    q = rng.standard_normal((b, s, heads * d)).astype(np.float32)
    k = rng.standard_normal((b, s, heads * d)).astype(np.float32)
    alive = _mask([9, 4, 1], s)
    alive[0, 3] = 0  # a token pruned earlier, inside the row
    node = helper.make_node("TokenImportance", ["q", "k", "alive"], ["imp"], domain="lamina",
                            num_heads=heads, scale=0.5)
    model = _op_model(node, [("q", F, [b, s, heads * d]), ("k", F, [b, s, heads * d]),
                             ("alive", I64, [b, s])], F)
    got = run(model, {"q": q, "k": k, "alive": alive})["imp"]
    want = token_importance(q, k, alive, heads, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # only live tokens receive attention; each live row's importances sum to 1
    assert (want[alive == 0] == 0).all()
    np.testing.assert_allclose(want.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("ratio", [1.0, 0.7, 0.5, 0.3, 0.1])
def test_select_tokens_reference_equals_numpy(ratio: float) -> None:
    from lamina.backends.reference import run

    rng = np.random.default_rng(int(ratio * 10))
    b, s = 6, 12
    mask = _mask([12, 10, 2, 1, 7, 5], s)
    alive = mask.copy()
    alive[0, [2, 5]] = 0        # pruned earlier
    imp = rng.random((b, s)).astype(np.float32)
    imp[4] = 0.25               # all tied: earlier tokens win
    imp[1, 3:6] = 0.9           # a tie at the top
    node = helper.make_node("SelectTokens", ["imp", "alive", "mask"], ["out"], domain="lamina",
                            keep_ratio=ratio)
    model = _op_model(node, [("imp", F, [b, s]), ("alive", I64, [b, s]), ("mask", I64, [b, s])],
                      I64)
    got = run(model, {"imp": imp, "alive": alive, "mask": mask})["out"]
    want = select_tokens(imp, alive, mask, ratio)
    np.testing.assert_array_equal(got, want)
    assert not (want & (1 - alive)).any()                    # a subset of the live tokens
    lengths, n = mask.sum(1), alive.sum(1)
    k = np.minimum(n, np.maximum(2, np.ceil(np.float32(ratio) * lengths - 0.001)))
    np.testing.assert_array_equal(want.sum(1), k)
    last = np.array([np.flatnonzero(a).max() for a in alive])
    assert (want[:, 0] == 1).all() and (want[np.arange(b), last] == 1).all()  # [CLS], [SEP]
    # row 4 (7 tokens, all tied): [SEP] and the earliest tokens
    assert set(np.flatnonzero(want[4]).tolist()) == set(range(int(k[4]) - 1)) | {6}


# -- the pass on a tiny O1 BERT -----------------------------------------------------------------


def _o1(tiny_bert: Path) -> ir.Model:
    from lamina.compiler.driver import api

    return api.optimize(api.load(tiny_bert), "O1")[0]


def _prune(model: ir.Model, keep: str, ctx: PassContext | None = None):
    from lamina.passes.pruning.prune_tokens import PruneTokensOptions, PruneTokensPass

    return PruneTokensPass(PruneTokensOptions(keep=keep))(model, ctx or PassContext())


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def test_structure_one_layer_pruned(tiny_bert: Path) -> None:
    model = _o1(tiny_bert)
    res = _prune(model, "1:0.5")
    assert res.changed and res.stats["pruning_points"] == 1 and res.stats["layers_pruned"] == 1
    g = res.model.graph
    ops = _ops(res.model)
    assert ops.count("TokenImportance") == 1 and ops.count("SelectTokens") == 1
    assert ops.count("Where") == 1
    attns = [n for n in g if n.op_type == "Attention"]
    sel = next(n for n in g if n.op_type == "SelectTokens")
    imp = next(n for n in g if n.op_type == "TokenImportance")
    mask = next(v for v in g.inputs if v.name == "attention_mask")
    assert attns[0].inputs[3] is mask and attns[1].inputs[3] is sel.outputs[0]
    assert imp.inputs[0] is attns[0].inputs[0] and imp.inputs[1] is attns[0].inputs[1]
    assert sel.inputs[2] is mask and sel.attributes["keep_ratio"].value == pytest.approx(0.5)
    out = g.outputs[0]
    assert out.name == "last_hidden_state" and out.producer().op_type == "Where"


@pytest.mark.parametrize("keep,reason", [
    ("1:1", "all ones"),
    ("1:0.5:0.5", "need 2 ratios"),
    ("0.5:0.5", "the first 1"),
    ("1:1.5", "in (0, 1]"),
    ("", "empty"),
])
def test_must_not_fire_with_reason(tiny_bert: Path, keep: str, reason: str) -> None:
    model = _o1(tiny_bert)
    before = _ops(model)
    ctx = PassContext(debug_match=frozenset({"prune-tokens"}))
    res = _prune(model, keep, ctx)
    assert not res.changed and _ops(res.model) == before
    assert reason in res.stats["reason"] and any(reason in e for e in ctx.explanations)


def test_must_not_fire_without_fused_attention(tiny_bert: Path) -> None:
    from lamina.compiler.driver import api

    model = api.optimize(api.load(tiny_bert), "O0")[0]
    res = _prune(model, "1:0.5")
    assert not res.changed and "no lamina::Attention" in res.stats["reason"]


def test_idempotent(tiny_bert: Path) -> None:
    model = _prune(_o1(tiny_bert), "1:0.5").model
    ops = _ops(model)
    res = _prune(model, "1:0.5")
    assert not res.changed and "already pruned" in res.stats["reason"] and _ops(model) == ops


def test_numeric_against_unpruned_graph(tiny_bert: Path) -> None:
    """ONNX Runtime runs the pruned graph (reference definitions). Tokens kept to the end match
    a NumPy replay of the selection; accuracy vs the unpruned graph: mean-pooled cosine >= 0.9
    on seeded inputs at keep 0.5 (the bound for this tiny random model)."""
    from lamina.backends.reference import run
    from lamina.zoo import make_inputs

    base = _o1(tiny_bert)
    pruned = _prune(_o1(tiny_bert), "1:0.5").model
    feeds = make_inputs(str(tiny_bert), 4, 24)
    feeds["attention_mask"] = _mask([24, 17, 9, 2], 24)
    want = run(base, feeds)["last_hidden_state"]
    got = run(pruned, feeds)["last_hidden_state"]
    assert got.shape == want.shape
    m = feeds["attention_mask"][..., None].astype(np.float64)
    pw, pg = (want * m).sum(1) / m.sum(1), (got * m).sum(1) / m.sum(1)
    cos = (pw * pg).sum(1) / np.linalg.norm(pw, axis=1) / np.linalg.norm(pg, axis=1)
    assert cos.min() >= 0.9, cos
    # a row of 2 tokens keeps both ([CLS], [SEP]): identical to the unpruned graph
    np.testing.assert_allclose(got[3, :2], want[3, :2], rtol=1e-4, atol=1e-5)


def test_saved_graph_runs_in_onnx_runtime(tiny_bert: Path, tmp_path: Path) -> None:
    import lamina
    from lamina.backends.reference import run
    from lamina.zoo import make_inputs

    pruned = _prune(_o1(tiny_bert), "1:0.5").model
    path = tmp_path / "pruned.onnx"
    lamina.save_model(pruned, path)
    feeds = make_inputs(str(tiny_bert), 2, 16)
    out = run(path, feeds)
    assert out["last_hidden_state"].shape == (2, 16, 64)

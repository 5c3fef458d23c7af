"""``prune-tokens`` numerics beyond accuracy bounds: a NumPy replay of the selection, a keep ratio
that drops nothing (only the mask and ``Where`` rewiring remain), O1 without ``merge-qkv``, a
textual pipeline, and a six-layer model with repeated ratios (the ``alive`` mask reused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from lamina.compiler.ir.ops.token_pruning import select_tokens, token_importance
from lamina.compiler.pipeline import PassContext

SEQ = 24
LENS = [24, 17, 9, 2]


def _mask(lens: list[int], seq: int) -> np.ndarray:
    return (np.arange(seq)[None, :] < np.array(lens)[:, None]).astype(np.int64)


def _optimize(path: Path, pipeline: str = "O1") -> ir.Model:
    from lamina.compiler.driver import api

    return api.optimize(api.load(path), pipeline)[0]


def _prune(model: ir.Model, keep: str):
    from lamina.passes.pruning.prune_tokens import PruneTokensOptions, PruneTokensPass

    return PruneTokensPass(PruneTokensOptions(keep=keep))(model, PassContext())


def _attns(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Attention" and n.domain == "lamina"]


def _layer_input(attn: ir.Node) -> ir.Value:
    node = attn.inputs[0].producer()
    if node.op_type == "Split":
        node = node.inputs[0].producer()
    assert node.op_type == "Linear"
    return node.inputs[0]


def _feeds(path: Path) -> dict[str, np.ndarray]:
    from lamina.zoo import make_inputs

    feeds = make_inputs(str(path), len(LENS), SEQ)
    feeds["attention_mask"] = _mask(LENS, SEQ)
    return feeds


def _run(model: ir.Model, feeds: dict[str, np.ndarray], extra: list[ir.Value] = ()) -> dict:
    from lamina.backends.reference import run

    for v in extra:
        model.graph.outputs.append(v)
    return run(model, feeds)


def test_selection_and_outputs_match_a_numpy_replay(tiny_bert: Path) -> None:
    """keep=1:0.5 on two layers: alive_1 is select_tokens(token_importance(Q_0, K_0, m)); tokens
    dropped before layer 1 (and padding) carry h_1, the unpruned layer 0's output; kept tokens
    equal the unpruned graph whose layer-1 attention reads alive_1 as its mask."""
    feeds = _feeds(tiny_bert)
    mask = feeds["attention_mask"]
    base = _optimize(tiny_bert)
    a0, a1 = _attns(base)
    heads = a0.attributes["num_heads"].value
    scale = a0.attributes["scale"].value if "scale" in a0.attributes else 1.0
    h1 = _layer_input(a1)
    ref = _run(base, feeds, [a0.inputs[0], a0.inputs[1], h1])
    alive = select_tokens(token_importance(ref[a0.inputs[0].name], ref[a0.inputs[1].name], mask,
                                           heads, scale), mask, mask, 0.5)
    np.testing.assert_array_equal(alive.sum(1), [12, 9, 5, 2])

    pruned = _prune(_optimize(tiny_bert), "1:0.5").model
    sel = next(n for n in pruned.graph if n.op_type == "SelectTokens")
    got = _run(pruned, feeds, [sel.outputs[0]])
    np.testing.assert_array_equal(got[sel.outputs[0].name], alive)
    out = got["last_hidden_state"]

    dropped = alive == 0
    np.testing.assert_allclose(out[dropped], ref[h1.name][dropped], rtol=1e-5, atol=1e-6)

    # the unpruned graph with alive_1 fed as layer 1's key mask
    masked = _optimize(tiny_bert)
    a1m = _attns(masked)[1]
    alive_in = ir.Value(name="alive_1", type=ir.TensorType(ir.DataType.INT64),
                        shape=a1m.inputs[3].shape)
    masked.graph.inputs.append(alive_in)
    a1m.replace_input_with(3, alive_in)
    want = _run(masked, {**feeds, "alive_1": alive})["last_hidden_state"]
    kept = alive != 0
    np.testing.assert_allclose(out[kept], want[kept], rtol=1e-4, atol=1e-5)


def test_ratio_that_drops_nothing_leaves_real_tokens_unchanged(tiny_bert: Path) -> None:
    """keep=0.99 with rows of at most 24 tokens: ceil(0.99 * len - 0.001) = len, so every real token
    stays alive; only the rewiring (mask = alive, Where) remains and real tokens are unchanged."""
    feeds = _feeds(tiny_bert)
    want = _run(_optimize(tiny_bert), feeds)["last_hidden_state"]
    res = _prune(_optimize(tiny_bert), "1:0.99")
    assert res.changed and res.stats["pruning_points"] == 1
    got = _run(res.model, feeds)["last_hidden_state"]
    real = feeds["attention_mask"] != 0
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)


def test_without_merge_qkv(tiny_bert: Path) -> None:
    """O1 minus merge-qkv (Q, K from separate Linears): same wiring, same numbers."""
    from lamina.passes.pipelines import O1_FUSIONS

    fusions = ",".join(p for p in O1_FUSIONS.split(",") if p != "merge-qkv")
    model = _optimize(tiny_bert, "O0," + fusions)
    a0 = _attns(model)[0]
    assert all(a.inputs[0].producer().op_type == "Linear" for a in _attns(model))
    res = _prune(model, "1:0.5")
    assert res.changed and res.stats["layers_pruned"] == 1
    imp = next(n for n in res.model.graph if n.op_type == "TokenImportance")
    assert imp.inputs[0] is a0.inputs[0] and imp.inputs[1] is a0.inputs[1]
    feeds = _feeds(tiny_bert)
    got = _run(res.model, feeds)["last_hidden_state"]
    want = _run(_prune(_optimize(tiny_bert), "1:0.5").model, feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_textual_pipeline_and_stats(tiny_bert: Path) -> None:
    from lamina.compiler.driver import api

    model, _ = api.optimize(api.load(tiny_bert), "O1,prune-tokens{keep=1:0.5}")
    ops = [n.op_type for n in model.graph]
    assert ops.count("TokenImportance") == 1 and ops.count("SelectTokens") == 1
    res = _prune(_optimize(tiny_bert), "1:0.5")
    assert res.stats["mean_keep"] == pytest.approx(0.75)


def _pooled_cosine(want: np.ndarray, got: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    pw, pg = (want * m).sum(1) / m.sum(1), (got * m).sum(1) / m.sum(1)
    return (pw * pg).sum(1) / np.linalg.norm(pw, axis=1) / np.linalg.norm(pg, axis=1)


def test_six_layers_with_repeated_ratios(minilm_ts17: Path, real_text_feeds: dict) -> None:
    """MiniLM (6 layers), keep=1:1:0.7:0.5:0.5:0.3: three pruning points (before layers 2, 3, 5),
    layers 2-5 masked and carried; layer 4 reuses layer 3's alive.

    Accuracy bounds on real text (16 sentences), mean-pooled cosine vs the unpruned model: a ratio
    that drops nothing (0.99) is exact; 1:0.9:0.9:0.9:0.9:0.9 measured min 0.93 (bound 0.9);
    1:1:0.7:0.5:0.5:0.3 measured min 0.48 (bound 0.4): tokens dropped at layer 2 carry a layer-2
    state into the pooled mean, which is far from their layer-6 state (cosine about 0.5)."""
    res = _prune(_optimize(minilm_ts17), "1:1:0.7:0.5:0.5:0.3")
    assert res.stats["pruning_points"] == 3 and res.stats["layers_pruned"] == 4
    g = res.model.graph
    ops = [n.op_type for n in g]
    assert ops.count("SelectTokens") == 3 and ops.count("TokenImportance") == 3
    assert ops.count("Where") == 4
    attns = _attns(res.model)
    mask = next(v for v in g.inputs if v.name == "attention_mask")
    assert attns[0].inputs[3] is mask and attns[1].inputs[3] is mask
    sels = [a.inputs[3].producer() for a in attns[2:]]
    assert [s.op_type for s in sels] == ["SelectTokens"] * 4
    assert attns[3].inputs[3] is attns[4].inputs[3]
    assert [s.attributes["keep_ratio"].value for s in sels] == pytest.approx([0.7, 0.5, 0.5, 0.3])
    # each selection starts from the previous alive mask and scores with the layer before it
    assert sels[1].inputs[1] is sels[0].outputs[0] and sels[3].inputs[1] is sels[1].outputs[0]
    imp = sels[3].inputs[0].producer()
    assert imp.op_type == "TokenImportance" and imp.inputs[0] is attns[4].inputs[0]
    assert imp.inputs[2] is sels[1].outputs[0]

    feeds = dict(real_text_feeds)
    mask_np = feeds["attention_mask"]
    want = _run(_optimize(minilm_ts17), feeds)["last_hidden_state"]
    got = _run(res.model, feeds)["last_hidden_state"]
    assert _pooled_cosine(want, got, mask_np).min() >= 0.4
    mild = _run(_prune(_optimize(minilm_ts17), "1:0.9:0.9:0.9:0.9:0.9").model,
                feeds)["last_hidden_state"]
    assert _pooled_cosine(want, mild, mask_np).min() >= 0.9
    same = _run(_prune(_optimize(minilm_ts17), "1:1:0.99:0.99:0.99:0.99").model,
                feeds)["last_hidden_state"]
    real = mask_np != 0
    np.testing.assert_allclose(same[real], want[real], rtol=1e-4, atol=1e-4)

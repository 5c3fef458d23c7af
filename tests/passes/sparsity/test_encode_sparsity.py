"""encode-sparsity: pruned Linear -> SparseLinear where the cost model predicts a gain (structure,
no-fire, numbers exact against the same masked weights, idempotence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from lamina.backends.reference import run
from lamina.compiler.driver import api
from lamina.compiler.ir import clone, const_array, op_histogram
from lamina.compiler.pipeline import PassContext, get_pass
from lamina.passes.sparsity._cost import CostTable
from lamina.passes.sparsity._prune import prune_weight
from lamina.passes.sparsity.encode_sparsity import (
    DEFAULT_COSTS,
    EncodeSparsityOptions,
    encode_weight,
)
from lamina.zoo import make_inputs

# A table in the proportions measured on an AVX-512 host (the shipped default_costs.json), fixed
# here so the tests do not depend on a measurement.
TABLE = {"target": "test", "tokens": 128, "dense": {"ns_per_mac": 0.03},
         "sparse": {"1": {"ns_per_block": 0.11, "ns_per_dim": 0.1},
                    "4": {"ns_per_block": 0.2, "ns_per_dim": 0.1}}}


@pytest.fixture(scope="module")
def o1(tiny_bert: Path) -> ir.Model:
    return api.optimize(api.load(tiny_bert), "O1")[0]


@pytest.fixture()
def table(tmp_path: Path) -> str:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(TABLE))
    return str(path)


def _pruned(m: ir.Model, sparsity: float, pattern: str) -> ir.Model:
    m = clone(m)
    for node in m.graph:
        if node.op_type == "Linear" and node.domain == "lamina":
            v = node.inputs[1]
            v.const_value = ir.tensor(prune_weight(const_array(v), sparsity, pattern), name=v.name)
    return m


def _apply(m: ir.Model, costs: str):
    ctx = PassContext(debug_match=frozenset(["encode-sparsity"]), current_pass="encode-sparsity")
    return get_pass("encode-sparsity")(EncodeSparsityOptions(costs=costs)).run(m, ctx), ctx


def _numbers(a: ir.Model, b: ir.Model, path: Path) -> None:
    feeds = make_inputs(path, 2, 8)
    feeds["attention_mask"][1, 6:] = 0
    ra, rb = run(a, feeds), run(b, feeds)
    for k in ra:
        np.testing.assert_allclose(rb[k], ra[k], atol=1e-5, rtol=1e-5)


def test_encodes_4x1_pruned_linears(o1: ir.Model, tiny_bert: Path, table: str):
    m = _pruned(o1, 0.9, "4x1")
    before = clone(m)
    linears = op_histogram(m)["lamina::Linear"]
    result, _ = _apply(m, table)
    assert result.changed
    hist = op_histogram(result.model)
    assert hist.get("lamina::SparseLinear") == linears and "lamina::Linear" not in hist
    for node in result.model.graph:
        if node.op_type == "SparseLinear":
            assert node.attributes["block"].value == 4
            data, index = const_array(node.inputs[1]), const_array(node.inputs[2])
            assert data.shape[1] == 4 and index.dtype == np.int64 and np.all(np.diff(index) > 0)
    assert len(result.stats["decisions"]) == linears
    _numbers(before, result.model, tiny_bert)
    again, _ = _apply(result.model, table)
    assert not again.changed


def test_unstructured_90_picks_a_block_width(o1: ir.Model, tiny_bert: Path, table: str):
    m = _pruned(o1, 0.9, "unstructured")
    before = clone(m)
    result, _ = _apply(m, table)
    assert result.changed
    _numbers(before, result.model, tiny_bert)


def test_dense_model_does_not_fire(o1: ir.Model, table: str):
    result, ctx = _apply(clone(o1), table)
    assert not result.changed
    assert any("dense weight (no zeros)" in e for e in ctx.explanations)


@pytest.mark.parametrize("costs", ["table", "default"])
def test_30_percent_unstructured_stays_dense(o1: ir.Model, table: str, costs: str):
    m = _pruned(o1, 0.3, "unstructured")
    result, ctx = _apply(m, table if costs == "table" else str(DEFAULT_COSTS))
    assert not result.changed
    assert result.stats["kept_dense"] > 0
    assert all("predicted gain" in e for e in ctx.explanations if "Linear" in e)


def test_default_table_keeps_big_30_percent_weights_dense():
    w = prune_weight(np.random.default_rng(0).standard_normal((768, 3072)).astype(np.float32), 0.3,
                     "unstructured")
    assert CostTable.load(DEFAULT_COSTS).predict(w).gain < 1.0


def test_encode_weight_roundtrip():
    dense = np.random.default_rng(1).standard_normal((16, 12)).astype(np.float32)
    w = prune_weight(dense, 0.7, "4x1")
    data, index = encode_weight(w, 4)
    back = np.zeros((3, 16, 4), np.float32)
    back[index // 16, index % 16] = data
    np.testing.assert_array_equal(back.transpose(1, 0, 2).reshape(16, 12), w)

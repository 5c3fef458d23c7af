"""Canonicalization passes: structural, must-not-fire, numeric and idempotence checks on tiny
graphs."""

from __future__ import annotations

import numpy as np
import onnx.helper as h
import pytest

import lamina.backends.reference as reference
from lamina.compiler.frontend import apply_shapes
from lamina.compiler.frontend.feeds import make_feeds
from lamina.compiler.ir import op_histogram, to_proto
from lamina.compiler.ir.core import from_proto
from lamina.compiler.pipeline import PassContext, parse_pipeline
from tests.compiler._graphs import const, f32, model_from_nodes, reshape_graph


def run(text: str, model):
    ctx = PassContext()
    results = []
    for p in parse_pipeline(text):
        r = p.run(model, ctx)
        model = r.model
        results.append(r)
    return model, results


def copy(model):
    return from_proto(to_proto(model))


def numerics_equal(before, after, dims=None):
    feeds = make_feeds(before, dims or {"batch": 2, "seq": 3})
    a, b = reference.run(before, feeds), reference.run(after, feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_lift_constants_structural_and_idempotent():
    model = reshape_graph()
    ref = copy(model)
    model, [res] = run("lift-constants", model)
    assert res.changed and res.stats["lifted"] == 1
    assert "Constant" not in op_histogram(model) and "c24" in model.graph.initializers
    numerics_equal(ref, model)
    _, [again] = run("lift-constants", model)
    assert not again.changed


def test_simplify_reshape_structural():
    model, _ = run("lift-constants,infer-shapes,simplify-reshape,remove-dead-code", reshape_graph())
    ops = op_histogram(model)
    assert "Shape" not in ops and "Concat" not in ops and "Gather" not in ops
    reshape = next(n for n in model.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 0, 2, 4]
    numerics_equal(reshape_graph(), model)


def test_simplify_reshape_must_not_fire_on_foreign_dims():
    """The shape comes from another tensor whose dims are unrelated: no rewrite."""
    nodes = [
        h.make_node("Shape", ["z"], ["s"]),
        h.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
        h.make_node("Unsqueeze", ["d0", "ax"], ["u0"]),
        h.make_node("Concat", ["u0", "rest"], ["shape"], axis=0),
        h.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [const("i0", np.array(0, np.int64)), const("ax", np.array([0], np.int64)),
             const("rest", np.array([-1], np.int64))]
    model = model_from_nodes(
        nodes, [f32("x", ["a", 6]), f32("z", ["b", 2])], [f32("y", None)], inits
    )
    model, results = run("infer-shapes,simplify-reshape", model)
    assert not results[-1].changed


def test_fold_constants_with_static_dims():
    model = reshape_graph()
    apply_shapes(model, dims={"batch": 2, "seq": 3})
    ref = copy(model)
    model, _ = run("O0", model)
    ops = op_histogram(model)
    assert set(ops) == {"Reshape", "Relu"}, ops
    numerics_equal(ref, model)
    _, results = run("fold-constants", model)
    assert not results[0].changed


def test_fold_constants_must_not_fire_on_dynamic_shape():
    model = reshape_graph()
    model, results = run("infer-shapes,fold-constants", model)
    assert not results[-1].changed
    assert "Shape" in op_histogram(model)


def test_fold_constants_respects_size_limit():
    nodes = [
        h.make_node("Expand", ["one", "shape"], ["big"]),
        h.make_node("Add", ["x", "big"], ["y"]),
    ]
    inits = [const("one", np.ones((1,), np.float32)), const("shape", np.array([64, 64], np.int64))]
    model = model_from_nodes(nodes, [f32("x", [64, 64])], [f32("y", [64, 64])], inits)
    _, results = run("fold-constants{max-elements=100}", model)
    assert not results[0].changed
    model, results = run("fold-constants", model)
    assert results[0].changed and "Expand" not in op_histogram(model)


@pytest.mark.parametrize("training, expect_removed", [(False, True), (True, False)])
def test_remove_dropout(training, expect_removed):
    nodes = [
        h.make_node("Dropout", ["x", "ratio", "mode"], ["d"]),
        h.make_node("Relu", ["d"], ["y"]),
    ]
    inits = [const("ratio", np.array(0.1, np.float32)), const("mode", np.array(training))]
    model = model_from_nodes(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])], inits)
    model, [res] = run("remove-dropout", model)
    assert res.changed is expect_removed


def test_identity_cse_dead_code():
    nodes = [
        h.make_node("Identity", ["x"], ["i"]),
        h.make_node("Relu", ["i"], ["a"]),
        h.make_node("Relu", ["i"], ["b"]),
        h.make_node("Add", ["a", "b"], ["y"]),
        h.make_node("Sigmoid", ["x"], ["unused"]),
    ]
    model = model_from_nodes(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])])
    ref = copy(model)
    model, results = run("eliminate-identity,cse,remove-dead-code", model)
    assert all(r.changed for r in results)
    assert op_histogram(model) == {"Add": 1, "Relu": 1}
    numerics_equal(ref, model)
    _, again = run("eliminate-identity,cse,remove-dead-code", model)
    assert not any(r.changed for r in again)


def test_identity_on_graph_output_passthrough_is_kept():
    model = model_from_nodes(
        [h.make_node("Identity", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])]
    )
    model, [res] = run("eliminate-identity", model)
    assert not res.changed and op_histogram(model) == {"Identity": 1}


def test_infer_shapes_reports_what_it_annotated():
    """infer-shapes says it changed the model when it recorded new shapes (so
    --print-ir-after-change shows it), and not on a second run."""
    model, (first,) = run("infer-shapes", reshape_graph())
    assert first.changed and first.stats["annotated"] > 0
    _, (second,) = run("infer-shapes", model)
    assert not second.changed and second.stats["annotated"] == 0


def test_cleanup_table_runs_to_a_fixed_point():
    """Identity and inference Dropout in a chain go in one cleanup run (structural, numeric,
    idempotent); a training-mode Dropout stays (must not fire)."""
    nodes = [
        h.make_node("Identity", ["x"], ["a"]),
        h.make_node("Dropout", ["a"], ["b"]),
        h.make_node("Identity", ["b"], ["c"]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("Dropout", ["r", "ratio", "train"], ["y"]),
    ]
    inits = [const("ratio", np.array(0.1, np.float32)), const("train", np.array(True))]
    model = model_from_nodes(nodes, [f32("x", [2, 3])], [f32("y", [2, 3])], inits)
    after, (res,) = run("cleanup", copy(model))
    assert res.stats == {"identity": 2, "dropout": 1}
    assert op_histogram(after) == {"Relu": 1, "Dropout": 1}
    _, (again,) = run("cleanup", after)
    assert not again.changed

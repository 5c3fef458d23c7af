"""``lamina``-domain fused ops against their reference definitions (run by ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_test_utils import run_tvm

pytestmark = pytest.mark.tvm

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("lamina", 1)])
    m.ir_version = 9
    return ir.from_proto(m)


def check(model: ir.Model, feeds, tol=1e-5):
    from lamina.backends.reference import run

    want = run(model, feeds)
    got = run_tvm(model, feeds)
    for g, (name, w) in zip(got, want.items(), strict=True):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, atol=tol, rtol=tol)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, 8)).astype(np.float32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    m = _model([helper.make_node("Gelu", ["x"], ["y"], domain="lamina",
                                 approximate=approximate)], [("x", F, [2, 5, 8])], ["y"])
    check(m, {"x": X})


@pytest.mark.parametrize("activation,residual", [("none", 0), ("gelu", 1), ("gelu_tanh", 0)])
def test_linear(activation, residual):
    w = RNG.standard_normal((8, 6)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    ins = ["x", "w", "b"] + (["r"] if residual else [])
    inputs = [("x", F, [2, 5, 8])] + ([("r", F, [2, 5, 6])] if residual else [])
    m = _model([helper.make_node("Linear", ins, ["y"], domain="lamina", activation=activation,
                                 has_residual=residual)], inputs, ["y"], [("w", w), ("b", b)])
    feeds = {"x": X, "r": RNG.standard_normal((2, 5, 6)).astype(np.float32)}
    check(m, {k: v for k, v in feeds.items() if k in {i[0] for i in inputs}}, tol=1e-4)


@pytest.mark.parametrize("kind", ["none", "key_padding", "additive"])
def test_attention(kind):
    q, k, v = (RNG.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(3))
    inputs = [("q", F, [2, 5, 8]), ("k", F, [2, 5, 8]), ("v", F, [2, 5, 8])]
    feeds = {"q": q, "k": k, "v": v}
    names = ["q", "k", "v"]
    if kind == "key_padding":
        inputs.append(("m", TensorProto.INT64, [2, 5]))
        # second row fully masked: the finite fill (finfo.min) gives it uniform weights, in the
        # reference and in the lowering alike (no NaN, so the NaN -> 0 guard does not fire)
        feeds["m"] = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.int64)
        names.append("m")
    elif kind == "additive":
        inputs.append(("m", F, [2, 1, 1, 5]))
        feeds["m"] = np.where(RNG.random((2, 1, 1, 5)) > 0.3, 0.0, -1e9).astype(np.float32)
        names.append("m")
    m = _model([helper.make_node("Attention", names, ["y"], domain="lamina", num_heads=2,
                                 scale=0.5, mask_kind=kind)], inputs, ["y"])
    check(m, feeds, tol=1e-5)


@pytest.mark.parametrize(
    "activation,residual,block", [("none", 0, 4), ("gelu", 1, 4), ("gelu", 0, 1)]
)
def test_sparse_linear(activation, residual, block):
    from lamina.passes.sparsity._prune import prune_weight
    from lamina.passes.sparsity.encode_sparsity import encode_weight

    w = prune_weight(RNG.standard_normal((8, 12)).astype(np.float32), 0.6, f"{block}x1")
    w[:, :block] = 0  # an output group without blocks
    data, index = encode_weight(w, block)
    b = RNG.standard_normal(12).astype(np.float32)
    ins = ["x", "data", "index", "b"] + (["r"] if residual else [])
    inputs = [("x", F, [2, 5, 8])] + ([("r", F, [2, 5, 12])] if residual else [])
    m = _model(
        [
            helper.make_node(
                "SparseLinear",
                ins,
                ["y"],
                domain="lamina",
                activation=activation,
                has_residual=residual,
                in_features=8,
                out_features=12,
                block=block,
            )
        ],
        inputs,
        ["y"],
        [("data", data), ("index", index), ("b", b)],
    )
    feeds = {"x": X, "r": RNG.standard_normal((2, 5, 12)).astype(np.float32)}
    feeds = {k: v for k, v in feeds.items() if k in {i[0] for i in inputs}}
    check(m, feeds, tol=1e-4)
    from lamina.backends.reference import run

    want = run(m, feeds)["y"]
    got = run_tvm(m, feeds, kernels=True)[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

"""Each converter against ONNX Runtime on a one-node (or few-node) graph built in code."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_test_utils import ort_run, run_tvm

pytestmark = pytest.mark.tvm

F = TensorProto.FLOAT
I64 = TensorProto.INT64
B = TensorProto.BOOL
_NP = {F: np.float32, I64: np.int64, B: np.bool_}


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _feeds(inputs, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for n, t, s in inputs:
        if t == F:
            out[n] = rng.standard_normal(s).astype(np.float32)
        elif t == I64:
            out[n] = rng.integers(0, 3, size=s).astype(np.int64)
        else:
            out[n] = rng.integers(0, 2, size=s).astype(bool)
    return out


def check(nodes, inputs, outputs, inits=(), opset=17, tol=1e-5, feeds=None, kernels=False):
    m = _model(nodes, inputs, outputs, inits, opset)
    feeds = feeds or _feeds(inputs)
    want = ort_run(m, feeds)
    got = run_tvm(m, feeds, kernels=kernels)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if w.dtype == bool or w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, atol=tol, rtol=tol)


X = ("x", F, [2, 3, 4])
Y = ("y", F, [2, 3, 4])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Min", "Max"])
def test_binary_float(op):
    check([helper.make_node(op, ["x", "y"], ["z"])], [X, ("y", F, [3, 1])], [("z", F)])


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "GreaterOrEqual", "LessOrEqual"])
def test_compare(op):
    i = [("a", I64, [2, 5]), ("b", I64, [1, 5])]
    check([helper.make_node(op, ["a", "b"], ["z"])], i, [("z", B)])


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    check([helper.make_node(op, ["a", "b"], ["z"])], [("a", B, [2, 5]), ("b", B, [2, 5])],
          [("z", B)])


def test_not_isnan_where():
    nodes = [helper.make_node("Not", ["c"], ["nc"]),
             helper.make_node("IsNaN", ["x"], ["n"]),
             helper.make_node("Or", ["nc", "n"], ["m"]),
             helper.make_node("Where", ["m", "x", "y"], ["z"])]
    feeds = _feeds([("c", B, [2, 3, 4]), X, Y])
    feeds["x"][0, 0, 0] = np.nan
    check(nodes, [("c", B, [2, 3, 4]), X, Y], [("z", F), ("n", B)], feeds=feeds)


@pytest.mark.parametrize("op", ["Sqrt", "Erf", "Tanh", "Neg", "Exp", "Relu", "Sigmoid", "Abs",
                                "Log", "Reciprocal"])
def test_unary(op):
    inputs = [X]
    feeds = _feeds(inputs)
    if op in ("Sqrt", "Log"):
        feeds["x"] = np.abs(feeds["x"]) + 0.1
    check([helper.make_node(op, ["x"], ["z"])], inputs, [("z", F)], feeds=feeds)


@pytest.mark.parametrize("exp", [2.0, 0.5, 3.0])
def test_pow(exp):
    feeds = {"x": np.abs(_feeds([X])["x"]) + 0.1}
    check([helper.make_node("Pow", ["x", "e"], ["z"])], [X], [("z", F)],
          inits=[("e", np.array(exp, np.float32))], feeds=feeds)


def test_integer_div_truncates():
    feeds = {"a": np.array([[7, -7, 9, -9]], np.int64), "b": np.array([[2, 2, -4, 4]], np.int64)}
    check([helper.make_node("Div", ["a", "b"], ["z"])], [("a", I64, [1, 4]), ("b", I64, [1, 4])],
          [("z", I64)], feeds=feeds)


def test_clip_and_identity_dropout():
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Identity", ["c"], ["i"]),
             helper.make_node("Dropout", ["i"], ["z"])]
    check(nodes, [X], [("z", F)], inits=[("lo", np.array(-0.5, np.float32)),
                                         ("hi", np.array(0.7, np.float32))])


def test_cast():
    nodes = [helper.make_node("Cast", ["a"], ["f"], to=F),
             helper.make_node("Cast", ["f"], ["b"], to=B)]
    check(nodes, [("a", I64, [2, 5])], [("f", F), ("b", B)])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce(op, opset):
    axes_as_input = opset >= 18 or op == "ReduceSum"
    if axes_as_input:
        node = helper.make_node(op, ["x", "axes"], ["z"], keepdims=1)
        inits = [("axes", np.array([-1], np.int64))]
    else:
        node = helper.make_node(op, ["x"], ["z"], axes=[-1], keepdims=1)
        inits = []
    check([node], [X], [("z", F)], inits=inits, opset=opset)


def test_reduce_all_no_keepdims():
    check([helper.make_node("ReduceSum", ["x"], ["z"], keepdims=0)], [X], [("z", F)])


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax(opset):
    check([helper.make_node("Softmax", ["x"], ["z"], axis=-1 if opset >= 13 else 2)], [X],
          [("z", F)], opset=opset)


def test_softmax_opset11_coerced_2d():
    check([helper.make_node("Softmax", ["x"], ["z"], axis=1)], [X], [("z", F)], opset=11)


def test_layer_norm():
    inits = [("g", np.linspace(0.5, 1.5, 4, dtype=np.float32)),
             ("b", np.linspace(-1, 1, 4, dtype=np.float32))]
    check([helper.make_node("LayerNormalization", ["x", "g", "b"], ["z"], axis=-1,
                            epsilon=1e-12)], [X], [("z", F)], inits=inits)


@pytest.mark.parametrize("word_also_output", [False, True])
def test_embedding_sum_layer_norm_runs_as_one_kernel(word_also_output, tmp_path):
    """BERT's embeddings (word and token-type lookups by run-time ids, plus a constant position
    term broadcast over the batch, then LayerNorm) lower to one kernel, with no ``take`` left.
    Not when a lookup is read elsewhere too (it would be a second term that is not a lookup).
    Equal to ONNX Runtime."""
    import re

    from lamina.backends.tvm import build_artifact, load

    rng = np.random.default_rng(5)
    n, vocab, batch, seq = 64, 50, 2, 16
    inits = [("word", rng.standard_normal((vocab, n)).astype(np.float32)),
             ("tt", rng.standard_normal((2, n)).astype(np.float32)),
             ("pos", rng.standard_normal((1, seq, n)).astype(np.float32)),
             ("g", rng.uniform(0.5, 1.5, n).astype(np.float32)),
             ("b", rng.standard_normal(n).astype(np.float32))]
    nodes = [helper.make_node("Gather", ["word", "ids"], ["we"]),
             helper.make_node("Gather", ["tt", "types"], ["te"]),
             helper.make_node("Add", ["we", "te"], ["s1"]),
             helper.make_node("Add", ["s1", "pos"], ["s2"]),
             helper.make_node("LayerNormalization", ["s2", "g", "b"], ["z"], axis=-1,
                              epsilon=1e-12)]
    outputs = [("z", F)] + ([("we", F)] if word_also_output else [])
    model = _model(nodes, [("ids", I64, [batch, seq]), ("types", I64, [batch, seq])], outputs,
                   inits)
    dump = tmp_path / "dump"
    art = build_artifact({(batch, seq): ir.from_proto(model)}, tmp_path / "e.lamina",
                         target="x86-64", threads=2, schedule="none", dump_dir=dump)
    final = sorted((dump / "tvm").glob("*"))[-1].read_text()
    fused = f"lamina_embedding_layer_norm_{batch * seq}x{n}" in final
    assert fused != word_also_output
    assert bool(re.findall(r"\btake\b", final)) == word_also_output
    feeds = {"ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64),
             "types": rng.integers(0, 2, (batch, seq)).astype(np.int64)}
    got = load(art).run(feeds)
    for (name, _), w in zip(outputs, ort_run(model, feeds), strict=True):
        np.testing.assert_allclose(got[name], w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_mean_and_inv_std_dev_outputs(axis):
    inits = [
        (
            "g",
            np.linspace(0.5, 1.5, 12 if axis == 1 else 4, dtype=np.float32).reshape(
                (3, 4) if axis == 1 else (4,)
            ),
        ),
        ("b", np.float32(0.25) * np.ones((3, 4) if axis == 1 else 4, np.float32)),
    ]
    check([helper.make_node("LayerNormalization", ["x", "g", "b"], ["z", "mean", "inv"], axis=axis,
                            epsilon=1e-5)], [X], [("z", F), ("mean", F), ("inv", F)], inits=inits)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_reduce_select_last_index(op, keepdims):
    x = np.array([[[1, 3, 3, 0], [2, 2, 1, 1], [0, 0, 0, 0]],
                  [[5, 1, 5, 1], [4, 4, 4, 4], [1, 2, 1, 2]]], np.float32)
    for axis in (1, -1):
        check(
            [helper.make_node(op, ["x"], ["z"], axis=axis, keepdims=keepdims, select_last_index=1)],
            [X],
            [("z", I64)],
            feeds={"x": x},
        )


def test_layer_norm_without_bias():
    inits = [("g", np.linspace(0.5, 1.5, 4, dtype=np.float32))]
    check([helper.make_node("LayerNormalization", ["x", "g"], ["z"])], [X], [("z", F)],
          inits=inits)


def test_matmul_batched_and_weight():
    w = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["h", "ht"], ["z"])]
    check(nodes, [X], [("z", F)], inits=[("w", w)], tol=1e-4)


@pytest.mark.parametrize("trans", [(0, 0), (0, 1), (1, 0)])
def test_gemm(trans):
    ta, tb = trans
    rng = np.random.default_rng(2)
    a_shape = [4, 3] if ta else [3, 4]
    w = rng.standard_normal((5, 4) if tb else (4, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    check([helper.make_node("Gemm", ["a", "w", "c"], ["z"], transA=ta, transB=tb, alpha=0.5,
                            beta=2.0)], [("a", F, a_shape)], [("z", F)],
          inits=[("w", w), ("c", c)], tol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_linear_takes_the_dense_kernel(trans_b, bias):
    """A Linear layer exported as Gemm (the BERT pooler) runs the packed-weight kernel: the weight
    transpose happens at compile time, and no permute_dims is left in the program."""
    from lamina.backends.tvm.lower import lower_buckets
    from lamina.backends.tvm.target import resolve_target

    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8) if trans_b else (8, 16)).astype(np.float32)
    inits = [("w", w)] + ([("c", rng.standard_normal(16).astype(np.float32))] if bias else [])
    node = helper.make_node("Gemm", ["a", "w"] + (["c"] if bias else []), ["z"], transB=trans_b)
    args = ([node], [("a", F, [3, 8])], [("z", F)])
    check(*args, inits=inits, tol=1e-5, kernels=True)
    low = lower_buckets({(1, 1): ir.from_proto(_model(*args, inits))},
                        target=resolve_target("x86-64", threads=1).tvm_target)
    text = low.mod.script()
    assert "lamina_dense_3x8x16" in text and "permute_dims" not in text


def test_reshape_flatten_squeeze_unsqueeze():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["q"]),
             helper.make_node("Flatten", ["q"], ["z"], axis=2)]
    check(nodes, [X], [("z", F)], inits=[("s", np.array([0, -1, 2], np.int64)),
                                         ("ax", np.array([1], np.int64))])


def test_unsqueeze_opset11_attr():
    check([helper.make_node("Unsqueeze", ["x"], ["z"], axes=[0, -1])], [X], [("z", F)],
          opset=11)


def test_concat_slice_split():
    nodes = [helper.make_node("Concat", ["x", "y"], ["c"], axis=1),
             helper.make_node("Slice", ["c", "st", "en", "ax", "sp"], ["s"]),
             helper.make_node("Split", ["s", "sz"], ["p", "q"], axis=2)]
    inits = [("st", np.array([1, -1], np.int64)), ("en", np.array([100, -100], np.int64)),
             ("ax", np.array([1, 2], np.int64)), ("sp", np.array([2, -1], np.int64)),
             ("sz", np.array([1, 3], np.int64))]
    check(nodes, [X, Y], [("p", F), ("q", F)], inits=inits)


def test_split_num_outputs_opset18():
    check([helper.make_node("Split", ["x"], ["a", "b"], axis=2, num_outputs=2)], [X],
          [("a", F), ("b", F)], opset=18)


def test_expand_tile():
    nodes = [helper.make_node("Expand", ["v", "s"], ["e"]),
             helper.make_node("Tile", ["e", "r"], ["z"])]
    check(nodes, [("v", F, [3, 1])], [("z", F)],
          inits=[("s", np.array([2, 3, 4], np.int64)), ("r", np.array([1, 2, 1], np.int64))])


def test_gather_embedding_and_negative_index():
    table = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["t", "ids"], ["e"]),
             helper.make_node("Gather", ["e", "k"], ["z"], axis=1)]
    feeds = {"ids": np.array([[1, 9, -1], [0, 2, -10]], np.int64)}
    check(nodes, [("ids", I64, [2, 3])], [("z", F)],
          inits=[("t", table), ("k", np.array(-1, np.int64))], feeds=feeds)


def test_gather_nd():
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
             "i": np.array([[1], [2]], np.int64)}
    check([helper.make_node("GatherND", ["x", "i"], ["z"], batch_dims=1)],
          [X, ("i", I64, [2, 1])], [("z", F)], feeds=feeds)


def test_shape_range_constantofshape_fold():
    # The mask arithmetic of a TorchScript export, on static shapes: folds to constants.
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "one"], ["n"], axis=0),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("ConstantOfShape", ["n1"], ["c"],
                              value=numpy_helper.from_array(np.array([2.0], np.float32))),
             helper.make_node("Cast", ["r"], ["rf"], to=F),
             helper.make_node("Mul", ["rf", "c"], ["m"]),
             helper.make_node("Unsqueeze", ["m", "ax1"], ["m2"]),
             helper.make_node("Add", ["x", "m2"], ["z"], )]
    inits = [("one", np.array(1, np.int64)), ("zero", np.array(0, np.int64)),
             ("ax0", np.array([0], np.int64)), ("ax1", np.array([1], np.int64))]
    check(nodes, [("x", F, [2, 3, 3])], [("z", F)], inits=inits)


def test_constant_node_and_cumsum():
    nodes = [helper.make_node("Constant", [], ["k"], value_float=3.0),
             helper.make_node("Mul", ["x", "k"], ["m"]),
             helper.make_node("CumSum", ["m", "ax"], ["z"])]
    check(nodes, [X], [("z", F)], inits=[("ax", np.array(1, np.int64))])


def test_unsupported_op_names_node():
    from lamina.compiler.errors import BackendError

    m = _model([helper.make_node("Det", ["x"], ["z"], name="my_det")], [("x", F, [3, 3])],
               [("z", F)])
    with pytest.raises(BackendError, match="my_det.*Det"):
        run_tvm(m, _feeds([("x", F, [3, 3])]))


def test_symbolic_input_refused():
    from lamina.compiler.errors import BackendError

    m = _model([helper.make_node("Relu", ["x"], ["z"])], [("x", F, ["batch", 3])], [("z", F)])
    with pytest.raises(BackendError, match="'x'.*symbolic dim 'batch'"):
        run_tvm(m, {})

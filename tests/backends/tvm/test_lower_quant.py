"""Lowering of QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear (fp32 emulation) against
ONNX Runtime: bit-exact integers (round half to even, saturation), and quantized lamina::Linear
still on the dense
kernel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm_test_utils import ort_run, run_tvm

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _ties(scale: float) -> np.ndarray:
    """Values on exact .5 ties of ``x / scale`` and far outside the range (saturation)."""
    k = np.arange(-300, 300, dtype=np.float32)
    x = np.concatenate([(k + 0.5) * np.float32(scale), k * np.float32(scale) * 1.37]).astype(
        np.float32
    )
    return x.reshape(4, 300)


def _check_exact(m, feeds):
    want = ort_run(m, feeds)
    got = run_tvm(m, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("zp", "dtype"),
    [
        (np.uint8(128), TensorProto.UINT8),
        (np.int8(0), TensorProto.INT8),
        (np.uint8(3), TensorProto.UINT8),
    ],
)
def test_quantize_dequantize_exact(zp, dtype):
    scale = np.float32(0.25)  # ties are exact in binary
    m = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        [("x", F, [4, 300])],
        [("q", dtype), ("y", F)],
        [("s", scale), ("z", zp)],
    )
    _check_exact(m, {"x": _ties(float(scale))})


def test_dynamic_quantize_exact():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 7, 16)) * 3 + 1).astype(np.float32)
    m = _model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"]),
            helper.make_node("DequantizeLinear", ["y", "s", "z"], ["d"]),
        ],
        [("x", F, [3, 7, 16])],
        [("y", TensorProto.UINT8), ("s", F), ("z", TensorProto.UINT8), ("d", F)],
    )
    _check_exact(m, {"x": x})


def test_per_axis_dequantize_of_constant_folds():
    rng = np.random.default_rng(1)
    wq = rng.integers(-127, 128, (8, 6)).astype(np.int8)
    ws = (rng.random(6) * 0.01 + 0.001).astype(np.float32)
    m = _model(
        [
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [("x", F, [2, 5, 8])],
        [("y", F)],
        [("wq", wq), ("ws", ws), ("wz", np.zeros(6, np.int8))],
    )
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(
        run_tvm(m, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


def test_quantized_linear_takes_dense_kernel(tmp_path):
    """O1 + quantize-int8 on a tiny MLP: TVM (kernels on) matches ONNX Runtime, and the weights
    (folded from DequantizeLinear at compile time) are packed for the dense kernel."""
    from lamina.backends.tvm.lower import lower_buckets
    from lamina.backends.tvm.target import resolve_target
    from lamina.compiler.driver.api import optimize
    from lamina.compiler.frontend import specialize
    from lamina.compiler.ir import to_proto
    from lamina.compiler.pipeline import PassContext, get_pass
    from tests.passes.quant._graphs import feeds, mlp, write_npz

    m, _ = optimize(mlp(), "O1")
    calib = write_npz(m, tmp_path / "c.npz")
    p = get_pass("quantize-int8")
    m = p(p.Options(calibration=str(calib))).run(m, PassContext()).model
    m = specialize(m, {"batch": 2, "seq": 6})
    x = feeds(m, 2)
    proto = to_proto(m)
    np.testing.assert_allclose(
        run_tvm(proto, x, kernels=True)[0], ort_run(proto, x)[0], rtol=1e-4, atol=1e-4
    )
    target = resolve_target("x86-64", threads=1)
    low = lower_buckets({(2, 6): m}, target=target.tvm_target)
    packed = [name for name in low.params if "@packed" in name]
    assert len(packed) == 2, list(low.params)

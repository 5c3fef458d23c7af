"""ONNX Runtime's three quantized forms load, canonicalize into the QDQ form and match ONNX Runtime
on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h
import pytest

from lamina.backends.reference import run
from lamina.compiler.driver import api
from lamina.compiler.ir import op_histogram
from lamina.passes.quant._utils import QUANT_KEY

ortq = pytest.importorskip("onnxruntime.quantization")
RNG = np.random.default_rng(0)


def _float_model(path: Path) -> Path:
    w1 = RNG.normal(0, 0.3, (16, 32)).astype(np.float32)
    w2 = RNG.normal(0, 0.3, (32, 8)).astype(np.float32)
    g = h.make_graph(
        [
            h.make_node("MatMul", ["x", "W1"], ["m1"], name="fc1"),
            h.make_node("Relu", ["m1"], ["r"], name="relu"),
            h.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
        ],
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 16])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 8])],
        [onnx.numpy_helper.from_array(w1, "W1"), onnx.numpy_helper.from_array(w2, "W2")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


class _Reader(ortq.CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.it = iter([{"x": rng.normal(0, 1, (8, 16)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.it, None)


def _quantized(tmp_path: Path, form: str) -> Path:
    src = _float_model(tmp_path / "f.onnx")
    out = tmp_path / f"{form}.onnx"
    if form.startswith("dynamic"):
        ortq.quantize_dynamic(str(src), str(out), per_channel=form == "dynamic-per-channel")
    else:
        fmt = ortq.QuantFormat.QDQ if form == "qdq" else ortq.QuantFormat.QOperator
        ortq.quantize_static(
            str(src),
            str(out),
            _Reader(),
            quant_format=fmt,
            per_channel=form == "qdq",
            op_types_to_quantize=["MatMul"],
        )
    return out


FORMS = {
    "dynamic": ("MatMulInteger", "imported:dynamic"),
    "dynamic-per-channel": ("MatMulInteger", "imported:dynamic"),
    "qdq": ("QuantizeLinear", "imported:qdq"),
    "qoperator": ("QLinearMatMul", "imported:qoperator"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_canonical_form_and_numbers(tmp_path: Path, form: str) -> None:
    path = _quantized(tmp_path, form)
    marker, tag = FORMS[form]
    assert marker in op_histogram(api.load(path))
    model, _ = api.optimize(api.load(path), "O1")
    ops = op_histogram(model)
    assert "MatMulInteger" not in ops and "QLinearMatMul" not in ops
    mms = [n for n in model.graph if n.op_type == "MatMul"]
    assert len(mms) == 2
    for mm in mms:
        assert mm.metadata_props[QUANT_KEY] == tag
        x, w = (v.producer() for v in mm.inputs)
        assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear"
        assert w.inputs[0].const_value.numpy().dtype == np.int8
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (5, 16)).astype(np.float32)}
    want, got = run(path, feeds)["y"], run(model, feeds)["y"]
    # Within quantization tolerance: fp32 summation order, and one output quantum for QLinearMatMul
    # ties.
    np.testing.assert_allclose(got, want, atol=0.02 * float(np.abs(want).max()), rtol=0)
    # Idempotent: a second canonicalization finds nothing.
    again, _ = api.optimize(model, "canonicalize-quant")
    assert op_histogram(again) == ops


@pytest.mark.slow
def test_compiles_and_matches_on_tvm(tmp_path: Path) -> None:
    import tvm  # noqa: F401 - a hard dependency: a broken install fails

    from lamina.compiler.frontend import specialize
    from lamina.compiler.ir import to_proto
    from tests.backends.tvm.tvm_test_utils import run_tvm

    path = _quantized(tmp_path, "dynamic-per-channel")
    model, _ = api.optimize(api.load(path), "O1")
    model = specialize(model, {"b": 5})
    feeds = {"x": np.random.default_rng(3).normal(0, 1, (5, 16)).astype(np.float32)}
    want = run(path, feeds)["y"]
    got = run_tvm(to_proto(model), feeds, kernels=True)[0]
    np.testing.assert_allclose(got, want, atol=0.02 * float(np.abs(want).max()), rtol=0)


def test_fp32_model_untouched(tmp_path: Path) -> None:
    model, _ = api.optimize(api.load(_float_model(tmp_path / "f.onnx")), "canonicalize-quant")
    assert op_histogram(model) == {"MatMul": 2, "Relu": 1}

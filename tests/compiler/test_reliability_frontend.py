"""What a model declares against what it holds, budgets on what passes allocate, third-party logs as
one line, and NaN/Inf weights named."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from lamina.compiler.driver.cli import main
from lamina.compiler.errors import FrontendError, UsageError
from lamina.compiler.frontend import load_model


def _model(path: Path, *, init: onnx.TensorProto | None = None, dims=(2, 3),
           nodes: list | None = None) -> Path:
    w = init if init is not None else helper.make_tensor(
        "w", TensorProto.FLOAT, [3, 4], np.arange(12, dtype=np.float32))
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_initializer_dims_against_data(tmp_path: Path):
    raw = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.zeros(12, np.float32).tobytes(),
                             raw=True)
    raw.dims[0] = 2**40
    with pytest.raises(FrontendError) as e:
        load_model(_model(tmp_path / "raw.onnx", init=raw))
    assert "tensor 'w' declares dims [1099511627776, 4] of float32" in _one_line(e)
    typed = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.zeros(12, np.float32))
    del typed.float_data[5:]
    with pytest.raises(FrontendError, match=r"'w' declares dims \[3, 4\] of float32 \(12 values\) "
                                            r"but holds 5 values"):
        load_model(_model(tmp_path / "typed.onnx", init=typed))
    neg = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.zeros(12, np.float32))
    neg.dims[1] = -4
    with pytest.raises(FrontendError, match="'w' has a negative dim"):
        load_model(_model(tmp_path / "neg.onnx", init=neg))


def test_constant_value_dims_against_data(tmp_path: Path):
    value = helper.make_tensor("", TensorProto.INT64, [2], [3, 4])
    value.dims[0] = 2**40
    nodes = [helper.make_node("Constant", [], ["s"], value=value),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    with pytest.raises(
        FrontendError, match=r"\(a Constant's value\) declares dims \[1099511627776\]"
    ):
        load_model(_model(tmp_path / "c.onnx", nodes=nodes))


@pytest.mark.parametrize(
    "dim, why",
    [(0, "an empty input cannot run"), (2**40, "beyond Lamina's limit of 16777216 per dim")],
)
def test_input_dims_bounded(tmp_path: Path, dim: int, why: str):
    with pytest.raises(FrontendError) as e:
        load_model(_model(tmp_path / "m.onnx", dims=(dim, 3)))
    assert f"input 'x' declares dim 0 = {dim}: {why}" in _one_line(e)
    with pytest.raises(FrontendError, match="declares 268697600 elements, beyond"):
        load_model(_model(tmp_path / "m.onnx", dims=(16400, 16384, 1)))


def test_fold_budget_checked_before_evaluating():
    from lamina.compiler.ir.evaluate import TooLarge, evaluate_node

    shape = ir.Value(name="shape")
    node = ir.Node("", "ConstantOfShape", [shape], num_outputs=1)
    with pytest.raises(TooLarge, match=r"would produce 1099511627776 elements"):
        evaluate_node(node, [np.array([2**20, 2**20], np.int64)], 18, max_elements=1 << 22)
    out = evaluate_node(node, [np.array([4, 5], np.int64)], 18, max_elements=1 << 22)
    assert out[0].shape == (4, 5)


def test_fold_constants_leaves_a_huge_constant_of_shape(tmp_path: Path):
    from lamina.compiler.driver import api

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2**20, 2**20])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("Shape", ["big"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.INT64, [2])], [shape]
    )
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    model, _ = api.optimize(api.load(path), "O0")
    # Shape(big) folds from the static shape; the 2**40-element tensor is never materialised.
    assert all(
        v.const_value is None or v.const_value.size < 1 << 22
        for v in model.graph.initializers.values()
    )


def test_seeded_feeds_budget(tmp_path: Path):
    from lamina.compiler.frontend.feeds import make_feeds

    model = load_model(_model(tmp_path / "m.onnx", dims=("batch", 3)))
    assert make_feeds(model)["x"].shape == (2, 3)
    with pytest.raises(UsageError, match=r"input 'x': example inputs of shape \[30000000, 3\]"):
        make_feeds(model, {"batch": 30_000_000})


# -- logs -------------------------------------------------------------------------------------


def test_third_party_records_are_one_line(capsys):
    from lamina.compiler.driver.logs import setup_logging

    setup_logging(debug=False)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("onnx_ir.passes.x").warning("something failed:\n  detail", exc_info=True)
    err = capsys.readouterr().err
    assert err == "lamina: WARNING: [onnx_ir] something failed: (ValueError: boom)\n"


def test_failed_shape_inference_is_one_line_naming_the_node(tmp_path: Path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise onnx.shape_inference.InferenceError(
            "[ShapeInferenceError] (op_type:MatMul, node name: mm): Incompatible dimensions\n"
            "  at some C++ frame"
        )

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    path = _model(tmp_path / "m.onnx")
    assert (
        main(["opt", str(path), "-o", str(tmp_path / "o.onnx"), "--pipeline", "infer-shapes"]) == 0
    )
    err = [ln for ln in capsys.readouterr().err.splitlines() if "WARNING" in ln]
    assert len(err) == 1, err
    assert (
        "infer-shapes: ONNX shape inference failed at node 'mm' (MatMul): Incompatible dimensions"
        in err[0]
    )
    assert "Traceback" not in err[0]


# -- NaN / Inf weights ------------------------------------------------------------------------


def test_non_finite_weights_warned(tmp_path: Path, caplog):
    w = np.arange(12, dtype=np.float32)
    w[3], w[7] = np.nan, np.inf
    init = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], w)
    ninf = helper.make_tensor("fill", TensorProto.FLOAT, [], [-np.inf])  # a mask fill value: fine
    path = _model(tmp_path / "nan.onnx", init=init)
    m = onnx.load(str(path))
    m.graph.initializer.append(ninf)
    onnx.save(m, str(path))
    with caplog.at_level(logging.WARNING):
        load_model(path)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1, msgs
    assert "weight 'w' (1 NaN, 1 Inf of 12) holds NaN or Inf values" in msgs[0]
    assert "fill" not in msgs[0]


def test_cli_has_no_traceback_on_bad_input(tmp_path: Path):
    import subprocess

    path = _model(tmp_path / "m.onnx", dims=(0, 3))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lamina.compiler.driver.cli",
            "compile",
            str(path),
            "-o",
            str(tmp_path / "m.lamina"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "declares dim 0 = 0" in r.stderr

"""ONNX's backend node tests for the ops the lowering claims (see ``onnx_conformance.py``).

CI runs a seeded sample plus the cases that once failed; ``bench/onnx_conformance.py`` runs every
in-scope case (about 5 minutes on 2 cores) and prints the counts.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

pytestmark = pytest.mark.tvm

SAMPLE = 24
SEED = 16
# Once failures: rank-0 inputs and outputs, IsInf's sign attributes, string tensors, training
# Dropout, Flatten's negative axis, negative run-time indices; opsets above 22 (Flatten-25,
# Cast-25 and ReduceMax-20 here).
REGRESSIONS = [
    "test_clip_default_inbounds",
    "test_clip_default_int8_min",
    "test_gemm_default_scalar_bias",
    "test_pow_types_float32_int32",
    "test_training_dropout_zero_ratio",
    "test_training_dropout",
    "test_nllloss_NC_expanded",
    "test_isinf_positive",
    "test_quantizelinear_blocked_asymmetric",  # blocked (opset 21) scales and zero points
    "test_dequantizelinear_blocked",
    "test_isinf_negative",
    "test_equal_string_broadcast",
    "test_reduce_max_bool_inputs",
    "test_flatten_negative_axis1",
    "test_gather_elements_negative_indices",
    "test_cast_FLOAT_to_DOUBLE",
]


@pytest.fixture(scope="module")
def cases():
    from onnx_conformance import in_scope_cases

    return {c.name: c for c in in_scope_cases()}


def _check(outcomes) -> None:
    from onnx_conformance import summary

    bad = [o for o in outcomes if o.status == "failed"]
    assert not bad, summary(outcomes)
    for o in outcomes:
        if o.status == "refused":
            # one clean line that names the op and says why
            assert "\n" not in o.detail.strip() and any(op in o.detail for op in o.ops) or \
                "graph input" in o.detail, o.detail
            assert "opset" not in o.detail.lower(), o.detail


def test_in_scope_follows_the_registry(cases):
    from onnx_conformance import case_ops

    from lamina.backends.tvm.lower.registry import supported_ops

    claimed = set(supported_ops())
    assert len(cases) > 800
    assert all(case_ops(c.model) <= claimed for c in cases.values())
    # every claimed ONNX op is exercised by some case
    covered = set().union(*(case_ops(c.model) for c in cases.values()))
    untested = {op for op in claimed if "::" not in op} - covered
    assert not untested, untested


def test_regressions(cases):
    from onnx_conformance import run_cases

    outcomes = run_cases(cases[n] for n in REGRESSIONS if n in cases)
    _check(outcomes)
    by_name = {o.name: o for o in outcomes}
    for name in ("test_clip_default_inbounds", "test_gemm_default_scalar_bias",
                 "test_nllloss_NC_expanded", "test_isinf_positive", "test_isinf_negative",
                 "test_pow_types_float32_int32", "test_flatten_negative_axis1",
                 "test_gather_elements_negative_indices", "test_cast_FLOAT_to_DOUBLE",
                 "test_quantizelinear_blocked_asymmetric", "test_dequantizelinear_blocked"):
        assert by_name[name].status == "passed", (name, by_name[name].detail)
    assert by_name["test_equal_string_broadcast"].status == "refused"
    assert "string tensors are not supported" in by_name["test_equal_string_broadcast"].detail


def test_seeded_sample(cases):
    from onnx_conformance import run_cases

    names = sorted(set(cases) - set(REGRESSIONS))
    sample = random.Random(SEED).sample(names, SAMPLE)
    _check(run_cases(cases[n] for n in sample))


# -- rank-0 tensors end to end, built here -------------------------------------------------------

def _compile(tmp_path: Path, graph, opset: int = 18):
    from lamina.backends.tvm import load
    from lamina.compiler.driver import api

    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    return load(api.compile(src, tmp_path / "m.lamina", buckets=[(1, 1)]), threads=1)


def test_rank0_inputs_and_outputs(tmp_path: Path):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])
    lo = oh.make_tensor_value_info("lo", TensorProto.FLOAT, [])
    s = oh.make_tensor_value_info("s", TensorProto.FLOAT, [])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    total = oh.make_tensor_value_info("total", TensorProto.FLOAT, [])
    graph = oh.make_graph([
        oh.make_node("Clip", ["x", "lo"], ["c"]),
        oh.make_node("Pow", ["c", "s"], ["y"]),
        oh.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
    ], "rank0", [x, lo, s], [y, total])
    art = _compile(tmp_path, graph)
    assert [list(i.dims) for i in art.inputs] == [[3, 4], [], []]
    assert [list(o.dims) for o in art.outputs] == [[3, 4], []]
    rng = np.random.default_rng(0)
    xv = rng.uniform(-1, 2, (3, 4)).astype(np.float32)
    out = art.run({"x": xv, "lo": np.float32(0.5), "s": np.array(2.0, np.float32)})
    want = np.clip(xv, 0.5, None) ** 2
    assert out["y"].shape == (3, 4) and out["total"].shape == ()
    np.testing.assert_allclose(out["y"], want, rtol=1e-6)
    np.testing.assert_allclose(out["total"], want.sum(), rtol=1e-5)


def test_isinf_signs(tmp_path: Path):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [5])
    outs = [oh.make_tensor_value_info(n, TensorProto.BOOL, [5]) for n in ("both", "pos", "neg")]
    graph = oh.make_graph([
        oh.make_node("IsInf", ["x"], ["both"]),
        oh.make_node("IsInf", ["x"], ["pos"], detect_negative=0),
        oh.make_node("IsInf", ["x"], ["neg"], detect_positive=0),
    ], "isinf", [x], outs)
    art = _compile(tmp_path, graph, opset=20)
    xv = np.array([-np.inf, -1.0, 0.0, np.inf, np.nan], np.float32)
    out = art.run({"x": xv})
    np.testing.assert_array_equal(out["both"], np.isinf(xv))
    np.testing.assert_array_equal(out["pos"], np.isposinf(xv))
    np.testing.assert_array_equal(out["neg"], np.isneginf(xv))


def test_string_tensors_refused_in_one_line(tmp_path: Path):
    from lamina.compiler.errors import BackendError

    a = oh.make_tensor_value_info("a", TensorProto.STRING, [2])
    y = oh.make_tensor_value_info("y", TensorProto.BOOL, [2])
    graph = oh.make_graph([oh.make_node("Equal", ["a", "a"], ["y"])], "s", [a], [y])
    with pytest.raises(BackendError, match="string tensors are not supported"):
        _compile(tmp_path, graph)


def _cli(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, "-m", "lamina.compiler.driver.cli", *args],
                          capture_output=True, text=True, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})


def test_refusal_is_the_last_line_and_debug_after_the_verb(tmp_path: Path):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    ax = oh.make_tensor_value_info("axis", TensorProto.INT64, [])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["r"]),
                           oh.make_node("CumSum", ["r", "axis"], ["y"])], "g", [x, ax], [y])
    src = tmp_path / "cumsum.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), str(src))
    res = _cli("compile", str(src), "-o", str(tmp_path / "m.lamina"), "--buckets", "1x1")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error:") and "CumSum" in lines[0], \
        res.stderr
    res = _cli("compile", str(src), "-o", str(tmp_path / "m.lamina"), "--buckets", "1x1",
               "--debug")
    assert "Traceback" in res.stderr and "BackendError" in res.stderr, res.stderr
    assert "BlockBuilder destroyed" not in res.stderr

"""quantize-int8: QDQ structure per op, must-not-fire, numbers against fp32, idempotence,
rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.backends.reference import run
from lamina.compiler.errors import UsageError
from lamina.compiler.ir import clone
from lamina.compiler.pipeline import PassContext, get_pass
from lamina.passes.quant._utils import QUANT_KEY, activation_qparams, quantize_weight
from tests.passes.fusion._graphs import signature
from tests.passes.quant._graphs import feeds, mlp, shared_input, write_npz

Pass = get_pass("quantize-int8")


def quantize(m, ctx=None, **opts):
    return Pass(Pass.Options(**opts)).run(
        m, ctx or PassContext(debug_match=frozenset(["quantize-int8"]))
    )


def test_static_structure_shared_qdq_and_gemm_axis(tmp_path: Path) -> None:
    m = shared_input()
    calib = write_npz(m, tmp_path / "c.npz")
    r = quantize(m, calibration=str(calib))
    assert r.changed and r.stats["quantized"] == 3
    assert (
        signature(r.model)
        == [
            "QuantizeLinear(x, const[], const[]){}",
            "DequantizeLinear(%0, const[], const[]){}",
            "DequantizeLinear(const[16, 16], const[16], const[16]){axis=1}",
            "MatMul(%1, %2){}",
            "DequantizeLinear(const[16, 16], const[16], const[16]){axis=1}",
            "MatMul(%1, %4){}",  # one Q/DQ pair for x, shared by both consumers
            "Add(%3, %5){}",
            "QuantizeLinear(p, const[], const[]){}",
            "DequantizeLinear(%7, const[], const[]){}",
            # Gemm transB=1: the weight is [N, K], its channels on axis 0
            "DequantizeLinear(const[8, 16], const[8], const[8]){axis=0}",
            "Gemm(%8, %9, const[8]){transB=1}",
        ]
    )
    nodes = list(r.model.graph)
    q = nodes[0]
    assert q.inputs[2].const_value.numpy().dtype == np.uint8
    w_dq = nodes[2]
    assert w_dq.inputs[0].const_value.numpy().dtype == np.int8
    assert np.abs(w_dq.inputs[0].const_value.numpy()).max() <= 127
    assert w_dq.inputs[2].const_value.numpy().dtype == np.int8
    assert not w_dq.inputs[2].const_value.numpy().any()
    assert nodes[3].metadata_props[QUANT_KEY] == "static:u8:minmax"
    assert nodes[10].metadata_props[QUANT_KEY] == "static:u8:minmax"


def test_static_s8_symmetric(tmp_path: Path) -> None:
    m = mlp()
    r = quantize(m, calibration=str(write_npz(m, tmp_path / "c.npz")), activation="s8")
    zps = [n.inputs[2].const_value.numpy() for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert len(zps) == 2 and all(z.dtype == np.int8 and z == 0 for z in zps)


def test_dynamic_structure() -> None:
    r = quantize(shared_input(), mode="dynamic")
    sig = signature(r.model)
    assert sig[:4] == [
        "DynamicQuantizeLinear(x){}",
        "DequantizeLinear(%0.0, %0.1, %0.2){}",
        "DequantizeLinear(const[16, 16], const[16], const[16]){axis=1}",
        "MatMul(%1, %2){}",
    ]
    assert sum(s.startswith("DynamicQuantizeLinear") for s in sig) == 2
    assert [n.metadata_props.get(QUANT_KEY) for n in r.model.graph if n.op_type == "Gemm"] == [
        "dynamic:u8"
    ]


def test_fused_linear_after_o1(tmp_path: Path) -> None:
    """After O1 the dense layers are lamina::Linear; their W input becomes a DequantizeLinear."""
    from lamina.compiler.driver.api import optimize

    m, _ = optimize(mlp(), "O1")
    assert [n.op_type for n in m.graph].count("Linear") == 2
    calib = write_npz(m, tmp_path / "c.npz")
    r = quantize(m, calibration=str(calib))
    lin = [n for n in r.model.graph if n.op_type == "Linear"]
    assert len(lin) == 2
    for n in lin:
        assert n.inputs[0].producer().op_type == "DequantizeLinear"
        assert n.inputs[1].producer().op_type == "DequantizeLinear"
        assert n.inputs[2].const_value is not None  # bias stays fp32
        assert n.inputs[2].const_value.numpy().dtype == np.float32


def test_must_not_fire_on_activation_matmul(tmp_path: Path) -> None:
    m = mlp(const_weight=False)
    ctx = PassContext(debug_match=frozenset(["quantize-int8"]))
    calib = write_npz(m, tmp_path / "c.npz")
    r = quantize(m, ctx, calibration=str(calib))
    assert r.stats["skipped"] == 1
    assert any("weight is not a constant" in e for e in ctx.explanations), ctx.explanations
    # The other MatMul is still quantized.
    assert r.stats["quantized"] == 1


def test_nothing_to_quantize_reports_unchanged() -> None:
    import onnx.helper as h

    from tests.passes.fusion._graphs import f32, model

    m = model([h.make_node("Relu", ["x"], ["y"])], [f32("x", [2, 3])], [f32("y", None)])
    r = quantize(m, mode="dynamic")
    assert not r.changed and r.stats["quantized"] == 0


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_numbers_close_to_fp32(tmp_path: Path, mode: str) -> None:
    """INT8 bound: cosine to fp32 >= 0.999 per row and max error below 5% of the output range."""
    m = mlp()
    before = clone(m)
    calib = write_npz(m, tmp_path / "c.npz", n=64, seed=1)
    r = quantize(m, calibration=str(calib), mode=mode)
    x = feeds(before, 8, seed=2)
    a, b = run(before, x)["y"], run(r.model, x)["y"]
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cos = (a2 * b2).sum(1) / np.linalg.norm(a2, axis=1) / np.linalg.norm(b2, axis=1)
    assert cos.min() >= 0.999
    assert np.abs(a - b).max() <= 0.05 * (a.max() - a.min())


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_idempotent(tmp_path: Path, mode: str) -> None:
    m = mlp()
    calib = write_npz(m, tmp_path / "c.npz")
    r = quantize(m, calibration=str(calib), mode=mode)
    sig = signature(r.model)
    ctx = PassContext(debug_match=frozenset(["quantize-int8"]))
    again = quantize(r.model, ctx, calibration=str(calib), mode=mode)
    assert not again.changed and signature(again.model) == sig
    assert any("already quantized" in e for e in ctx.explanations)


def test_exclude_keeps_op_in_fp32(tmp_path: Path) -> None:
    m = mlp()
    r = quantize(m, calibration=str(write_npz(m, tmp_path / "c.npz")), exclude="fc2")
    fc2 = next(n for n in r.model.graph if n.name == "fc2")
    assert fc2.inputs[1].const_value is not None and QUANT_KEY not in fc2.metadata_props


def test_static_without_calibration_is_one_line_error() -> None:
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize(mlp())


def test_bad_options() -> None:
    with pytest.raises(UsageError, match="mode must be"):
        quantize(mlp(), mode="weird")
    with pytest.raises(UsageError, match="activation must be"):
        quantize(mlp(), mode="dynamic", activation="u4")
    with pytest.raises(UsageError, match="weight-bits must be 7 or 8"):
        quantize(mlp(), mode="dynamic", weight_bits=6)


def test_seven_bit_weights() -> None:
    """weight-bits=7 (the AVX2 kernels'): every weight in [-63, 63] from fp32 (not 8 bits halved),
    scale amax / 63, the rest of the graph as with 8 bits."""
    w = np.array([[1.0, -0.5], [-2.0, 0.25]], np.float32)
    q, s = quantize_weight(w, axis=1, bits=7)
    assert np.allclose(s, [2 / 63, 0.5 / 63]) and q[1, 0] == -63 and q[0, 1] == -63
    assert abs(int(q[0, 0]) - 31.5) == 0.5
    with pytest.raises(ValueError, match="7 or 8"):
        quantize_weight(w, axis=1, bits=4)
    res = quantize(mlp(), mode="dynamic", weight_bits=7)
    wq = [v.const_value.numpy() for v in res.model.graph.initializers.values()
          if v.const_value is not None and v.const_value.dtype.name == "INT8"
          and v.shape.rank() == 2]
    assert wq and all(np.abs(a).max() == 63 for a in wq)
    base = quantize(mlp(), mode="dynamic")
    assert signature(res.model) == signature(base.model)


def test_qparams_and_weight_rounding() -> None:
    scale, zp = activation_qparams(-1.0, 3.0, "u8")
    assert scale.dtype == np.float32 and zp.dtype == np.uint8
    assert np.isclose(scale, 4 / 255) and zp == 64
    scale, zp = activation_qparams(0.5, 2.0, "u8")  # the range always holds 0
    assert zp == 0 and np.isclose(scale, 2 / 255)
    scale, zp = activation_qparams(-2.0, 1.0, "s8")
    assert zp.dtype == np.int8 and zp == 0 and np.isclose(scale, 2 / 127)
    w = np.array([[1.0, -0.5], [-2.0, 0.25]], np.float32)
    q, s = quantize_weight(w, axis=1)
    assert (
        np.allclose(s, [2 / 127, 0.5 / 127]) and q[1, 0] == -127 and q[1, 1] == 64
    )  # 63.5 -> 64 (even)
    qt, st = quantize_weight(w.T.copy(), axis=0)
    assert np.array_equal(qt, q.T) and np.allclose(st, s)

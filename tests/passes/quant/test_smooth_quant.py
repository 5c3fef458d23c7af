"""smooth-quant: structure, exact fp32 numbers, idempotence, must-not-fire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx.helper as h

from lamina.backends.reference import run
from lamina.compiler.ir import clone
from lamina.compiler.pipeline import PassContext, get_pass
from lamina.passes.quant.smooth_quant import SMOOTH_KEY
from tests.passes.fusion._graphs import f32, model, signature
from tests.passes.quant._graphs import feeds, mlp, write_npz

Pass = get_pass("smooth-quant")


def _run(m, calib: Path, alpha: float = 0.5):
    return Pass(Pass.Options(alpha=alpha, calibration=str(calib))).run(m, PassContext())


def test_structure_and_exact_numbers(tmp_path: Path) -> None:
    m = mlp(outlier=30.0)
    before = clone(m)
    calib = write_npz(m, tmp_path / "c.npz")
    r = _run(m, calib)
    assert r.changed and r.stats["smoothed"] == 2
    assert signature(r.model) == [
        "Mul(x, const[16]){}",
        "MatMul(%0, const[16, 32]){}",
        "Add(%1, const[32]){}",
        "Relu(%2){}",
        "Mul(%3, const[32]){}",
        "MatMul(%4, const[32, 16]){}",
        "Add(%5, const[16]){}",
        "Add(%6, x){}",  # the residual still reads the unsmoothed x
    ]
    assert all(SMOOTH_KEY in n.metadata_props for n in r.model.graph if n.op_type == "MatMul")
    x = feeds(before, 4, seed=3)
    np.testing.assert_allclose(run(r.model, x)["y"], run(before, x)["y"], rtol=1e-4, atol=1e-4)


def test_evens_out_the_outlier_channel(tmp_path: Path) -> None:
    m = mlp(outlier=30.0)
    calib = write_npz(m, tmp_path / "c.npz")
    r = _run(m, calib)
    inv = next(n for n in r.model.graph if n.op_type == "Mul" and n.inputs[0].name == "r1").inputs[
        1
    ]
    s = 1.0 / inv.const_value.numpy()
    assert np.argmax(s) == 3  # the outlier channel gets the largest migration


def test_idempotent(tmp_path: Path) -> None:
    m = mlp()
    calib = write_npz(m, tmp_path / "c.npz")
    r = _run(m, calib)
    sig = signature(r.model)
    again = _run(r.model, calib)
    assert not again.changed and signature(again.model) == sig


def test_must_not_fire_without_constant_weights(tmp_path: Path) -> None:
    m = model(
        [h.make_node("MatMul", ["a", "b"], ["y"])],
        [f32("a", [2, 4, 8]), f32("b", [2, 8, 3])],
        [f32("y", None)],
    )
    r = Pass(Pass.Options()).run(m, PassContext())  # no calibration needed when nothing qualifies
    assert not r.changed and r.stats["smoothed"] == 0

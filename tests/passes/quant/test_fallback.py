"""Accuracy-driven fallback: per-layer sensitivity, the most sensitive op kept in fp32, report and
plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.compiler.driver.quantize import (
    QuantizeConfig,
    plot_sensitivity,
    quantize_model,
    write_report,
)
from lamina.compiler.errors import UsageError
from lamina.passes.quant._utils import QUANT_KEY
from tests.passes.quant._graphs import mlp, write_npz


def _cfg(calib: Path, target: float | None, **kw) -> QuantizeConfig:
    # the fallback itself, without the default SmoothQuant migration (which removes the outlier)
    kw.setdefault("smooth_alpha", None)
    return QuantizeConfig(calibration=str(calib), calibration_size=48, target_cos=target, **kw)


def test_fallback_keeps_most_sensitive_op_in_fp32(tmp_path: Path) -> None:
    m = mlp(outlier=30.0)
    calib = write_npz(m, tmp_path / "c.npz", n=96)
    q, res = quantize_model(m.clone(), _cfg(calib, 0.9999))
    assert res.cosine_all < 0.9999 <= res.cosine and res.target_met
    most = min(res.sensitivity, key=lambda r: r["cosine"])["op"]
    assert res.fp32 == [most] == ["fc2"]
    assert res.quantized == ["fc1"]
    nodes = {n.name: n for n in q.graph}
    assert QUANT_KEY in nodes["fc1"].metadata_props and QUANT_KEY not in nodes["fc2"].metadata_props
    assert "exclude=fc2" in res.pipeline
    write_report(tmp_path / "r.json", res, _cfg(calib, 0.9999))
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["op"] for r in data["sensitivity"]] == ["fc1", "fc2"] and data["fp32"] == ["fc2"]
    plot_sensitivity(tmp_path / "p.png", res, 0.9999)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_no_fallback_when_target_met(tmp_path: Path) -> None:
    m = mlp()
    calib = write_npz(m, tmp_path / "c.npz", n=96)
    _, res = quantize_model(m.clone(), _cfg(calib, 0.99))
    assert res.fp32 == [] and res.target_met and res.sensitivity == []


def test_unreachable_target_is_one_line_error(tmp_path: Path) -> None:
    m = mlp(outlier=30.0)
    calib = write_npz(m, tmp_path / "c.npz", n=96)
    with pytest.raises(
        UsageError, match=r"cannot be met; the best mean cosine reached is 0\.9"
    ) as exc:
        quantize_model(m.clone(), _cfg(calib, 1.0))
    assert "\n" not in str(exc.value)


def test_dynamic_mode_without_calibration(tmp_path: Path) -> None:
    _, res = quantize_model(mlp(), QuantizeConfig(calibration="", mode="dynamic", target_cos=None))
    assert res.quantized == ["fc1", "fc2"]

"""fuse-bias-residual: MatMul + bias (+ GELU) (+ residual) -> lamina::Linear."""

from __future__ import annotations

import pytest

from tests.passes.fusion._graphs import check_fusion, check_no_fire, dense


@pytest.mark.parametrize(("gelu_act", "residual", "attrs"), [
    (True, True, "activation='gelu', has_residual=1"),
    (False, True, "activation='none', has_residual=1"),
    (True, False, "activation='gelu', has_residual=0"),
    (False, False, "activation='none', has_residual=0"),
])
def test_fuses(gelu_act: bool, residual: bool, attrs: str) -> None:
    m = check_fusion("fuse-bias-residual", dense(gelu_act=gelu_act, residual=residual))
    from tests.passes.fusion._graphs import signature

    sig = signature(m)
    args = "x, const[16, 16], const[16]" + (", r" if residual else "")
    assert sig[0] == f"lamina::Linear({args}){{{attrs}}}"


def test_no_fire_on_activation_weight() -> None:
    check_no_fire(
        "fuse-bias-residual", dense(const_weight=False), "weight is not a constant 2-D tensor"
    )

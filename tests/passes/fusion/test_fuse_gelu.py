"""fuse-gelu: erf and tanh GELU forms -> lamina::Gelu."""

from __future__ import annotations

import pytest

from tests.passes.fusion._graphs import check_fusion, check_no_fire, gelu

VARIANTS = {
    "erf-div": ({}, "none"),
    "erf-mul-rsqrt2": ({"mul_sqrt": True}, "none"),
    "erf-half-first": ({"half_first": True}, "none"),
    "erf-half-on-sum": ({"half_on_sum": True}, "none"),
    "tanh": ({"form": "tanh"}, "tanh"),
    "tanh-half-first": ({"form": "tanh", "half_first": True}, "tanh"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fuses_variant(variant: str) -> None:
    kwargs, approximate = VARIANTS[variant]
    m = check_fusion(
        "fuse-gelu", gelu(**kwargs), [f"lamina::Gelu(x){{approximate={approximate!r}}}"]
    )
    (node,) = list(m.graph)
    assert node.metadata_props["lamina.origin"].startswith("fuse-gelu:")


def test_no_fire_on_wrong_constant() -> None:
    check_no_fire("fuse-gelu", gelu(k=0.6), "unexpected factor")

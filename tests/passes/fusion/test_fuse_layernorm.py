"""fuse-layernorm: decomposed layer norms -> LayerNormalization."""

from __future__ import annotations

import pytest

from tests.passes.fusion._graphs import check_fusion, check_no_fire, layernorm

EXPECTED = ["LayerNormalization(x, const[16], const[16]){axis=-1, epsilon=9.999999747378752e-06}"]

VARIANTS = {
    "plain": {},
    "x-mean-twice": {"twice": True},
    "mul-self": {"mul_self": True},
    "reciprocal": {"reciprocal": True},
    "operands-swapped": {"swap": True},
    "eps-after-sqrt": {"eps_after": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fuses_variant(variant: str) -> None:
    check_fusion("fuse-layernorm", layernorm(**VARIANTS[variant]), EXPECTED)


def test_origin_recorded() -> None:
    m = check_fusion("fuse-layernorm", layernorm(eps_after=True))
    (node,) = list(m.graph)
    assert node.metadata_props["lamina.origin"] == "fuse-layernorm:eps-after-sqrt"


def test_no_fire_on_cube() -> None:
    check_no_fire("fuse-layernorm", layernorm(pow_exp=3.0), "Pow exponent is 3.0, not 2")

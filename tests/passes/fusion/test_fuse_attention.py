"""fuse-attention: the attention core -> lamina::Attention."""

from __future__ import annotations

import math

import onnx_ir as ir
import pytest

from tests.passes.fusion._graphs import HEADS, HID, attention, check_fusion, check_no_fire

SCALE = 1 / math.sqrt(HID // HEADS)


def _expected(mask_kind: str, mask: str) -> list[str]:
    lines = []
    for i in range(3):
        lines += ["MatMul(x, const[16, 16]){}", f"Add(const[16], %{2 * i}){{}}"]
    inputs = "%1, %3, %5" + (f", {mask}" if mask else "")
    attrs = f"mask_kind={mask_kind!r}, num_heads={HEADS}, scale="
    return lines + [f"lamina::Attention({inputs}){{{attrs}"]


VARIANTS = {
    "torchscript-eager": {},
    "kt-two-transposes": {"kt": "0132"},
    "scale-sqrt-on-q-and-k": {"scale": "sqrt_both"},
    "mask-operand-first": {"mask_first": True},
    "sdpa-nan-guard": {"guard": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_fuses_key_padding(variant: str) -> None:
    m = check_fusion("fuse-attention", attention(**VARIANTS[variant]))
    from tests.passes.fusion._graphs import signature

    sig = signature(m)
    expected = _expected("key_padding", "attention_mask")
    assert sig[:-1] == expected[:-1]
    assert sig[-1].startswith(expected[-1])
    node = list(m.graph)[-1]
    assert math.isclose(node.attributes["scale"].value, SCALE, rel_tol=1e-6)
    assert node.metadata_props["lamina.origin"] == "fuse-attention:key_padding"


def test_additive_bias_kept() -> None:
    m = check_fusion("fuse-attention", attention(mask="bias"))
    node = list(m.graph)[-1]
    assert node.attributes["mask_kind"].value == "additive"
    assert node.inputs[3].name == "bias"


def test_no_mask() -> None:
    m = check_fusion("fuse-attention", attention(mask="none"))
    node = list(m.graph)[-1]
    assert node.attributes["mask_kind"].value == "none" and len(node.inputs) == 3


def test_no_fire_when_probs_are_an_output() -> None:
    check_no_fire(
        "fuse-attention", attention(probs_output=True), "softmax output is not used only by"
    )


def test_no_fire_on_wrong_k_layout() -> None:
    # K^T built with a perm that does not transpose: the scores would be Q K, not Q K^T.
    m = attention(kt="0132")
    for node in m.graph:
        if node.op_type == "Transpose" and list(node.attributes["perm"].value) == [0, 1, 3, 2]:
            node.attributes["perm"] = ir.AttrInt64s("perm", [0, 1, 2, 3])
    check_no_fire(
        "fuse-attention", m, "K: layout after the head chain is [b, h, s, d], expected [b, h, d, s]"
    )


def test_leaves_unrelated_dead_nodes_and_initializers() -> None:
    """fuse-attention removes what it replaced, not every dead node of the model (that is
    remove-dead-code's job, where the pipeline asks for it)."""
    import numpy as np

    from tests.passes.fusion._graphs import apply

    m = attention()
    spare = ir.Value(name="spare_weight", const_value=ir.tensor(np.ones((3,), np.float32)))
    m.graph.register_initializer(spare)
    m.graph.append(ir.node("Neg", [spare], name="unrelated_dead_neg"))
    result, _ = apply("fuse-attention", m)
    assert result.stats["fused"] == 1
    assert "spare_weight" in result.model.graph.initializers
    assert any(n.name == "unrelated_dead_neg" for n in result.model.graph)

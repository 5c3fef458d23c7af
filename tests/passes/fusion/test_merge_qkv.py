"""merge-qkv: the three projections of one attention -> one GEMM + Split."""

from __future__ import annotations

import onnx_ir as ir

from tests.passes.fusion._graphs import apply, attention, check_fusion, check_no_fire, signature


def _fused_attention(**kwargs) -> ir.Model:
    return apply("fuse-attention", attention(**kwargs))[0].model


def test_merges_matmul_add() -> None:
    m = check_fusion("merge-qkv", _fused_attention())
    sig = signature(m)
    assert sig[:3] == [
        "MatMul(x, const[16, 48]){}",
        "Add(%0, const[48]){}",
        "Split(%1, const[3]){axis=-1}",
    ]
    assert sig[3].startswith("lamina::Attention(%2.0, %2.1, %2.2, attention_mask)")


def test_composes_with_bias_residual_in_either_order() -> None:
    first = apply("fuse-bias-residual", _fused_attention())[0].model
    m = check_fusion("merge-qkv", first)
    sig = signature(m)
    assert (
        sig[0] == "lamina::Linear(x, const[16, 48], const[48]){activation='none', has_residual=0}"
    )


def test_no_fire_on_cross_attention() -> None:
    m = _fused_attention()
    # Feed K and V from another input: nothing to share with Q.
    x2 = ir.Value(
        name="x2", shape=ir.Shape(["batch", "seq", 16]), type=ir.TensorType(ir.DataType.FLOAT)
    )
    m.graph.inputs.append(x2)
    for node in m.graph:
        if node.op_type == "MatMul" and node.inputs[1].name in ("Wk", "Wv"):
            node.replace_input_with(0, x2)
    check_no_fire("merge-qkv", m, "read different inputs")

"""``canonicalize-quant``: ONNX Runtime's quantized forms -> Lamina's QDQ form (one IR for INT8,
however made)."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.ir import Namer, const_array, set_origin
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register
from lamina.passes.canonical._utils import is_standard, replace_value
from lamina.passes.quant._utils import QUANT_KEY


def _single_user(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0][0] if isinstance(uses[0], tuple) else uses[0].node
    return node if is_standard(node, op_type) else None


class _Builder:
    def __init__(self, graph: ir.Graph, name: str) -> None:
        self.graph, self.namer, self.pass_name = graph, Namer(graph), name

    def node(self, op_type: str, inputs: list, attrs: dict, rule: str, before: ir.Node) -> ir.Node:
        base = f"{self.pass_name}_{op_type}".replace("-", "_")
        node = ir.node(op_type, inputs, attrs, name=self.namer(base))
        node.outputs[0].name = self.namer(f"{base}_out")
        set_origin(node, f"{self.pass_name}:{rule}")
        self.graph.insert_before(before, node)
        return node

    def dq(
        self,
        x: ir.Value,
        scale: ir.Value,
        zp: ir.Value | None,
        rule: str,
        before: ir.Node,
        *,
        weight: bool = False,
    ) -> ir.Value:
        attrs = {}
        s = const_array(scale)
        if weight and s is not None and s.size > 1:
            attrs["axis"] = 1
        node = self.node(
            "DequantizeLinear",
            [x, scale, zp] if zp is not None else [x, scale],
            attrs,
            rule,
            before,
        )
        node.outputs[0].dtype = ir.DataType.FLOAT
        node.outputs[0].shape = x.shape
        return node.outputs[0]


def _dynamic(b: _Builder, node: ir.Node) -> list[ir.Node] | None:
    """``Mul(Cast(MatMulInteger(A, Wq, a_zp, w_zp)), Mul(a_scale, w_scale))`` -> ``MatMul(DQ(A),
    DQ(Wq))``."""
    a, w = node.inputs[0], node.inputs[1]
    a_zp = node.inputs[2] if len(node.inputs) > 2 else None
    w_zp = node.inputs[3] if len(node.inputs) > 3 else None
    cast = _single_user(node.outputs[0], "Cast")
    if cast is None or const_array(w) is None:
        return None
    mul = _single_user(cast.outputs[0], "Mul")
    if mul is None:
        return None
    scale = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    smul = scale.producer()
    if smul is None or not is_standard(smul, "Mul"):
        return None
    w_scale = next((v for v in smul.inputs if const_array(v) is not None), None)
    a_scale = next((v for v in smul.inputs if v is not w_scale), None)
    if w_scale is None or a_scale is None:
        return None
    x = b.dq(a, a_scale, a_zp, "dynamic", node)
    wd = b.dq(w, w_scale, w_zp, "dynamic", node, weight=True)
    mm = b.node("MatMul", [x, wd], {}, "dynamic", node)
    mm.metadata_props[QUANT_KEY] = "imported:dynamic"
    replace_value(b.graph, mul.outputs[0], mm.outputs[0])
    return [mul, cast, node, smul]


def _qoperator(b: _Builder, node: ir.Node) -> list[ir.Node] | None:
    """``QLinearMatMul(a, as, az, b, bs, bz, ys, yz)`` -> ``QuantizeLinear(MatMul(DQ(a), DQ(b)), ys,
    yz)``."""
    a, a_s, a_z, w, w_s, w_z, y_s, y_z = node.inputs[:8]
    x = b.dq(a, a_s, a_z, "qoperator", node)
    wd = b.dq(w, w_s, w_z, "qoperator", node, weight=const_array(w) is not None)
    mm = b.node("MatMul", [x, wd], {}, "qoperator", node)
    mm.outputs[0].dtype = ir.DataType.FLOAT
    mm.metadata_props[QUANT_KEY] = "imported:qoperator"
    q = b.node("QuantizeLinear", [mm.outputs[0], y_s, y_z], {}, "qoperator", node)
    replace_value(b.graph, node.outputs[0], q.outputs[0])
    q.outputs[0].dtype = node.outputs[0].dtype
    return [node]


@register("canonicalize-quant")
class CanonicalizeQuantPass(Pass):
    """Rewrite ONNX Runtime's quantized operator forms into the QDQ form that ``quantize-int8``
    produces.

    - dynamic (``quantize_dynamic``)::

          %xq, %xs, %xz = DynamicQuantizeLinear(%x)
          %y = Mul(Cast(MatMulInteger(%xq, %Wq, %xz, %wz)), Mul(%xs, %ws))
        ->
          %y = MatMul(DequantizeLinear(%xq, %xs, %xz), DequantizeLinear(%Wq, %ws, %wz){axis=1 if per
          channel})

    - QOperator: ``QLinearMatMul(a, as, az, b, bs, bz, ys, yz)`` -> ``QuantizeLinear(MatMul(DQ(a),
      DQ(b)), ys, yz)``
      (the requantization of the output kept; its DequantizeLinear consumer follows as before).
    - QDQ (``quantize_static``, QDQ format): already this form; ``MatMul``/``Gemm`` fed by a
      DequantizeLinear weight
      are tagged ``lamina.quant = imported:qdq``.

    Exact up to fp32 summation order (integer products are exact in fp32 below 2**24) and, for
    QLinearMatMul, one output quantum on rounding ties. Part of ``O0``: a no-op on fp32 models.
    """

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        b = _Builder(model.graph, self.name)
        stats = {"dynamic": 0, "qoperator": 0, "qdq": 0}
        for node in list(model.graph):
            if node.graph is None or node.domain not in ("", "ai.onnx"):
                continue
            dead = None
            if node.op_type == "MatMulInteger":
                dead = _dynamic(b, node)
                if dead is None and ctx.wants_explanations(self.name):
                    ctx.explain(
                        f"MatMulInteger {node.name!r}",
                        "not followed by Cast and a Mul by the scales",
                    )
                stats["dynamic"] += dead is not None
            elif node.op_type == "QLinearMatMul" and len(node.inputs) >= 8:
                dead = _qoperator(b, node)
                stats["qoperator"] += 1
            elif node.op_type in ("MatMul", "Gemm") and QUANT_KEY not in node.metadata_props:
                w = (
                    node.inputs[1].producer()
                    if len(node.inputs) > 1 and node.inputs[1] is not None
                    else None
                )
                if (
                    w is not None
                    and is_standard(w, "DequantizeLinear")
                    and const_array(w.inputs[0]) is not None
                ):
                    node.metadata_props[QUANT_KEY] = "imported:qdq"
                    stats["qdq"] += 1
            for n in dead or []:
                if n.graph is not None and not any(
                    o.uses() or o.is_graph_output() for o in n.outputs
                ):
                    model.graph.remove(n, safe=True)
        changed = any(stats.values())
        if changed:
            model.graph.sort()
        return PassResult(model, changed=changed, stats=stats)

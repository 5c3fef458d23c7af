"""An out-of-tree pass: register it, run it in a pipeline with IR dumps, check it numerically.

    python examples/custom_pass.py MODEL.onnx [--dump-ir DIR]

or from the command line, with this file as the plugin:

    lamina opt MODEL.onnx -o out.onnx --load-passes examples/custom_pass.py \
        --pipeline 'O0,fold-scale-into-matmul' --dump-ir dump --verify-each --pass-stats

The pass folds a constant scalar ``Mul``/``Div`` that follows a ``MatMul`` with a constant weight
into the weight: ``(x @ W) * c  ->  x @ (W * c)``. TorchScript exports of BERT-family models have
none of these by default, so on them it reports zero rewrites; it is a template for your own passes.
"""

from __future__ import annotations

import argparse
import sys

import onnx_ir as ir

from lamina.compiler.ir import Namer, const_array, set_origin
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register


@register("fold-scale-into-matmul")
class FoldScaleIntoMatMulPass(Pass):
    """Fold ``(x @ W) * c`` (W, c constant, c scalar) into ``x @ (W * c)``."""

    atol = 1e-5  # the product is rounded once instead of twice

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        namer = Namer(graph)
        folded = 0
        for node in list(graph):
            if node.op_type not in ("Mul", "Div") or node.domain not in ("", "ai.onnx"):
                continue
            mm = node.inputs[0].producer() if node.inputs[0] is not None else None
            scale = const_array(node.inputs[1])
            if mm is None or mm.op_type != "MatMul" or scale is None or scale.size != 1:
                if ctx.wants_explanations(self.name):
                    ctx.explain(node.name or "?", "not MatMul followed by a constant scalar")
                continue
            weight = const_array(mm.inputs[1])
            if weight is None or len(node.inputs[0].uses()) != 1:
                continue
            factor = scale.item() if node.op_type == "Mul" else 1.0 / scale.item()
            new_w = ir.Value(name=namer("scaled_weight"),
                             const_value=ir.tensor((weight * factor).astype(weight.dtype)))
            new_w.dtype = mm.inputs[1].dtype
            new_w.shape = ir.Shape(list(weight.shape))
            graph.register_initializer(new_w)
            new_mm = ir.Node("", "MatMul", [mm.inputs[0], new_w], name=namer("scaled_matmul"))
            set_origin(new_mm, self.name)
            graph.insert_before(mm, new_mm)
            out = node.outputs[0]
            new_mm.outputs[0].dtype, new_mm.outputs[0].shape = out.dtype, out.shape
            if out.is_graph_output():
                name = out.name
                out.name = None
                new_mm.outputs[0].name = name
            out.replace_all_uses_with(new_mm.outputs[0], replace_graph_outputs=True)
            graph.remove([node], safe=True)
            if not mm.outputs[0].uses():
                graph.remove([mm], safe=True)
            folded += 1
        return PassResult(model, changed=folded > 0, stats={"folded": folded})


def main(argv: list[str] | None = None) -> int:
    from lamina.compiler.driver import api

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dump-ir", default="custom-pass-dump")
    args = parser.parse_args(argv)
    model = api.load(args.model)
    debug = api.Debug(dump_ir=args.dump_ir, verify_each=True, pass_stats=True)
    model, report = api.optimize(model, "O0,fold-scale-into-matmul", debug)
    print(f"ran {report.pipeline}; dumps in {args.dump_ir}/")
    rec = report.recorder.records[-1]
    print(f"fold-scale-into-matmul: {rec.stats}, max abs error {rec.max_abs_error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

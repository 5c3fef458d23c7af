"""``fold-constants``: evaluate what is known at compile time."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.compiler.ir.evaluate import TooLarge, evaluate_node
from lamina.compiler.pipeline import Pass, PassContext, PassResult, option, register
from lamina.passes.canonical._utils import add_initializer, is_standard, replace_value
from lamina.passes.canonical.infer_shapes import InferShapesPass

log = logging.getLogger(__name__)

# Ops whose result is not a function of their inputs, or that we never want to materialise.
NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
    "If",
    "Loop",
    "Scan",
    "SequenceConstruct",
    # INT8 weights stay int8 + DequantizeLinear: the form quantized kernels consume.
    "DequantizeLinear",
}


@dataclass(frozen=True)
class FoldOptions:
    max_elements: int = option(
        1 << 22, "largest result (elements) to materialise, unless no input is smaller"
    )
    rounds: int = option(8, "maximum sweeps over the graph")


def _static_dims(value: ir.Value) -> list[int | None] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _shape_result(node: ir.Node) -> np.ndarray | None:
    """Shape/Size of a value whose (sliced) dims are all static."""
    dims = _static_dims(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if dims is None:
        return None
    if node.op_type == "Size":
        return None if None in dims else np.array(int(np.prod(dims)), dtype=np.int64)
    start_attr = node.attributes.get("start")
    end_attr = node.attributes.get("end")
    start = start_attr.value if start_attr is not None else 0
    end = end_attr.value if end_attr is not None else len(dims)
    part = dims[slice(start, end)]
    if None in part:
        return None
    return np.array(part, dtype=np.int64)


def _gather_of_shape(node: ir.Node) -> np.ndarray | None:
    """``Gather(Shape(x), i)`` when dim i of x is static although other dims are not."""
    src = node.inputs[0].producer() if node.inputs[0] is not None else None
    if src is None or not is_standard(src, "Shape"):
        return None
    idx = const_array(node.inputs[1])
    dims = _static_dims(src.inputs[0])
    if idx is None or dims is None:
        return None
    start_attr = src.attributes.get("start")
    end_attr = src.attributes.get("end")
    start = start_attr.value if start_attr is not None else 0
    end = end_attr.value if end_attr is not None else len(dims)
    part = dims[slice(start, end)]
    try:
        picked = np.take(np.array([-1 if d is None else d for d in part]), idx.astype(np.int64))
    except IndexError:
        return None
    if np.any(picked < 0):
        return None
    return picked.astype(np.int64)


@register("fold-constants")
class FoldConstantsPass(Pass):
    """Replace nodes whose inputs are all constants by initializers holding their results, and
    ``Shape``, ``Size`` and ``Gather(Shape(x), i)`` by constants where the dims involved are static.

    Before: ``%s = Shape(%x)`` with ``%x: float32[1,128,384]``  ->  after: ``init %s: int64[3] = [1,
    128, 384]``.
    It re-runs shape inference between sweeps; with static input dims (``--dim``) it removes all
    shape and mask arithmetic. Exact (results are computed in the graph's own dtypes).
    """

    Options = FoldOptions
    atol = 1e-6

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", 18)
        folded = 0
        for _ in range(self.options.rounds):
            # Folding makes shapes static downstream (a Range over a folded length), so infer again
            # each round.
            model = InferShapesPass()(model, ctx).model
            graph = model.graph
            changed = False
            for node in list(graph):
                if (
                    not is_standard(node)
                    or node.op_type in NEVER_FOLD
                    or node.op_type == "Constant"
                ):
                    continue
                if any(o.is_graph_output() for o in node.outputs):
                    continue
                results = self._fold(node, opset)
                if results is None:
                    continue
                for out, array in zip(node.outputs, results, strict=True):
                    name = out.name
                    out.name = None
                    replace_value(graph, out, add_initializer(graph, name, array))
                graph.remove(node, safe=True)
                folded += 1
                changed = True
            if not changed:
                break
        return PassResult(model, changed=folded > 0, stats={"folded": folded})

    def _fold(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        if node.op_type in ("Shape", "Size"):
            result = _shape_result(node)
            return None if result is None else [result]
        if node.op_type == "Gather":
            result = _gather_of_shape(node)
            if result is not None:
                return [result]
        if not node.inputs:
            return None
        arrays = [None if v is None else const_array(v) for v in node.inputs]
        if any(a is None for a, v in zip(arrays, node.inputs, strict=True) if v is not None):
            return None
        largest = max((a.size for a in arrays if a is not None), default=0)
        budget = max(self.options.max_elements, largest)
        try:
            # The budget is checked before evaluating: a declared ConstantOfShape([2**40]) must not
            # allocate.
            results = evaluate_node(node, arrays, opset, max_elements=budget)
        except TooLarge as exc:
            log.debug("not folding %s: %s", node.name, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - leave what the evaluator cannot do to the runtime
            log.debug("cannot fold %s (%s): %s", node.name, node.op_type, exc)
            return None
        if any(r.size > budget for r in results):
            return None
        for out, r in zip(node.outputs, results, strict=True):
            if out.dtype is not None and r.dtype != out.dtype.numpy():
                return None
        return results

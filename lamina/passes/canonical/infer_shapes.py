"""``infer-shapes``: annotate every value with its dtype and (symbolic) shape."""

from __future__ import annotations

import logging
import re

import onnx_ir as ir
import onnx_ir.passes.common as common

from lamina.compiler.ir import const_array
from lamina.compiler.ir.domain import attach_reference_functions
from lamina.compiler.pipeline import Pass, PassContext, PassResult, register, register_property


def _has_shapes(model: ir.Model) -> bool:
    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    return all(v.shape is not None for v in values)


SHAPES = register_property("shapes", "every value has a recorded shape", "infer-shapes",
                           _has_shapes).name

log = logging.getLogger(__name__)


_ONNX_IR_LOGGER = "onnx_ir.passes.common.shape_inference"
# ONNX's messages name the node: "[ShapeInferenceError] (op_type:Reshape, node name: /Reshape_1):
# ...".
_NODE = re.compile(r"\(op_type:\s*([^,]+),\s*node name:\s*([^)]*)\)")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _describe(exc: BaseException | None) -> str:
    """`` at node 'n' (Op): first line of the error`` from ONNX's shape inference error."""
    if exc is None:
        return ""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    m = _NODE.search(text)
    where = f" at node {m.group(2).strip()!r} ({m.group(1).strip()})" if m else ""
    if m:
        first = first.replace(m.group(0), "").replace("[ShapeInferenceError]", "").strip(" :")
    return f"{where}: {first[:300]}"


def _infer(model: ir.Model, data_prop: bool) -> tuple[ir.Model, str | None]:
    """onnx-ir's shape inference with its failure (which it logs with a traceback and swallows)
    turned into one line naming the node, or None."""
    logger = logging.getLogger(_ONNX_IR_LOGGER)
    capture = _Capture()
    old_propagate = logger.propagate
    logger.addHandler(capture)
    logger.propagate = False
    try:
        model = common.ShapeInferencePass(strict_mode=False, data_prop=data_prop)(model).model
    except Exception as exc:  # noqa: BLE001 - shape inference is best effort on partial models
        return model, _describe(exc)
    finally:
        logger.removeHandler(capture)
        logger.propagate = old_propagate
    for record in capture.records:
        if record.levelno >= logging.WARNING:
            exc = record.exc_info[1] if record.exc_info else None
            return model, _describe(exc) or f": {record.getMessage()}"
    return model, None


# Data propagation evaluates shape arithmetic in ONNX's C++; an absurd constant there (a Reshape to
# [2**40]) makes it run for hours. Such constants turn data propagation off (shape inference still
# runs).
_SHAPE_ARITHMETIC = {
    "Reshape",
    "Expand",
    "ConstantOfShape",
    "Tile",
    "Range",
    "Concat",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Unsqueeze",
    "Squeeze",
    "Gather",
    "Resize",
    "Upsample",
    "OneHot",
    "Pad",
}
_MAX_SHAPE_VALUE = 1 << 24
_SENTINELS = {2**63 - 1, -(2**63), 2**31 - 1, -(2**31)}  # "to the end" in Slice-like uses


def _unsafe_for_data_prop(model: ir.Model) -> str | None:
    for node in model.graph:
        if node.op_type not in _SHAPE_ARITHMETIC or node.domain not in ("", "ai.onnx"):
            continue
        for v in node.inputs:
            arr = const_array(v)
            if arr is None or arr.dtype.kind not in "iu" or arr.size == 0 or arr.size > 4096:
                continue
            big = [
                int(x)
                for x in arr.reshape(-1)
                if abs(int(x)) > _MAX_SHAPE_VALUE and int(x) not in _SENTINELS
            ]
            if big:
                return f"node {node.name!r} ({node.op_type}) takes the constant {big[0]}"
    return None


def _rank(dim: object) -> int:
    """How much a dim tells: a number > a named symbol > an anonymous one (``unk__N``) or none."""
    if isinstance(dim, int):
        return 2
    name = getattr(dim, "value", None)
    return 1 if name and not str(name).startswith("unk__") else 0


def _merge(new: ir.Shape | None, old: ir.Shape) -> ir.Shape:
    """Per dim, the more informative of the fresh and the earlier annotation (exporters know symbols
    that ONNX inference loses, e.g. through a Slice with a symbolic end)."""
    if new is None:
        return old
    if len(new) != len(old):
        return new
    dims = [n if _rank(n) >= _rank(o) else o for n, o in zip(new, old, strict=True)]
    return ir.Shape(dims)


@register("infer-shapes")
class InferShapesPass(Pass):
    """Run ONNX shape inference (with data propagation) and record types and shapes on the values.

    Before: ``%y = MatMul(%x, %w)``  ->  after: ``%y: float32[batch,seq,384] = MatMul(%x, %w)``.
    Exact: it changes annotations only.
    """

    atol = 0.0
    ensures = frozenset({SHAPES})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = [
            (v.name, v.dtype, None if v.shape is None else tuple(v.shape))
            for n in model.graph
            for v in n.outputs
        ]
        # Recompute from scratch: shapes recorded earlier (by the exporter or before a rewrite) may
        # be stale, and inference would keep them instead of the better ones it can derive now.
        previous = {}
        for node in model.graph:
            for out in node.outputs:
                previous[id(out)] = out.shape
                out.shape = None
        # Reference functions let ONNX shape inference see through lamina ops.
        attach_reference_functions(model)
        unsafe = _unsafe_for_data_prop(model)
        if unsafe:
            log.debug("infer-shapes: no data propagation: %s", unsafe)
        model, failure = _infer(model, data_prop=not unsafe)
        if failure is not None:  # data propagation is the fragile part: retry without it
            log.debug("infer-shapes: with data propagation: %s; retrying without it", failure)
            model, failure = _infer(model, data_prop=False)
            if failure is not None:
                log.warning(
                    "infer-shapes: ONNX shape inference failed%s; shapes stay as they were, and "
                    "passes or lowering that need them may fail later",
                    failure,
                )
        for node in model.graph:
            for out in node.outputs:
                old = previous.get(id(out))
                if old is not None:
                    out.shape = _merge(out.shape, old)
        after = [
            (v.name, v.dtype, None if v.shape is None else tuple(v.shape))
            for n in model.graph
            for v in n.outputs
        ]
        annotated = sum(a != b for a, b in zip(before, after, strict=True))
        return PassResult(model, changed=annotated > 0, stats={"annotated": annotated})

"""``quantize-int8``: rewrite dense layers into the QDQ form (int8 weights, quantized
activations)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.compiler.ir import Namer, set_origin
from lamina.compiler.pipeline import Pass, PassContext, PassResult, option, register
from lamina.passes.canonical._utils import add_initializer
from lamina.passes.quant._utils import (
    QUANT_KEY,
    WEIGHT_BITS,
    QuantOp,
    activation_qparams,
    classify,
    quantize_weight,
)

MODES = ("static", "dynamic")
SCHEMES = ("u8", "s8")


@dataclass(frozen=True)
class QuantizeInt8Options:
    mode: str = option(
        "static", "static (calibrated activation scales) or dynamic (scales at run time)"
    )
    activation: str = option(
        "u8", "activation type of static mode: u8 (asymmetric) or s8 (symmetric)"
    )
    calibration: str = option(
        "",
        "static mode: a text file (one text a line; needs tokenizer) or an .npz of "
        "feeds; or a .json of ranges {tensor: [lo, hi]} (e.g. a --report)",
    )
    tokenizer: str = option("", "directory with tokenizer.json, for a text calibration file")
    calibration_size: int = option(300, "calibration samples to use")
    method: str = option("minmax", "range observer: minmax, percentile, entropy or mse")
    percentile: float = option(99.999, "percentile of the percentile method")
    exclude: str = option("", "node names to keep in fp32, separated by ';'")
    weight_bits: int = option(
        8, "weight bits: 8, or 7 (weights in [-63, 63], what the AVX2 INT8 kernels run without "
        "int16 saturation)"
    )


def _exclude_set(text: str) -> set[str]:
    return {s.strip() for s in text.split(";") if s.strip()}


def rewrite(
    model: ir.Model,
    ops: list[QuantOp],
    *,
    mode: str,
    ranges: dict[str, tuple[float, float]] | None,
    scheme: str = "u8",
    tag: str = "",
    pass_name: str = "quantize-int8",
    weight_bits: int = 8,
) -> int:
    """Rewrite ``ops`` of ``model`` in place into the QDQ form; returns how many were quantized.

    Static: ``X -> QuantizeLinear(s, zp) -> DequantizeLinear(s, zp) -> op`` with one Q/DQ pair per
    distinct X, shared by its quantized consumers. Dynamic: ``DynamicQuantizeLinear(X) ->
    DequantizeLinear -> op``. Weights: ``DequantizeLinear(W_q int8, w_scale f32 [N], zp int8 zeros
    [N], axis)`` into input 1, ``W_q`` in ``[-127, 127]`` (``weight_bits`` 8) or ``[-63, 63]`` (7).
    """
    graph = model.graph
    namer = Namer(graph)
    shared: dict[int, ir.Value] = {}
    done = 0
    for op in ops:
        node = op.node
        dq_x = shared.get(id(op.x))
        if dq_x is None:
            first = next(n for n in graph if any(i is op.x for i in n.inputs))
            dq_x = _activation_qdq(graph, namer, op.x, mode, ranges, scheme, first, pass_name)
            shared[id(op.x)] = dq_x
        node.replace_input_with(0, dq_x)
        wq, ws = quantize_weight(op.weight, op.axis, weight_bits)
        base = namer(f"{node.name or 'w'}_wq")
        wq_v = add_initializer(graph, base, wq)
        ws_v = add_initializer(graph, namer(f"{base}_scale"), ws)
        wz_v = add_initializer(graph, namer(f"{base}_zp"), np.zeros(ws.shape, np.int8))
        dq_w = _node(
            namer, "DequantizeLinear", [wq_v, ws_v, wz_v], {"axis": op.axis}, pass_name, "weight"
        )
        dq_w.outputs[0].dtype = ir.DataType.FLOAT
        dq_w.outputs[0].shape = ir.Shape(list(op.weight.shape))
        graph.insert_before(node, dq_w)
        old_w = node.inputs[1]
        node.replace_input_with(1, dq_w.outputs[0])
        if (
            old_w is not None
            and old_w.is_initializer()
            and not old_w.uses()
            and not old_w.is_graph_output()
        ):
            del graph.initializers[old_w.name]
        node.metadata_props[QUANT_KEY] = tag or f"{mode}:u8"
        done += 1
    return done


def _node(
    namer: Namer,
    op_type: str,
    inputs: list,
    attrs: dict,
    pass_name: str,
    rule: str,
    num_outputs: int = 1,
) -> ir.Node:
    base = f"{pass_name}_{op_type}".replace("-", "_")
    node = ir.node(op_type, inputs, attrs, num_outputs=num_outputs, name=namer(base))
    for out in node.outputs:
        out.name = namer(f"{base}_out")
    set_origin(node, f"{pass_name}:{rule}")
    return node


def _activation_qdq(
    graph: ir.Graph,
    namer: Namer,
    x: ir.Value,
    mode: str,
    ranges: dict[str, tuple[float, float]] | None,
    scheme: str,
    before: ir.Node,
    pass_name: str,
) -> ir.Value:
    if mode == "dynamic":
        dq_in = _node(
            namer, "DynamicQuantizeLinear", [x], {}, pass_name, "activation", num_outputs=3
        )
        ins = list(dq_in.outputs)
        ins[0].dtype, ins[1].dtype, ins[2].dtype = (
            ir.DataType.UINT8,
            ir.DataType.FLOAT,
            ir.DataType.UINT8,
        )
        ins[0].shape, ins[1].shape, ins[2].shape = x.shape, ir.Shape([]), ir.Shape([])
        nodes = [dq_in]
    else:
        if ranges is None or x.name not in ranges:
            raise UsageError(f"quantize-int8: no calibrated range for tensor {x.name!r}")
        scale, zp = activation_qparams(*ranges[x.name], scheme)
        s_v = add_initializer(graph, namer(f"{x.name}_scale"), scale)
        z_v = add_initializer(graph, namer(f"{x.name}_zp"), zp)
        q = _node(namer, "QuantizeLinear", [x, s_v, z_v], {}, pass_name, "activation")
        q.outputs[0].dtype = ir.DataType.UINT8 if scheme == "u8" else ir.DataType.INT8
        q.outputs[0].shape = x.shape
        ins = [q.outputs[0], s_v, z_v]
        nodes = [q]
    dq = _node(namer, "DequantizeLinear", ins, {}, pass_name, "activation")
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = x.shape
    for n in [*nodes, dq]:
        graph.insert_before(before, n)
    return dq.outputs[0]


def load_ranges(path: str) -> dict[str, tuple[float, float]]:
    try:
        data = json.loads(Path(path).read_text())
        data = data.get(
            "activation_ranges", data
        )  # a `--report` file, or a plain {tensor: [lo, hi]}
        return {k: (float(v[0]), float(v[1])) for k, v in data.items()}
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise UsageError(
            f"--calibration {path}: not a JSON object of ranges {{tensor: [lo, hi]}} "
            f"({type(exc).__name__})"
        ) from None


@register("quantize-int8")
class QuantizeInt8Pass(Pass):
    """Quantize dense layers to INT8 in the standard QDQ form, which ONNX Runtime runs as is.

    Before::

        %y = lamina::Linear(%x, %W, %b) {...}            # also MatMul(%x, %W), Gemm(%x, %W, %c); W
        constant

    After (static; dynamic puts ``DynamicQuantizeLinear(%x)`` in place of the QuantizeLinear)::

        %xq = QuantizeLinear(%x, %x_scale, %x_zp)        # u8 asymmetric (or s8, zp 0), one pair per
        tensor %xd = DequantizeLinear(%xq, %x_scale, %x_zp) %wd = DequantizeLinear(%W_q, %w_scale,
        %w_zp) {axis=1}   # int8 [K, N], per output channel, symmetric %y  = lamina::Linear(%xd,
        %wd, %b) {...}         # metadata lamina.quant = "static:u8:minmax"

    Biases, residual adds, LayerNorm, softmax and GELU stay fp32. Runs after ``O1`` (so
    ``lamina::Linear`` and the merged QKV projection exist); static mode calibrates on
    ``calibration`` first. Lossy: checked against fp32 with an explicit accuracy bound (mean cosine
    of the output), not by ``--verify-each``'s rtol.
    """

    Options = QuantizeInt8Options
    atol = 0.5
    rtol = 0.5

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        if o.mode not in MODES:
            raise UsageError(f"quantize-int8: mode must be static or dynamic, got {o.mode!r}")
        if o.activation not in SCHEMES:
            raise UsageError(f"quantize-int8: activation must be u8 or s8, got {o.activation!r}")
        if o.weight_bits not in WEIGHT_BITS:
            raise UsageError(f"quantize-int8: weight-bits must be 7 or 8, got {o.weight_bits}")
        exclude = _exclude_set(o.exclude)
        ops, skipped = [], 0
        for node in list(model.graph):
            op, reason = classify(node)
            if op is None:
                if reason != "not a MatMul, Gemm or lamina::Linear":
                    skipped += 1
                    if ctx.wants_explanations(self.name):
                        ctx.explain(f"{node.op_type} {node.name!r}", reason)
                continue
            if node.name in exclude:
                if ctx.wants_explanations(self.name):
                    ctx.explain(f"{node.op_type} {node.name!r}", "excluded: kept in fp32")
                continue
            ops.append(op)
        stats = {"quantized": 0, "skipped": skipped, "excluded": len(exclude)}
        if not ops:
            return PassResult(model, changed=False, stats=stats)
        ranges = None
        mode_tag = "dynamic:u8"
        if o.mode == "static":
            ranges = self._ranges(model, ops)
            mode_tag = f"static:{o.activation}:{o.method}"
        stats["quantized"] = rewrite(
            model,
            ops,
            mode=o.mode,
            ranges=ranges,
            scheme=o.activation,
            tag=mode_tag,
            pass_name=self.name,
            weight_bits=o.weight_bits,
        )
        model.graph.sort()
        return PassResult(model, changed=True, stats=stats)

    def _ranges(self, model: ir.Model, ops: list[QuantOp]) -> dict[str, tuple[float, float]]:
        from lamina.compiler.frontend.shapes import max_positions
        from lamina.passes.quant._calibration import collect_ranges, load_batches

        o = self.options
        if not o.calibration:
            raise UsageError(
                "quantize-int8{mode=static} needs calibration data: --calibration FILE "
                "(texts with --tokenizer DIR, or an .npz of feeds)"
            )
        if o.calibration.endswith(".json"):
            return load_ranges(o.calibration)
        batches = load_batches(
            model, o.calibration, o.tokenizer or None, o.calibration_size, max_positions(model)
        )
        names = list(dict.fromkeys(op.x.name for op in ops))
        return collect_ranges(model, names, batches, o.method, o.percentile)

"""``lamina inspect``: what a model file holds, and what kind of encoder it is."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir import const_array, op_histogram
from lamina.compiler.ir.printer import format_type


def _float_initializers(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for name, value in model.graph.initializers.items():
        if value.const_value is None or value.dtype is None or not value.dtype.is_floating_point():
            continue
        out[name] = value.const_value.numpy()
    return out


def _family(names: list[str]) -> str:
    text = " ".join(names).lower()
    for key, fam in (("distilbert", "distilbert"), ("transformer.layer.", "distilbert"),
                     ("roberta", "roberta"), ("electra", "electra"), ("deberta", "deberta"),
                     ("bert", "bert"), ("encoder.layer.", "bert")):
        if key in text:
            return fam
    return "unknown"


def _num_heads(model: ir.Model, hidden: int | None) -> int | None:
    """Heads from the head-split Reshape targets [.., heads, head_dim] with heads*head_dim ==
    hidden."""
    counts: collections.Counter[int] = collections.Counter()
    for node in model.graph:
        if node.op_type == "Attention" and node.domain == "lamina":
            attr = node.attributes.get("num_heads")
            if attr is not None:
                counts[int(attr.value)] += 1
        if node.op_type != "Reshape" or len(node.inputs) < 2:
            continue
        target = const_array(node.inputs[1])
        if target is None or target.ndim != 1 or target.size != 4:
            continue
        heads, dim = int(target[2]), int(target[3])
        if heads > 0 and dim > 0 and (hidden is None or heads * dim == hidden):
            counts[heads] += 1
        elif heads > 0 and dim == -1 and hidden and hidden % heads == 0:
            counts[heads] += 1
        elif heads == -1 and dim > 0 and hidden and hidden % dim == 0:
            counts[hidden // dim] += 1
    return counts.most_common(1)[0][0] if counts else None


def _dq_params(value: ir.Value | None) -> dict[str, Any] | None:
    """Scale / zero point of the DequantizeLinear (or dynamic quantization) that produces
    ``value``."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear":
        return None
    src = node.inputs[0].producer() if node.inputs[0] is not None else None
    if src is not None and src.op_type == "DynamicQuantizeLinear":
        return {"kind": "dynamic"}
    scale = const_array(node.inputs[1])
    zp = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None:
        return {"kind": "unknown"}
    out: dict[str, Any] = {"dtype": str(zp.dtype) if zp is not None else "uint8"}
    if scale.size == 1:
        out.update(
            scale=float(scale.reshape(())), zero_point=int(zp.reshape(())) if zp is not None else 0
        )
    else:
        out.update(
            channels=int(scale.size), scale_min=float(scale.min()), scale_max=float(scale.max())
        )
    return out


def _quantization(model: ir.Model) -> list[dict[str, Any]]:
    """One entry per quantized op: its tag, activation scale / zero point, weight scales."""
    rows = []
    for node in model.graph:
        if node.op_type in ("MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"):
            rows.append(
                {"op": node.name, "kind": node.op_type, "tag": "onnxruntime-" + node.op_type}
            )
            continue
        w = _dq_params(node.inputs[1]) if len(node.inputs) > 1 else None
        if w is None or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        kind = (
            f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        )
        rows.append(
            {
                "op": node.name,
                "kind": kind,
                "tag": node.metadata_props.get("lamina.quant", "qdq"),
                "activation": _dq_params(node.inputs[0]),
                "weight": w,
            }
        )
    return rows


def _matmul_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """2-D float initializers used as a MatMul / Gemm weight, in the MatMul orientation
    ``[K, N]``."""
    from lamina.passes.sparsity._prune import matmul_weight_values

    out: dict[str, np.ndarray] = {}
    for value, transposed in matmul_weight_values(model):
        arr = value.const_value.numpy()
        out[value.name] = arr.T if transposed else arr
    return out


def sparsity_section(model: ir.Model, fused: ir.Model | None = None) -> dict[str, Any]:
    """Per matmul weight: zeros, all-zero block fractions, 2:4, zero rows / columns and the detected
    pattern; per layer (from the O1 form ``fused``): all-zero attention heads and FFN neurons."""
    from lamina.passes.sparsity._analysis import analyze_weight
    from lamina.passes.sparsity._structure import find_attention_blocks, find_ffn_blocks

    weights = {
        name: analyze_weight(w).to_dict() for name, w in sorted(_matmul_weights(model).items())
    }
    layers: list[dict[str, Any]] = []
    if fused is not None:
        for i, blk in enumerate(find_attention_blocks(fused)):
            z = blk.zero_heads()
            layers.append(
                {
                    "layer": i,
                    "kind": "attention",
                    "heads": blk.heads,
                    "zero_heads": int((z["q"] & z["k"] & z["v"] & z["o"]).sum()),
                    "zero_qk_heads": int((z["q"] | z["k"]).sum()),
                    "no_output_heads": int((z["v"] | z["o"]).sum()),
                }
            )
        for i, ffn in enumerate(find_ffn_blocks(fused)):
            z = ffn.zero_neurons()
            layers.append(
                {
                    "layer": i,
                    "kind": "ffn",
                    "neurons": int(z["up"].size),
                    "zero_neurons": int((z["up"] & z["up_bias"] & z["down"]).sum()),
                    "no_output_neurons": int(z["down"].sum()),
                    "zero_input_neurons": int(z["up"].sum()),
                }
            )
    return {"weights": weights, "layers": layers}


def describe(
    model: ir.Model, canonical: ir.Model | None = None, fused: ir.Model | None = None
) -> dict[str, Any]:
    """A JSON-able description of ``model``. ``canonical`` (the O0 form) helps detect heads and
    layers; ``fused`` (the O1 form) locates attention heads and FFN neurons for the sparsity
    report."""
    graph = model.graph
    inits = _float_initializers(model)
    num_params = int(sum(a.size for a in inits.values()))
    num_bytes = int(
        sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
    )
    zero_fraction = {
        name: round(float(np.mean(a == 0)), 6) for name, a in sorted(inits.items()) if a.ndim >= 2
    }
    ref = canonical or model
    ops = op_histogram(model)
    # Hidden size: the width of the LayerNorm scales (the most common one), else of the embedding
    # table.
    widths: collections.Counter[int] = collections.Counter()
    for node in ref.graph:
        if (
            node.op_type == "LayerNormalization"
            and len(node.inputs) > 1
            and node.inputs[1] is not None
        ):
            shape = node.inputs[1].shape
            if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
                widths[shape[0]] += 1
    hidden = widths.most_common(1)[0][0] if widths else None
    if hidden is None:
        for value in graph.initializers.values():
            if (
                value.shape is not None
                and len(value.shape) == 2
                and value.dtype is not None
                and value.dtype.is_floating_point()
                and value.shape[0] > 1000
            ):
                hidden = int(value.shape[1])
                break
    ref_ops = op_histogram(ref)
    num_layers = ref_ops.get("Softmax", 0) + ref_ops.get("lamina::Attention", 0) or None
    if num_layers is None and hidden:
        ln = ref_ops.get("LayerNormalization", 0)
        num_layers = (ln - 1) // 2 if ln >= 3 else None
    vocab = None
    for value in graph.inputs:
        if "input_ids" in value.name:
            for node, idx in value.uses():
                if (
                    node.op_type == "Gather"
                    and idx == 1
                    and node.inputs[0] is not None
                    and node.inputs[0].shape is not None
                ):
                    vocab = node.inputs[0].shape[0]
    return {
        "inputs": [
            {"name": v.name, "type": format_type(v)}
            for v in graph.inputs
            if v.name not in graph.initializers
        ],
        "outputs": [{"name": v.name, "type": format_type(v)} for v in graph.outputs],
        "opset": model.opset_imports.get("", None),
        "num_nodes": sum(1 for _ in graph),
        "ops": ops,
        "num_parameters": num_params,
        "parameter_bytes": num_bytes,
        "architecture": _family(list(graph.initializers)),
        "num_layers": num_layers,
        "num_heads": _num_heads(ref, hidden),
        "hidden_size": hidden,
        "vocab_size": vocab,
        "weight_zero_fraction": zero_fraction,
        "quantized_ops": _quantization(model),
        "sparsity": sparsity_section(model, fused),
    }


def format_description(path: str, info: dict[str, Any]) -> str:
    lines = [f"model: {path}", f"  opset {info['opset']}, {info['num_nodes']} nodes"]
    arch = info["architecture"]
    lines.append(
        f"  architecture: {arch} encoder, {info['num_layers']} layers, {info['num_heads']} heads, "
        f"hidden {info['hidden_size']}, vocab {info['vocab_size']}"
    )
    lines.append(
        f"  parameters: {info['num_parameters']:,} ({info['parameter_bytes'] / 2**20:.1f} MiB "
        "of initializers)"
    )
    lines.append("  inputs:")
    lines += [f"    {i['name']}: {i['type']}" for i in info["inputs"]]
    lines.append("  outputs:")
    lines += [f"    {o['name']}: {o['type']}" for o in info["outputs"]]
    lines.append("  ops:")
    lines += [f"    {op:<28} {n}" for op, n in info["ops"].items()]
    zf = info["weight_zero_fraction"]
    sparse = {k: v for k, v in zf.items() if v > 0.01}
    lines.append(f"  weights (2-D+): {len(zf)}, with >1% zeros: {len(sparse)}")
    for name, frac in sorted(sparse.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"    {name}: {100 * frac:.1f}% zeros")
    quant = info.get("quantized_ops") or []
    if quant:
        lines.append(f"  quantized ops: {len(quant)}")
        for q in quant:
            a, w = q.get("activation") or {}, q.get("weight") or {}
            if "scale" in a:
                act = f"x {a['dtype']} scale {a['scale']:.4g} zp {a['zero_point']}"
            else:
                act = f"x {a.get('kind', '-')}"
            wt = (
                f"w int8 x{w['channels']} scales {w['scale_min']:.3g}..{w['scale_max']:.3g}"
                if "channels" in w
                else (f"w scale {w['scale']:.4g}" if "scale" in w else "")
            )
            lines.append(f"    {q['op']} ({q['kind']}, {q['tag']}): {act}; {wt}".rstrip("; "))
    lines += format_sparsity(info.get("sparsity"))
    return "\n".join(lines) + "\n"


def format_sparsity(sp: dict[str, Any] | None, limit: int = 40) -> list[str]:
    if not sp or not sp["weights"]:
        return []
    weights = sp["weights"]
    patterns = collections.Counter(w["pattern"] for w in weights.values())
    lines = [
        "  sparsity (matmul weights; blocks are OUTxIN, 4x1 = 4 outputs of one input):",
        "    patterns: " + ", ".join(f"{p} {n}" for p, n in patterns.most_common()),
    ]
    shown = [(n, w) for n, w in weights.items() if w["zeros"] > 0.01]
    if shown:
        lines.append(
            f"    {'weight':<44} {'shape':>11} {'zeros':>6} {'pattern':>12} "
            + " ".join(f"{b:>5}" for b in ("4x1", "1x4", "16x1", "1x16"))
            + "   2:4  0-out 0-in"
        )
    for name, w in sorted(shown, key=lambda kv: -kv[1]["zeros"])[:limit]:
        blocks = w["zero_blocks"]
        cells = " ".join(
            f"{100 * blocks[b]:5.1f}" if b in blocks else "    -"
            for b in ("4x1", "1x4", "16x1", "1x16")
        )
        nm = "    -" if w["nm_2_4"] is None else f"{100 * w['nm_2_4']:5.1f}"
        shape = "x".join(str(d) for d in w["shape"])
        lines.append(
            f"    {name[-44:]:<44} {shape:>11} {100 * w['zeros']:5.1f}% {w['pattern']:>12} {cells} "
            f"{nm} {w['zero_outputs']:>5} {w['zero_inputs']:>4}"
        )
    if len(shown) > limit:
        lines.append(f"    ... {len(shown) - limit} more (--json lists all)")
    for layer in sp["layers"]:
        if layer["kind"] == "attention" and (
            layer["zero_heads"] or layer["zero_qk_heads"] or layer["no_output_heads"]
        ):
            lines.append(
                f"    attention {layer['layer']}: {layer['zero_heads']}/{layer['heads']} heads all "
                f"zero, {layer['no_output_heads']} with zero V or output rows, "
                f"{layer['zero_qk_heads']} with zero Q or K"
            )
        elif layer["kind"] == "ffn" and (layer["zero_neurons"] or layer["no_output_neurons"]):
            lines.append(
                f"    ffn {layer['layer']}: {layer['zero_neurons']}/{layer['neurons']} neurons all "
                f"zero, {layer['no_output_neurons']} with a zero output row"
            )
    return lines

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


def describe(model: ir.Model, canonical: ir.Model | None = None) -> dict[str, Any]:
    """A JSON-able description of ``model``. ``canonical`` (the O0 form) helps detect heads and
    layers."""
    graph = model.graph
    inits = _float_initializers(model)
    num_params = int(sum(a.size for a in inits.values()))
    num_bytes = int(sum(v.const_value.nbytes for v in graph.initializers.values()
                        if v.const_value is not None))
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
            if value.shape is not None and len(value.shape) == 2 and value.dtype is not None and \
                    value.dtype.is_floating_point() and value.shape[0] > 1000:
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
                if node.op_type == "Gather" and idx == 1 and node.inputs[0] is not None and \
                        node.inputs[0].shape is not None:
                    vocab = node.inputs[0].shape[0]
    return {
        "inputs": [{"name": v.name, "type": format_type(v)} for v in graph.inputs
                   if v.name not in graph.initializers],
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
    return "\n".join(lines) + "\n"

"""Deterministic text form of a model: one node a line.

Value names are the graph's own (passes name what they create deterministically), attributes are
sorted, small constants print inline, big tensors as dtype, shape and a content hash, and each
created node shows the pass that made it. Two prints of the same graph are byte-identical, so ``diff
-u`` between dumps means something::

    graph main_graph (opsets: ""=18, lamina=1) {
      input  %input_ids: int64[batch,seq]
      init   %encoder.layer.0.attention.self.query.weight: float[384,384] #9f2c41d07a3b
      %q: float[batch,seq,384] = MatMul(%x, %w)
      %y: float[batch,seq,384] = lamina::Attention(%q, %k, %v, %m) {num_heads=12}  # fuse-attention
      output %last_hidden_state: float[batch,seq,384]
    }

It parses back (:mod:`lamina.compiler.ir.parser`), with the big tensors taken from the model or the
dump's ``.onnx``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir.core import ORIGIN_KEY

INLINE_LIMIT = 8


def _dim(d: object) -> str:
    if isinstance(d, int):
        return str(d)
    name = getattr(d, "value", None)
    return str(name) if name is not None else "?"


def format_type(value: ir.Value) -> str:
    dtype = value.dtype
    dt = dtype.name.lower() if dtype is not None else "?"
    if value.shape is None:
        return dt
    return f"{dt}[{','.join(_dim(d) for d in value.shape)}]"


def tensor_digest(tensor: ir.TensorProtocol) -> str:
    try:
        data = tensor.tobytes()
    except Exception:  # noqa: BLE001 - unreadable external data
        return "#unavailable"
    return "#" + hashlib.sha256(data).hexdigest()[:12]


def format_tensor(tensor: ir.TensorProtocol) -> str:
    dt = tensor.dtype.name.lower()
    shape = ",".join(str(d) for d in tensor.shape)
    size = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
    if size <= INLINE_LIMIT:
        try:
            arr = tensor.numpy()
            vals = np.asarray(arr).reshape(-1).tolist()
            body = ", ".join(_scalar(v) for v in vals)
            return f"{dt}[{shape}] = [{body}]"
        except Exception:  # noqa: BLE001
            pass
    return f"{dt}[{shape}] {tensor_digest(tensor)}"


def _scalar(v: object) -> str:
    if isinstance(v, float):
        return str(np.float32(v))
    return str(v)


def format_attr(attr: ir.Attr) -> str:
    if attr.is_ref():
        return f"{attr.name}=@{attr.ref_attr_name}"
    value = attr.value
    kind = attr.type
    if kind == ir.AttributeType.TENSOR:
        return f"{attr.name}={format_tensor(value)}"
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return f"{attr.name}=<graph>"
    if kind == ir.AttributeType.STRING:
        return f"{attr.name}={value!r}"
    if kind == ir.AttributeType.FLOAT:
        return f"{attr.name}={_scalar(float(value))}"
    if kind == ir.AttributeType.FLOATS:
        return f"{attr.name}=[{', '.join(_scalar(float(v)) for v in value)}]"
    if kind == ir.AttributeType.STRINGS:
        return f"{attr.name}=[{', '.join(repr(v) for v in value)}]"
    if isinstance(value, (list, tuple)):
        return f"{attr.name}=[{', '.join(str(v) for v in value)}]"
    return f"{attr.name}={value}"


def format_node(node: ir.Node, *, types: bool = True) -> str:
    outs = []
    for out in node.outputs:
        if types and (out.dtype is not None or out.shape is not None):
            outs.append(f"%{out.name}: {format_type(out)}")
        else:
            outs.append(f"%{out.name}")
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    if node.overload:
        op += f":{node.overload}"
    args = ", ".join("%" + v.name if v is not None else "_" for v in node.inputs)
    line = f"{', '.join(outs)} = {op}({args})"
    if node.attributes:
        attrs = ", ".join(format_attr(node.attributes[k]) for k in sorted(node.attributes))
        line += f" {{{attrs}}}"
    origin = node.metadata_props.get(ORIGIN_KEY)
    if origin:
        line += f"  # {origin}"
    return line


def _graph_lines(graph: ir.Graph, indent: str, opsets: dict[str, int]) -> list[str]:
    ops = ", ".join(f'"{k}"={v}' if k == "" else f"{k}={v}" for k, v in sorted(opsets.items()))
    lines = [f"{indent}graph {graph.name or 'main'} (opsets: {ops}) {{"]
    inner = indent + "  "
    for v in graph.inputs:
        lines.append(f"{inner}input  %{v.name}: {format_type(v)}")
    for name in sorted(graph.initializers):
        init = graph.initializers[name]
        if init.const_value is None:
            lines.append(f"{inner}init   %{name}: {format_type(init)} <no data>")
        else:
            lines.append(f"{inner}init   %{name}: {format_tensor(init.const_value)}")
    for node in graph:
        lines.append(inner + format_node(node))
    for v in graph.outputs:
        lines.append(f"{inner}output %{v.name}: {format_type(v)}")
    lines.append(f"{indent}}}")
    return lines


def print_ir(model: ir.Model) -> str:
    """The deterministic text of ``model`` (graph, then model-local functions by name)."""
    lines = _graph_lines(model.graph, "", dict(model.opset_imports))
    for key in sorted(model.functions, key=lambda k: tuple(str(p) for p in k)):
        fn = model.functions[key]
        dom, name, overload = key
        title = f"{dom}::{name}" + (f":{overload}" if overload else "")
        lines.append(f"function {title}({', '.join('%' + v.name for v in fn.inputs)}) {{")
        for node in fn:
            lines.append("  " + format_node(node, types=False))
        lines.append(f"  return {', '.join('%' + v.name for v in fn.outputs)}")
        lines.append("}")
    return "\n".join(lines) + "\n"

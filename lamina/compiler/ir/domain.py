"""The ``lamina`` op domain: fused ops with reference definitions.

Each op registers a builder that, given a node's attributes and arity, returns the op's meaning as a
list of standard ONNX nodes (an ONNX function body). On save, :func:`attach_reference_functions`
specialises one function per distinct attribute set (told apart by the node's ``overload``), so ONNX
Runtime runs any graph Lamina writes::

    @reference_op("Gelu", doc="x * 0.5 * (1 + erf(x / sqrt(2)))")
    def _gelu(attrs, n_inputs, n_outputs):
        return FunctionBody(inputs=["x"], outputs=["y"], nodes=[...])

Backends map the same ops to kernels (see ``backends/tvm/lower``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

DOMAIN = "lamina"
DOMAIN_VERSION = 1
REFERENCE_OPSET = 18


@dataclass
class FunctionBody:
    """An ONNX function body in terms of onnx.helper NodeProtos."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[onnx.NodeProto]
    opset: int = REFERENCE_OPSET
    extra_opsets: dict[str, int] = field(default_factory=dict)


Builder = Callable[[dict[str, Any], int, int], FunctionBody]


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    builder: Builder


_OPS: dict[str, OpDef] = {}


def reference_op(name: str, *, doc: str = "") -> Callable[[Builder], Builder]:
    """Register the reference definition of ``lamina::<name>``."""

    def deco(fn: Builder) -> Builder:
        if name in _OPS:
            raise ValueError(f"lamina op {name!r} is registered twice")
        _OPS[name] = OpDef(name, doc or (fn.__doc__ or "").strip(), fn)
        return fn

    return deco


def _load_builtin_ops() -> None:
    import lamina.compiler.ir.ops  # noqa: F401  (registers the built-in lamina ops)


def _attr_values(node: ir.Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attr in node.attributes.items():
        value = attr.value
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def overload_key(node: ir.Node) -> str:
    """A short stable key for the node's attribute set and arity."""
    attrs = _attr_values(node)
    text = repr(sorted(attrs.items())) + f"|{len(node.inputs)}|{len(node.outputs)}"
    return "v" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _to_function(node: ir.Node, body: FunctionBody, overload: str) -> ir.Function:
    opsets = [onnx.helper.make_opsetid("", body.opset)]
    opsets += [onnx.helper.make_opsetid(d, v) for d, v in sorted(body.extra_opsets.items())]
    proto = onnx.helper.make_function(
        DOMAIN, node.op_type, body.inputs, body.outputs, body.nodes, opsets, overload=overload
    )
    return ir.serde.deserialize_function(proto)


def attach_reference_functions(model: ir.Model) -> int:
    """Give every ``lamina`` node an overload and the model a matching function; returns functions
    added."""
    _load_builtin_ops()
    added = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain != DOMAIN:
            continue
        opdef = _OPS.get(node.op_type)
        if opdef is None:
            raise KeyError(
                f"node {node.name!r}: lamina op {node.op_type!r} has no reference definition"
            )
        key = overload_key(node)
        node.overload = key
        fkey = (DOMAIN, node.op_type, key)
        if fkey not in model.functions:
            body = opdef.builder(_attr_values(node), len(node.inputs), len(node.outputs))
            model.functions[fkey] = _to_function(node, body, key)
            added += 1
    if added or any(n.domain == DOMAIN for n in model.graph):
        model.opset_imports.setdefault(DOMAIN, DOMAIN_VERSION)
    # Functions of ops no longer in the graph are dropped so saved files stay small and honest.
    used = {
        (n.domain, n.op_type, n.overload) for n in ir.traversal.RecursiveGraphIterator(model.graph)
    }
    for fkey in [k for k in model.functions if k[0] == DOMAIN and k not in used]:
        del model.functions[fkey]
    return added

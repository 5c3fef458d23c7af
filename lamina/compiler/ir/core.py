"""Small helpers over :mod:`onnx_ir` used by every pass."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir

ORIGIN_KEY = "lamina.origin"

def from_proto(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize, attaching the reference definitions of ``lamina`` ops so ONNX Runtime can run the
    result."""
    from lamina.compiler.ir.domain import attach_reference_functions

    attach_reference_functions(model)
    return ir.serde.serialize_model(model)


def clone(model: ir.Model) -> ir.Model:
    """A deep copy sharing no mutable state with ``model`` (tensor payloads are shared, they are
    immutable)."""
    return model.clone() if hasattr(model, "clone") else from_proto(ir.serde.serialize_model(model))


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in model.graph)


def op_histogram(model: ir.Model) -> dict[str, int]:
    hist = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in model.graph
    )
    return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))


def set_origin(node: ir.Node, origin: str) -> None:
    """Record which pass (and rule) created ``node``; dumps print it."""
    node.metadata_props[ORIGIN_KEY] = origin


class Namer:
    """Hands out fresh names in a graph; one per pass run (scans the graph once)."""

    def __init__(self, graph: ir.Graph) -> None:
        self._taken = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in graph:
            self._taken.add(node.name)
            self._taken.update(out.name for out in node.outputs)
        self._next: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        i = self._next.get(prefix, 0)
        while f"{prefix}_{i}" in self._taken:
            i += 1
        self._next[prefix] = i + 1
        name = f"{prefix}_{i}"
        self._taken.add(name)
        return name


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant payload as numpy (initializer or Constant output), else None."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if (
            producer is not None
            and producer.op_type == "Constant"
            and producer.domain in ("", "ai.onnx")
        ):
            attr = producer.attributes.get("value")
            if attr is not None:
                tensor = attr.value
            else:
                return None
        else:
            return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - external data missing etc.
        return None


def indexed_gathers(value: ir.Value, through: frozenset[str]) -> list[ir.Node]:
    """The standard ``Gather`` nodes that take ``value`` as their index (input 1), directly or
    through ops in ``through`` (followed from their first input, and from either side of an
    ``Add``): the tables an input of token ids reaches."""
    found: list[ir.Node] = []
    frontier, seen = [value], set()
    while frontier:
        v = frontier.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        for node, idx in v.uses():
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Gather" and idx == 1:
                found.append(node)
            elif node.op_type in through and (idx == 0 or node.op_type == "Add"):
                frontier.extend(node.outputs)
    return found

"""Helpers shared by the canonicalization passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

STANDARD = ("", "ai.onnx")


def is_standard(node: ir.Node, *op_types: str) -> bool:
    return node.domain in STANDARD and (not op_types or node.op_type in op_types)


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> bool:
    """Make every use of ``old`` use ``new``; keeps graph output names. False if it cannot (output
    clash)."""
    if old.is_graph_output():
        if new.is_graph_input() or new.is_initializer() or new.is_graph_output():
            return False
        name = old.name
        old.name = None
        new.name = name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        return True
    old.replace_all_uses_with(new)
    return True


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.dtype = value.const_value.dtype
    value.shape = ir.Shape(list(array.shape))
    graph.register_initializer(value)
    return value


def remove_unused_initializers(graph: ir.Graph) -> int:
    outputs = {id(v) for v in graph.outputs}
    inputs = {id(v) for v in graph.inputs}
    dead = [n for n, v in graph.initializers.items()
            if not v.uses() and id(v) not in outputs and id(v) not in inputs]
    for name in dead:
        del graph.initializers[name]
    return len(dead)

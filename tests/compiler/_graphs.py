"""Tiny graphs built in code for the compiler's own tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as h
import onnx_ir as ir


def model_from_nodes(nodes, inputs, outputs, initializers=(), opset=18, domains=()) -> ir.Model:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in domains]
    proto = h.make_model(graph, opset_imports=opsets, ir_version=10)
    return ir.serde.deserialize_model(proto)


def f32(name: str, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def const(name: str, array) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def reshape_graph() -> ir.Model:
    """x[b,s,8] -> Reshape(x, Concat(Shape(x)[0], Shape(x)[1], 2, 4)) -> Identity -> y."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
        h.make_node("Gather", ["s", "i1"], ["d1"], axis=0),
        h.make_node("Unsqueeze", ["d0", "ax"], ["u0"]),
        h.make_node("Unsqueeze", ["d1", "ax"], ["u1"]),
        h.make_node("Constant", [], ["c24"], value=const("c24", np.array([2, 4], np.int64))),
        h.make_node("Concat", ["u0", "u1", "c24"], ["shape"], axis=0),
        h.make_node("Reshape", ["x", "shape"], ["r"]),
        h.make_node("Identity", ["r"], ["r2"]),
        h.make_node("Relu", ["r2"], ["y"]),
    ]
    inits = [const("i0", np.array(0, np.int64)), const("i1", np.array(1, np.int64)),
             const("ax", np.array([0], np.int64))]
    return model_from_nodes(nodes, [f32("x", ["batch", "seq", 8])], [f32("y", None)], inits)

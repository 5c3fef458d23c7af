"""Attention-mask analysis for ``fuse-attention``: is an additive mask just a key padding mask?

Exporters build the additive mask from ``attention_mask`` in many ways: ``(1 - m) * finfo.min``
(TorchScript, older transformers), ``Where(m, 0, finfo.min)`` over a [b, 1, q, k] mask built by
vmap'd index functions (``GatherND`` / ``Gather`` over ``Range`` grids), ``-inf`` fills for SDPA.
Matching each graph shape by shape is brittle, so the analysis works on meaning, in two steps:

1. Provenance (structural): the mask's values may depend on exactly one graph input, a rank-2 tensor
   (``[batch, seq]``); every other dependence must go through ``Shape`` (sizes only). No subgraphs,
   no non-standard ops, no random ops.
2. Behaviour (evaluated): the mask's producer cone is run by the reference backend (ONNX Runtime) on
   probe masks of two sizes, each row with at least one kept key. The result must broadcast to
   ``[batch, 1|heads, seq, seq]``, be exactly 0 where ``mask[b, k] != 0`` and at most ``-1e4`` where
   it is 0 (so ``exp`` underflows to 0 in float32, the same softmax as the ``finfo.min`` bias
   ``lamina::Attention`` adds).

If both hold the mask is a key padding mask over that input; otherwise it stays an additive input.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from lamina.backends import reference
from lamina.compiler.errors import LaminaError
from lamina.passes.fusion._match import STANDARD

PROBES = ((2, 5), (3, 8))
THRESHOLD = -1e4
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
           "Bernoulli", "Dropout"}


def _cone(value: ir.Value) -> tuple[list[ir.Node], set[str], list[ir.Value]]:
    """All nodes ``value`` depends on, the names of graph inputs its *data* depends on, and graph
    inputs."""
    nodes: dict[int, ir.Node] = {}
    data_inputs: set[str] = set()
    inputs: dict[str, ir.Value] = {}
    stack = [(value, True)]
    seen: set[tuple[int, bool]] = set()
    while stack:
        v, data = stack.pop()
        if (id(v), data) in seen:
            continue
        seen.add((id(v), data))
        if v.is_graph_input():
            inputs[v.name] = v
            if data:
                data_inputs.add(v.name)
            continue
        node = v.producer()
        if node is None:
            continue
        nodes[id(node)] = node
        shape_only = node.domain in STANDARD and node.op_type in ("Shape", "Size")
        for inp in node.inputs:
            if inp is not None:
                stack.append((inp, data and not shape_only))
    return list(nodes.values()), data_inputs, list(inputs.values())


def _sub_model(model: ir.Model, value: ir.Value, nodes: list[ir.Node], inputs: list[ir.Value]
               ) -> onnx.ModelProto:
    keep = {id(n) for n in nodes}
    node_protos = [ir.serde.serialize_node(n) for n in model.graph if id(n) in keep]
    used = {i.name for n in nodes for i in n.inputs if i is not None}
    inits = [
        ir.serde.serialize_tensor(v.const_value)
        for name, v in model.graph.initializers.items()
        if name in used and v.const_value is not None
    ]
    for t, name in zip(inits, [n for n, v in model.graph.initializers.items()
                               if n in used and v.const_value is not None], strict=True):
        t.name = name
    vin = [onnx.helper.make_tensor_value_info(i.name, i.dtype.value, [
        d if isinstance(d, int) else None for d in i.shape]) for i in inputs]
    out = onnx.helper.make_tensor_value_info(
        value.name, value.dtype.value if value.dtype else 1, None
    )
    graph = onnx.helper.make_graph(node_protos, "mask_probe", vin, [out], inits)
    opsets = [
        onnx.helper.make_opsetid(d or "", v)
        for d, v in model.opset_imports.items()
        if d in STANDARD
    ]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10)


def analyze(model: ir.Model, value: ir.Value) -> tuple[ir.Value | None, str]:
    """(the key padding input, "") if ``value`` is a key padding mask, else (None, the reason)."""
    if value.dtype is not None and value.dtype != ir.DataType.FLOAT:
        return None, f"mask {value.name!r} is {value.dtype}, not float32"
    nodes, data_inputs, inputs = _cone(value)
    for n in nodes:
        if (
            n.domain not in STANDARD
            or n.op_type in _RANDOM
            or any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                for a in n.attributes.values()
            )
        ):
            return (
                None,
                f"mask cone holds {n.op_type} {n.name!r} (non-standard, random or with subgraphs)",
            )
    if len(data_inputs) != 1:
        return None, (f"mask values depend on graph inputs {sorted(data_inputs) or 'none'}, "
                      "expected exactly one (the attention mask)")
    key = next(i for i in inputs if i.name in data_inputs)
    if key.shape is None or len(key.shape) != 2:
        return None, f"mask source {key.name!r} is not rank 2 [batch, seq]"
    dims = {str(key.shape[0]): 0, str(key.shape[1]): 1}
    for i in inputs:
        if i.shape is None or any(not isinstance(d, int) and str(d) not in dims for d in i.shape):
            return None, f"cannot size probe input {i.name!r} (dims other than {key.name}'s)"
    try:
        sess = reference.session(_sub_model(model, value, nodes, inputs))
    except LaminaError as exc:
        return None, f"mask cone cannot be evaluated: {str(exc).strip().splitlines()[0][:160]}"
    rng = np.random.default_rng(0)
    for batch, seq in PROBES:
        size = (batch, seq)
        feeds = {}
        for i in inputs:
            shape = [d if isinstance(d, int) else size[dims[str(d)]] for d in i.shape]
            np_type = ir.DataType(i.dtype).numpy()
            if i is key:
                m = (rng.random(shape) < 0.6)
                m[:, 0] = True
                m[0, -1] = False
                feeds[i.name] = m.astype(np_type)
            else:
                feeds[i.name] = np.zeros(shape, np_type)
        try:
            (out,) = sess.run(None, feeds)
        except Exception as exc:  # noqa: BLE001
            return (
                None,
                f"mask cone fails on probe inputs: {str(exc).strip().splitlines()[0][:160]}",
            )
        keep = feeds[key.name] != 0
        try:
            full = np.broadcast_shapes(out.shape, (batch, 1, seq, seq))
        except ValueError:
            return None, f"mask shape {out.shape} does not broadcast to [batch, heads, seq, seq]"
        if len(full) != 4 or full[0] != batch or full[2:] != (seq, seq):
            return None, f"mask shape {out.shape} is not [batch, 1|heads, seq, seq]"
        big = np.broadcast_to(out, full)
        keep4 = np.broadcast_to(keep[:, None, None, :], full)
        if not np.all(big[keep4] == 0):
            return (
                None,
                "mask is not 0 at kept keys (not a pure padding mask: causal, relative bias, ...)",
            )
        if not np.all(big[~keep4] <= THRESHOLD):
            return None, f"mask at padded keys is not <= {THRESHOLD:g} (soft mask)"
    return key, ""

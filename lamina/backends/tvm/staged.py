"""Layer-by-layer ("staged") padding-free functions, for token pruning at run time.

A packed graph (``varlen.py``: one ``[1, T]`` token stream, per-sequence offsets) is cut at its
layer boundaries into functions that each run one piece for the same token bucket ``T``::

    embed:  input_ids, ..., lamina_position_ids      -> h_0            [1, T, H]
    l{i}:   h_i, lamina_cu_seqlens                   -> h_{i+1}, r_i   (r: not in the last layer)
    head:   h_L, lamina_first_token                  -> the per-sequence outputs (pooler), if any

``r_i`` (``[heads, T]``, ``lamina::PackedTokenImportance``, the kernel
``varlen_received_attention_kernel``) is the attention each token receives in layer ``i`` per head,
summed over its sequence's queries: the runtime (``pruned_runtime.py``) drops the least important
tokens between layers (``prune-tokens``' math, see
``lamina/compiler/ir/ops/token_pruning.py``), compacts the stream into a smaller token bucket and
runs the next layer on it. Every stage exists for every token bucket, so one artifact serves any
list of per-layer keep ratios; a list of all ones computes exactly the packed function's result.

Layer boundaries in an O1 graph: ``h_i`` is the input ``X`` of the ``lamina::Linear`` that
produces layer ``i``'s queries (``Split(Linear(X, Wqkv))`` with ``merge-qkv``); the last layer's
output ``h_L`` is the output of the last node of the same kind as ``h_1``'s producer (the
LayerNorm that closes a BERT layer). The graph's token output must be ``h_L`` (so that tokens
pruned early carry their last state to it); :class:`NotPackable` says why otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from .packed_runtime import CU_SEQLENS, FIRST_TOKEN, POSITION_IDS
from .varlen import NotPackable, PackedGraph

__all__ = ["Stage", "StagedGraph", "stage_model"]


@dataclass
class Stage:
    name: str                  # embed | l0 .. l{L-1} | head
    model: ir.Model
    inputs: list[str]
    outputs: list[str]


@dataclass
class StagedGraph:
    tokens: int
    seqs: int
    stages: list[Stage]
    layers: int
    heads: list[int]           # attention heads per layer
    scales: list[float]        # attention scale per layer
    token_output: str | None   # the graph output that is h_L (carries pruned tokens)
    seq_outputs: list[str] = field(default_factory=list)


def _dom(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _layer_input(q: ir.Value) -> ir.Value | None:
    """The hidden state ``X`` that the queries ``q`` are projected from."""
    node = q.producer()
    if node is not None and node.op_type == "Split" and _dom(node) == "":
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type != "Linear" or _dom(node) != "lamina":
        return None
    return node.inputs[0]


def _boundaries(g: ir.Graph) -> tuple[list[ir.Value], list[ir.Node]]:
    """``[h_0, ..., h_L]`` and the attention nodes, in graph order."""
    attns = [n for n in g if n.op_type == "PackedAttention" and _dom(n) == "lamina"]
    if len(attns) < 2:
        raise NotPackable("token pruning needs at least two attention layers")
    hs = []
    for a in attns:
        x = _layer_input(a.inputs[0]) if a.inputs[0] is not None else None
        if x is None or x.producer() is None:
            raise NotPackable(f"cannot find the hidden state that {a.name!r}'s queries come from")
        hs.append(x)
    kind = hs[1].producer()
    last = [n for n in g if n.op_type == kind.op_type and _dom(n) == _dom(kind)]
    h_last = last[-1].outputs[0] if last else None
    if h_last is None or h_last in hs:
        raise NotPackable("cannot find the last layer's output")
    return [*hs, h_last], attns


def _cut(model: ir.Model, inputs: list[str], outputs: list[str]) -> ir.Model:
    """A copy of ``model`` computing ``outputs`` from ``inputs`` (values by name)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    m = model.clone()
    g = m.graph
    values: dict[str, ir.Value] = {v.name: v for v in g.inputs if v.name}
    for node in g:
        for o in node.outputs:
            if o.name:
                values[o.name] = o
    outs = [values[n] for n in outputs]
    g.outputs.clear()
    new_inputs = []
    for name in inputs:
        v = values[name]
        if v.is_graph_input():
            new_inputs.append(v)
            continue
        fresh = ir.Value(name=None, type=v.type, shape=v.shape)
        v.replace_all_uses_with(fresh)
        v.name = f"{name}__cut"
        fresh.name = name
        new_inputs.append(fresh)
    g.outputs.extend(outs)
    g.inputs.clear()
    g.inputs.extend(new_inputs)
    RemoveUnusedNodesPass()(m)
    used = {id(i) for n in g for i in n.inputs if i is not None}
    for name in [k for k, v in g.initializers.items() if id(v) not in used]:
        del g.initializers[name]
    return m


def stage_model(packed: PackedGraph) -> StagedGraph:
    """Cut ``packed`` into the stages of the module docstring; :class:`NotPackable` if it cannot."""
    g = packed.model.graph
    hs, attns = _boundaries(g)
    for i, h in enumerate(hs):
        if not h.name:
            h.name = f"lamina_h{i}"
    # Each layer but the last also computes the attention its tokens receive (per head).
    imps = []
    for i, a in enumerate(attns[:-1]):
        attrs = {n: a.attributes[n].value for n in ("num_heads", "scale", "max_len")
                 if n in a.attributes}
        node = ir.node("PackedTokenImportance", list(a.inputs), attrs, domain="lamina",
                       name=f"lamina_importance{i}")
        out = node.outputs[0]
        out.name = f"lamina_importance{i}"
        out.dtype = ir.DataType.FLOAT
        out.shape = ir.Shape([int(a.attributes["num_heads"].value), packed.tokens])
        g.insert_after(a, node)
        imps.append(out.name)
    h_last = hs[-1]
    token_outs = [o for o in g.outputs if o.name in packed.token_outputs]
    if any(o is not h_last for o in token_outs):
        bad = next(o.name for o in token_outs if o is not h_last)
        raise NotPackable(f"token output {bad!r} is not the last layer's output")
    model_inputs = [n for n in packed.inputs if n not in (CU_SEQLENS, FIRST_TOKEN)]
    stages = [Stage("embed", _cut(packed.model, model_inputs, [hs[0].name]), model_inputs,
                    [hs[0].name])]
    for i in range(len(attns)):
        ins = [hs[i].name, CU_SEQLENS]
        outs = [hs[i + 1].name]
        if i < len(attns) - 1:
            outs.append(imps[i])
        stages.append(Stage(f"l{i}", _cut(packed.model, ins, outs), ins, outs))
    if packed.seq_outputs:
        ins = [h_last.name, FIRST_TOKEN]
        stages.append(Stage("head", _cut(packed.model, ins, packed.seq_outputs), ins,
                            list(packed.seq_outputs)))
    for st in stages:
        if POSITION_IDS in st.inputs and st.name != "embed":
            raise NotPackable(f"stage {st.name} reads position ids")
    heads = [int(a.attributes["num_heads"].value) for a in attns]
    scales = [float(a.attributes["scale"].value) if "scale" in a.attributes else 1.0
              for a in attns]
    return StagedGraph(packed.tokens, packed.seqs, stages, len(attns), heads, scales,
                       h_last.name if token_outs else None, list(packed.seq_outputs))

"""Padding-free ("packed") execution: one function per token count runs a batch of uneven rows.

A batch's real tokens are packed one after another into a single ``[1, T]`` stream (``T``: a token
bucket at or above the batch's real token count). Every op of an encoder layer but attention is
row-independent (embeddings, the dense kernels, LayerNorm, GELU), so it runs on the stream as is;
attention gets the sequences' offsets (``cu_seqlens``) and runs the variable-length kernel of
``kernels/varlen_attention.py``, each token attending to its own sequence only. Nothing is computed
on padding except the bucket's tail (fewer than one bucket step of tokens).

:func:`pack_model` turns the optimized graph (O1: ``lamina::Attention`` with a key-padding mask,
merged QKV) into the packed graph for one token bucket::

    position_embeddings Gather(table, [0..T-1])   ->  Gather(table, lamina_position_ids[1, T])
    lamina::Attention(q, k, v, attention_mask)    ->  lamina::PackedAttention(q, k, v,
    lamina_cu_seqlens) Gather(hidden[1, T, H], 0, axis=1)  (pooler)  ->  Reshape(Gather(hidden,
    lamina_first_token, axis=1))

and refuses (with the reason) a graph whose ops are not known to be row-independent, or whose mask
feeds anything but attention. The graph outputs become token outputs (``[1, T, ...]``, unpacked into
``[batch, seq, ...]`` with zeros at padding) or sequence outputs (``[S, ...]``, one row per
sequence). The packed graph is internal to the compiler (the runtime's contract is unchanged: padded
feeds in, padded outputs out); :mod:`.packed_runtime` packs requests and picks packed or fixed
buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .packed_runtime import CU_SEQLENS, FIRST_TOKEN, POSITION_IDS

log = logging.getLogger(__name__)

__all__ = ["CU_SEQLENS", "FIRST_TOKEN", "POSITION_IDS", "NotPackable", "PackedGraph", "pack_model"]

# Ops that act on each token independently (broadcasting only over the feature axis): they may see
# the packed stream. Gather is checked separately (embedding tables and the pooler's first token),
# and so are static INT8's QuantizeLinear / DequantizeLinear (per-tensor or per-feature scales; a
# DynamicQuantizeLinear takes its range from every token of the batch, padding included, so it is
# not row-independent and stays refused).
_ROW_OPS = {("", op) for op in ("Add", "Sub", "Mul", "Div", "LayerNormalization", "Erf", "Tanh",
                                "Relu", "Sigmoid", "Cast", "Identity", "Sqrt", "Pow", "Split")}
_ROW_OPS |= {("lamina", op) for op in ("Linear", "Gelu", "LayerNorm", "PackedAttention")}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow"}
_SEQ_OPS = {("", op) for op in ("Gemm", "Tanh", "Add", "Mul", "Identity", "Reshape",
                                 "QuantizeLinear", "DequantizeLinear", "MatMul")}

# Token buckets: steps of 32 up to 256 tokens, 64 up to 512, 128 beyond (a bucket pads by less
# than one step: a quarter of the tokens at most from 128 up).
DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_SEQS = 32


def default_token_buckets(max_tokens: int = DEFAULT_MAX_TOKENS) -> list[int]:
    out, t = [], 32
    while t <= max_tokens:
        out.append(t)
        t += 32 if t < 256 else 64 if t < 512 else 128
    return out


class NotPackable(Exception):
    """The graph cannot run packed; the message says why (the artifact keeps fixed buckets only)."""


@dataclass
class PackedGraph:
    model: ir.Model
    tokens: int
    seqs: int
    inputs: list[str]          # graph inputs in order (original token inputs, then lamina_*)
    token_outputs: list[str]   # [1, T, ...] outputs
    seq_outputs: list[str]     # [S, ...] outputs


def _domain(node: ir.Node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _is_position_table(v: ir.Value | None) -> bool:
    return (v is not None and v.const_value is not None and v.shape is not None
            and len(v.shape) == 2 and "position" in (v.name or "").lower())


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        return p.attributes["value"].value.numpy()
    return None


def _is_weight(v: ir.Value | None) -> bool:
    """A constant, or the dequantization of one (a QDQ weight)."""
    if _const(v) is not None:
        return True
    p = v.producer() if v is not None else None
    return (p is not None and p.op_type == "DequantizeLinear" and _domain(p) == ""
            and _const(p.inputs[0]) is not None)


def _reads_input_values(v: ir.Value | None) -> bool:
    """Whether ``v`` depends on a graph input's values (not only on its shape)."""
    seen: set[int] = set()
    stack = [v]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        node = cur.producer()
        if node is None:
            if cur.const_value is None and cur.is_graph_input():
                return True
            continue
        if node.op_type == "Shape" and _domain(node) == "":
            continue
        stack.extend(node.inputs)
    return False


def pack_model(model: ir.Model, tokens: int, seqs: int, max_len: int | None = None,
               canonicalize: Callable[[ir.Model, dict[str, int]], ir.Model] | None = None,
               ) -> PackedGraph:
    """The packed graph of ``model`` (optimized, symbolic batch/seq) for ``tokens`` tokens in at
    most ``seqs`` sequences, none longer than ``max_len`` (the attention scratch size); raises
    :class:`NotPackable` with the reason when the graph does not fit. ``canonicalize(model, dims)``
    re-canonicalizes the specialized copy (the driver passes O0; specialization alone leaves the
    shape arithmetic unfolded)."""
    from lamina.compiler.frontend import specialize

    dims = {}
    ids_shape = None
    for value in model.graph.inputs:
        for axis, dim in enumerate(value.shape or ()):
            if not isinstance(dim, int) and dim.value:
                dims[dim.value] = 1 if axis == 0 else tokens
        if value.shape is not None and len(value.shape) == 2 and ids_shape is None:
            ids_shape = value.shape
    # Positions become an input before specialization (which would fold them to 0..T-1).
    src = model.clone()
    pos_sym = ir.Value(name=POSITION_IDS, type=ir.TensorType(ir.DataType.INT64), shape=ids_shape)
    used_pos = False
    for node in src.graph:
        if node.op_type == "Gather" and _domain(node) == "" and _is_position_table(node.inputs[0]):
            if _reads_input_values(node.inputs[1]):
                raise NotPackable(f"position ids of {node.name!r} are computed from the inputs' "
                                  "values (e.g. RoBERTa's padding-offset positions)")
            node.replace_input_with(1, pos_sym)
            used_pos = True
    if not used_pos:
        raise NotPackable("no position-embedding lookup found")
    src.graph.inputs.append(pos_sym)
    spec = specialize(src, dims)
    if canonicalize is not None:
        spec = canonicalize(spec, dims)
    g = spec.graph
    mask_inputs = [v for v in g.inputs if "mask" in (v.name or "").lower()]
    pos = next(v for v in g.inputs if v.name == POSITION_IDS)
    cu = ir.Value(name=CU_SEQLENS, type=ir.TensorType(ir.DataType.INT32),
                  shape=ir.Shape([seqs + 1]))
    first = ir.Value(
        name=FIRST_TOKEN, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([seqs])
    )
    pooled: list[ir.Node] = []  # the Reshapes that start the per-sequence region
    attentions = 0
    for node in list(g):
        dom, op = _domain(node), node.op_type
        if op == "Gather" and dom == "":
            data, idx = node.inputs
            axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
            if data is not None and data.const_value is not None and axis == 0:
                continue  # an embedding lookup by token-level ids: row-independent
            index = _const(idx)
            if (
                axis == 1
                and index is not None
                and index.size == 1
                and int(index.reshape(-1)[0]) == 0
                and data is not None
                and data.shape is not None
                and len(data.shape) == 3
            ):
                # The pooler's first token: take each sequence's first token instead.
                hidden = data.shape[2]
                gathered = ir.node("Gather", [data, first], {"axis": 1}, name=f"{node.name}_packed")
                shape = ir.Value(
                    name=f"{node.name}_packed_shape",
                    const_value=ir.tensor(np.array([seqs, hidden], np.int64)),
                )
                g.register_initializer(shape)
                reshaped = ir.node(
                    "Reshape", [gathered.outputs[0], shape], name=f"{node.name}_packed_rows"
                )
                g.insert_before(node, [gathered, reshaped])
                out = node.outputs[0]
                new = reshaped.outputs[0]
                new.dtype, new.shape = out.dtype, ir.Shape([seqs, hidden])
                if out.is_graph_output():
                    name = out.name
                    out.name = None
                    new.name = name
                    out.replace_all_uses_with(new, replace_graph_outputs=True)
                else:
                    out.replace_all_uses_with(new)
                g.remove(node, safe=True)
                pooled.append(reshaped)
                continue
            raise NotPackable(
                f"Gather {node.name!r} is neither an embedding lookup nor the pooler's first token"
            )
        if dom == "lamina" and op == "Attention":
            kind = node.attributes["mask_kind"].value if "mask_kind" in node.attributes else "none"
            if kind not in ("none", "key_padding"):
                raise NotPackable(f"attention {node.name!r} has mask_kind={kind!r}")
            q, k, v = node.inputs[:3]
            if (
                q is None
                or k is None
                or v is None
                or q.shape is None
                or k.shape is None
                or list(q.shape) != list(k.shape)
            ):
                raise NotPackable(f"attention {node.name!r} is not self-attention")
            attrs = {
                n: node.attributes[n].value for n in ("num_heads", "scale") if n in node.attributes
            }
            attrs["max_len"] = min(tokens, max_len or tokens)
            packed = ir.node(
                "PackedAttention", [q, k, v, cu], attrs, domain="lamina", name=f"{node.name}_packed"
            )
            g.insert_before(node, packed)
            packed.outputs[0].dtype, packed.outputs[0].shape = node.outputs[0].dtype, q.shape
            node.outputs[0].replace_all_uses_with(packed.outputs[0])
            g.remove(node, safe=True)
            attentions += 1
            continue
    if not attentions:
        raise NotPackable("no fused attention (lamina::Attention) in the graph; run O1")
    # What is left must be row-independent (token region) or per sequence (after the pooler Gather).
    seq_values: set[ir.Value] = set()
    for node in g:
        dom, op = _domain(node), node.op_type
        if node in pooled:
            seq_values.update(node.outputs)
            continue
        if any(i in seq_values for i in node.inputs if i is not None):
            if (dom, op) not in _SEQ_OPS or (op == "MatMul" and not _is_weight(node.inputs[1])):
                raise NotPackable(f"{op} {node.name!r} after the pooler is not supported packed")
            for out in node.outputs:  # one row per sequence now, not per batch row
                if out.shape is not None and len(out.shape) >= 1:
                    out.shape = ir.Shape([seqs, *list(out.shape)[1:]])
            seq_values.update(node.outputs)
            continue
        if dom == "" and op in ("QuantizeLinear", "DequantizeLinear"):
            # Static INT8 (QDQ): row-independent when the scale is per tensor or per feature.
            scale = node.inputs[1]
            rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
            axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 1
            per_tensor = (scale is not None and scale.shape is not None
                          and all(d == 1 for d in scale.shape))
            if per_tensor or _const(node.inputs[0]) is not None or axis in (-1, rank - 1):
                continue
            raise NotPackable(f"{op} {node.name!r} quantizes along the token axis")
        if op == "Gather" or (dom, op) in _ROW_OPS:
            if dom == "" and op in _ELEMENTWISE:
                for i in node.inputs:
                    # A constant that varies along the token axis (e.g. folded positions) would
                    # be added to the wrong tokens of a packed stream.
                    if (
                        i is not None
                        and i.const_value is not None
                        and i.shape is not None
                        and len(i.shape) >= 2
                        and i.shape[-2] != 1
                    ):
                        raise NotPackable(
                            f"{op} {node.name!r} adds a per-position constant {i.name!r}"
                        )
            if op == "Split" and dom == "":
                axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
                rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
                if axis not in (-1, rank - 1):
                    raise NotPackable(f"Split {node.name!r} is not on the feature axis")
            continue
        raise NotPackable(f"{op} {node.name!r} may mix tokens of different rows")
    for m in mask_inputs:
        if m.uses():
            raise NotPackable(f"input {m.name!r} feeds more than attention")
    keep = [v for v in g.inputs if v.uses() and v not in mask_inputs and v is not pos]
    g.inputs.clear()
    g.inputs.extend([*keep, pos, cu])
    if pooled:
        g.inputs.append(first)
    token_outputs, seq_outputs = [], []
    for o in g.outputs:
        (seq_outputs if o in seq_values else token_outputs).append(o.name or "")
    return PackedGraph(
        spec, tokens, seqs, [v.name or "" for v in g.inputs], token_outputs, seq_outputs
    )

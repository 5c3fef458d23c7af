"""Magnitude pruning of a model's matmul weights (``lamina prune``): makes sparse models to study.

Patterns (block names in the ``[out, in]`` orientation, see ``_analysis``):

- ``unstructured``: the smallest ``|w|`` of each weight become zero;
- ``RxC`` (``4x1``, ``1x4``, ``16x1`` ...): blocks of R outputs x C inputs with the smallest L2
  norm;
- ``2:4``: in every group of 4 consecutive inputs of one output, the 2 smallest (sparsity is 50%);
- ``heads``: whole attention heads (Q, K, V columns and biases, and the output projection's rows),
  smallest total L2 norm first, per layer;
- ``neurons``: whole FFN neurons (the up projection's column and bias, the down projection's row),
  smallest ``|w_up| * |w_down|`` first, per layer.

Every weight (or layer) is pruned to the same sparsity. No fine-tuning: accuracy drops, and
``lamina prune --tokenizer`` prints by how much.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.passes.sparsity._analysis import parse_block

log = logging.getLogger(__name__)

STRUCTURED = ("heads", "neurons")


def check_pattern(pattern: str) -> None:
    if pattern in ("unstructured", "2:4", *STRUCTURED):
        return
    try:
        parse_block(pattern)
    except ValueError:
        raise UsageError(
            f"--pattern {pattern!r}: expected unstructured, RxC (4x1, 1x4, 16x1 ...), 2:4, "
            "heads or neurons"
        ) from None


def _drop_smallest(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean keep-mask of ``scores``' shape with the ``sparsity`` fraction of smallest entries
    off."""
    flat = scores.reshape(-1)
    n_drop = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, bool)
    if n_drop > 0:
        keep[np.argsort(flat, kind="stable")[:n_drop]] = False
    return keep.reshape(scores.shape)


def prune_weight(w_kn: np.ndarray, sparsity: float, pattern: str) -> np.ndarray:
    """``W[K, N]`` with the pattern's smallest-magnitude groups set to zero."""
    w = np.array(w_kn, dtype=w_kn.dtype, copy=True)
    k, n = w.shape
    if pattern == "unstructured":
        return w * _drop_smallest(np.abs(w), sparsity)
    if pattern == "2:4":
        if k % 4:
            raise UsageError(f"2:4 needs the input size to be a multiple of 4, got {k}")
        g = np.abs(w).reshape(k // 4, 4, n)
        order = np.argsort(g, axis=1, kind="stable")
        keep = np.ones_like(g, dtype=bool)
        np.put_along_axis(keep, order[:, :2, :], False, axis=1)
        return w * keep.reshape(k, n)
    r, c = parse_block(pattern)
    if k % c or n % r:
        raise UsageError(
            f"block {pattern}: weight {k}x{n} (inputs x outputs) does not split into "
            f"{r} outputs x {c} inputs"
        )
    norms = np.sqrt((w.astype(np.float64) ** 2).reshape(k // c, c, n // r, r).sum(axis=(1, 3)))
    keep = _drop_smallest(norms, sparsity)
    return w * np.repeat(np.repeat(keep, c, axis=0), r, axis=1)


def matmul_weight_values(model: ir.Model) -> list[tuple[ir.Value, bool]]:
    """Initializers used as MatMul / Gemm weights: (value, stored transposed as ``[N, K]``)."""
    seen: dict[str, tuple[ir.Value, bool]] = {}
    for node in model.graph:
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type not in ("MatMul", "Gemm")
            or len(node.inputs) < 2
        ):
            continue
        v = node.inputs[1]
        if v is None or v.name in seen or v.name not in model.graph.initializers:
            continue
        if (
            v.const_value is None
            or len(v.const_value.shape) != 2
            or not v.dtype.is_floating_point()
        ):
            continue
        trans = node.attributes.get("transB")
        seen[v.name] = (v, node.op_type == "Gemm" and trans is not None and bool(trans.value))
    return list(seen.values())


def _set(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)


def _structured_blocks(model: ir.Model) -> tuple[list[Any], list[Any]]:
    from lamina.compiler.pipeline import PassManager, parse_pipeline
    from lamina.passes.sparsity._structure import find_attention_blocks, find_ffn_blocks

    fused = PassManager(
        parse_pipeline(
            "O0,fuse-layernorm,fuse-gelu,fuse-attention,fuse-bias-residual,remove-dead-code"
        )
    ).run(model.clone())
    return find_attention_blocks(fused), find_ffn_blocks(fused)


def _init(model: ir.Model, value: ir.Value, what: str) -> ir.Value:
    """The original initializer behind a weight of the fused graph (names survive
    canonicalization)."""
    orig = model.graph.initializers.get(value.name or "")
    if orig is None or orig.const_value is None:
        raise UsageError(
            f"prune: cannot map {what} {value.name!r} back to an initializer of the model; "
            "structured pruning needs weights stored as MatMul initializers (a torchscript "
            "export)"
        )
    return orig


def prune_model(model: ir.Model, sparsity: float, patterns: Iterable[str]) -> dict[str, Any]:
    """Prune ``model`` in place; returns stats (weights / heads / neurons pruned)."""
    patterns = list(patterns)
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--sparsity {sparsity}: expected a fraction in [0, 1)")
    for p in patterns:
        check_pattern(p)
    stats: dict[str, Any] = {"weights": 0, "heads": 0, "neurons": 0}
    weight_patterns = [p for p in patterns if p not in STRUCTURED]
    if len(weight_patterns) > 1:
        raise UsageError(f"--pattern: give one weight pattern, got {', '.join(weight_patterns)}")
    if weight_patterns:
        for value, transposed in matmul_weight_values(model):
            w = value.const_value.numpy()
            w_kn = w.T if transposed else w
            pruned = prune_weight(w_kn, sparsity, weight_patterns[0])
            _set(value, pruned.T if transposed else pruned)
            stats["weights"] += 1
    if not any(p in STRUCTURED for p in patterns):
        return stats
    attns, ffns = _structured_blocks(model)
    if "heads" in patterns:
        if not attns:
            raise UsageError(
                "--pattern heads: no attention layer with constant Q/K/V/output weights found"
            )
        for blk in attns:
            stats["heads"] += _prune_heads(model, blk, sparsity)
    if "neurons" in patterns:
        if not ffns:
            raise UsageError("--pattern neurons: no FFN (Linear+activation -> Linear) found")
        for ffn in ffns:
            stats["neurons"] += _prune_neurons(model, ffn, sparsity)
    return stats


def _prune_heads(model: ir.Model, blk: Any, sparsity: float) -> int:
    h, d = blk.heads, blk.head_dim
    projs = [blk.q, blk.k, blk.v]
    ws = [_init(model, p.linear.inputs[1], "weight") for p in projs]
    bs = [_init(model, p.linear.inputs[2], "bias") for p in projs]
    wo = _init(model, blk.out.inputs[1], "weight")
    score = np.zeros(h)
    for p, w in zip(projs, ws, strict=True):
        cols = w.const_value.numpy()[:, p.lo : p.hi].astype(np.float64)
        score += (cols**2).reshape(cols.shape[0], h, d).sum(axis=(0, 2))
    score += (wo.const_value.numpy().astype(np.float64) ** 2).reshape(h, d, -1).sum(axis=(1, 2))
    drop = ~_drop_smallest(score, sparsity)
    cols = np.repeat(drop, d)
    for p, w, b in zip(projs, ws, bs, strict=True):
        wa, ba = w.const_value.numpy().copy(), b.const_value.numpy().copy()
        wa[:, p.lo : p.hi][:, cols] = 0
        flat = ba.reshape(-1)
        flat[p.lo : p.hi][cols] = 0
        _set(w, wa)
        _set(b, flat.reshape(ba.shape))
    woa = wo.const_value.numpy().copy()
    woa[cols, :] = 0
    _set(wo, woa)
    return int(drop.sum())


def _prune_neurons(model: ir.Model, ffn: Any, sparsity: float) -> int:
    w1 = _init(model, ffn.up.inputs[1], "weight")
    b1 = _init(model, ffn.up.inputs[2], "bias")
    w2 = _init(model, ffn.down.inputs[1], "weight")
    a1, ab, a2 = (v.const_value.numpy().copy() for v in (w1, b1, w2))
    score = np.linalg.norm(a1.astype(np.float64), axis=0) * np.linalg.norm(
        a2.astype(np.float64), axis=1
    )
    drop = ~_drop_smallest(score, sparsity)
    a1[:, drop] = 0
    ab.reshape(-1)[drop] = 0
    a2[drop, :] = 0
    _set(w1, a1)
    _set(b1, ab)
    _set(w2, a2)
    return int(drop.sum())

"""``encode-sparsity``: constant pruned weights -> ``lamina::SparseLinear`` when the cost model says
it pays.

Before::

    %y = lamina::Linear(%x, %W[384, 1536], %b) {activation: gelu}      # W 90% zeros in 4x1 blocks

After::

    %y = lamina::SparseLinear(%x, %data[nnzb, 4], %index[nnzb], %b)
             {in_features: 384, out_features: 1536, block: 4, activation: gelu, has_residual: 0}

For every ``lamina::Linear`` with a constant 2-D float32 weight the pass measures the weight's block
structure (``_analysis.block_mask``) and asks the cost table (``_cost``: kernel timings measured on
the target, ``lamina compile`` passes its table in ``costs``) for the per-token time of the dense
kernel and of the block-sparse kernel at each block width it knows. It rewrites the matmul with the
fastest width when the predicted gain is at least ``min-gain``, and lists every decision in its
stats (``decisions``; the compile log prints them). Exact: the kernel and the reference definition
use the very weights, zeros left out. Run after O1's fusions and ``shrink-structured``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import PassError
from lamina.compiler.ir import const_array
from lamina.compiler.pipeline import Pass, PassContext, PassResult, option, register
from lamina.passes.fusion._utils import DOMAIN, Rewriter
from lamina.passes.sparsity._analysis import analyze_weight
from lamina.passes.sparsity._cost import CostTable

log = logging.getLogger(__name__)

DEFAULT_COSTS = Path(__file__).with_name("default_costs.json")


def encode_weight(w_kn: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``(data[nnzb, r], index[nnzb])`` of ``lamina::SparseLinear`` (``index = g * K + k``,
    ascending). An all-zero weight keeps one explicit zero block, so no tensor is empty."""
    k, n = w_kn.shape
    blocks = w_kn.reshape(k, n // r, r).transpose(1, 0, 2)
    g, kk = np.nonzero((blocks != 0).any(axis=2))
    if g.size == 0:
        g, kk = np.zeros(1, np.int64), np.zeros(1, np.int64)
    data = np.ascontiguousarray(blocks[g, kk], dtype=np.float32)
    return data, (g.astype(np.int64) * k + kk).astype(np.int64)


@dataclass(frozen=True)
class EncodeSparsityOptions:
    costs: str = option(
        "", "cost table JSON measured on the target (default: the shipped AVX-512 table)"
    )
    min_gain: float = option(1.15, "predicted dense / sparse time needed to encode a matmul")


@register("encode-sparsity")
class EncodeSparsityPass(Pass):
    """Rewrite pruned constant-weight ``lamina::Linear`` into ``lamina::SparseLinear`` where it
    pays."""

    Options = EncodeSparsityOptions
    atol = 1e-5
    rtol = 1e-5

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        path = self.options.costs or DEFAULT_COSTS
        try:
            table = CostTable.load(path)
        except ValueError as exc:
            raise PassError(
                f"encode-sparsity: {exc}; give costs=PATH or rerun lamina compile, which "
                "measures the table"
            ) from None
        rw = Rewriter(model, ctx, self.name)
        decisions: list[str] = []
        encoded = 0
        for node in list(model.graph):
            if node.op_type != "Linear" or node.domain != DOMAIN:
                continue
            w = const_array(node.inputs[1])
            if w is None or w.ndim != 2 or w.dtype != np.float32:
                rw.explain(node, "weight is not a constant 2-D float32 tensor")
                continue
            info = analyze_weight(w)
            if info.zeros == 0.0:
                rw.explain(node, "dense weight (no zeros)")
                continue
            pred = table.predict(w)
            use = pred.gain >= self.options.min_gain
            line = (
                f"{node.name}: W {w.shape[0]}x{w.shape[1]} {100 * info.zeros:.1f}% zeros "
                f"({info.pattern}); dense {pred.dense_ns:.0f} ns/token, sparse {pred.block}x1 "
                f"{pred.sparse_ns:.0f} ns/token ({100 * pred.density:.0f}% of blocks stored): "
                f"{'SPARSE' if use else 'dense'}, predicted gain {pred.gain:.2f}x"
            )
            decisions.append(line)
            log.info("encode-sparsity %s", line)
            if not use:
                rw.explain(
                    node, f"predicted gain {pred.gain:.2f}x < min-gain {self.options.min_gain}"
                )
                continue
            self._rewrite(rw, node, w, pred.block)
            encoded += 1
        stats = {
            "encoded": encoded,
            "kept_dense": len(decisions) - encoded,
            "decisions": decisions,
            "unmatched": rw.misses,
        }
        return PassResult(model, changed=encoded > 0, stats=stats)

    @staticmethod
    def _rewrite(rw: Rewriter, node: ir.Node, w: np.ndarray, r: int) -> None:
        data, index = encode_weight(w, r)
        act = node.attributes.get("activation")
        res = node.attributes.get("has_residual")
        has_res = int(res.value) if res is not None else 0
        inputs = [
            node.inputs[0],
            rw.initializer("sparse_data", data),
            rw.initializer("sparse_index", index),
            node.inputs[2],
        ]
        if has_res:
            inputs.append(node.inputs[3])
        attrs = {
            "in_features": int(w.shape[0]),
            "out_features": int(w.shape[1]),
            "block": r,
            "activation": act.value if act is not None else "none",
            "has_residual": has_res,
        }
        new = rw.node("SparseLinear", inputs, attrs, domain=DOMAIN, rule=f"{r}x1", before=node)
        rw.replace(node.outputs[0], new.outputs[0])
        rw.remove_dead([node])

"""``smooth-quant``: SmoothQuant-style migration of activation outliers into the weights,
exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.compiler.ir import Namer, set_origin
from lamina.compiler.pipeline import Pass, PassContext, PassResult, option, register
from lamina.passes.canonical._utils import add_initializer
from lamina.passes.quant._utils import QuantOp, classify

SMOOTH_KEY = "lamina.smooth"


@dataclass(frozen=True)
class SmoothQuantOptions:
    alpha: float = option(0.5, "migration strength: s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)")
    calibration: str = option(
        "", "a text file (one text a line; needs tokenizer) or an .npz of feeds"
    )
    tokenizer: str = option("", "directory with tokenizer.json, for a text calibration file")
    calibration_size: int = option(300, "calibration samples to use")


def _channel_absmax(model: ir.Model, names: list[str], batches: list) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor ``names`` over the calibration batches."""
    from lamina.backends.reference import session
    from lamina.passes.quant._calibration import iterate

    probe = model.clone()
    by_name = {out.name: out for node in probe.graph for out in node.outputs}
    inputs = {v.name for v in probe.graph.inputs}
    fetch = [n for n in names if n not in inputs]
    for n in fetch:
        if not by_name[n].is_graph_output():
            probe.graph.outputs.append(by_name[n])
    sess = session(probe)
    acc: dict[str, np.ndarray] = {}
    for feeds in iterate(batches, "smooth-quant statistics"):
        outs = dict(zip(fetch, sess.run(fetch, feeds), strict=True)) if fetch else {}
        for n in names:
            x = feeds[n] if n in inputs else outs[n]
            m = np.abs(x.reshape(-1, x.shape[-1])).max(0)
            acc[n] = m if n not in acc else np.maximum(acc[n], m)
    return acc


def smooth(model: ir.Model, batches: list, alpha: float, pass_name: str = "smooth-quant") -> int:
    """Smooth every quantizable op's input in place; returns the number of tensors smoothed.

    Per input channel k of X (shared by all its quantizable consumers, e.g. the merged QKV
    projection): ``s_k = max|X_k|^alpha / max_j max|W_j[k, :]|^(1 - alpha)``, then ``X' = X *
    (1/s)`` (one ``Mul`` by a constant vector) and ``W'[k, :] = s_k W[k, :]`` in every consumer, so
    ``X' @ W' == X @ W``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"smooth-quant: alpha must be in [0, 1], got {alpha}")
    groups: dict[int, list[QuantOp]] = {}
    for node in model.graph:
        op, _ = classify(node)
        if op is None or SMOOTH_KEY in node.metadata_props:
            continue
        if op.axis != 1:  # Gemm{transB=1}: weight rows are output channels; not smoothed
            continue
        groups.setdefault(id(op.x), []).append(op)
    if not groups:
        return 0
    xs = {key: ops[0].x for key, ops in groups.items()}
    stats = _channel_absmax(model, [x.name for x in xs.values()], batches)
    namer = Namer(model.graph)
    done = 0
    for key, ops in groups.items():
        x = xs[key]
        act = stats[x.name].astype(np.float64)
        wmax = np.max([np.abs(op.weight).max(1) for op in ops], axis=0).astype(np.float64)
        s = np.where(
            (act > 0) & (wmax > 0), act**alpha / np.maximum(wmax, 1e-12) ** (1 - alpha), 1.0
        )
        s = np.clip(s, 1e-5, 1e5).astype(np.float32)
        inv = add_initializer(model.graph, namer(f"{x.name}_smooth"), (1.0 / s).astype(np.float32))
        mul = ir.node("Mul", [x, inv], name=namer(f"{pass_name}_Mul".replace("-", "_")))
        mul.outputs[0].name = namer(f"{x.name}_smoothed")
        mul.outputs[0].dtype, mul.outputs[0].shape = x.dtype, x.shape
        set_origin(mul, pass_name)
        model.graph.insert_before(ops[0].node, mul)
        for op in ops:
            w = add_initializer(
                model.graph,
                namer(f"{op.node.name}_w_smooth"),
                (op.weight * s[:, None]).astype(np.float32),
            )
            op.node.replace_input_with(0, mul.outputs[0])
            op.node.replace_input_with(1, w)
            op.node.metadata_props[SMOOTH_KEY] = f"alpha={alpha}"
        done += 1
    model.graph.sort()
    from lamina.passes.canonical._utils import remove_unused_initializers

    remove_unused_initializers(model.graph)
    return done


@register("smooth-quant")
class SmoothQuantPass(Pass):
    """Move activation outliers into the weights, per input channel, before ``quantize-int8``.

    Before::

        %y = lamina::Linear(%x, %W, %b)               # x has a few channels 10-100x larger than the
        rest

    After::

        %xs = Mul(%x, %inv_s)                          # inv_s = 1/s, s per input channel (see
        smooth()) %y  = lamina::Linear(%xs, %W_s, %b)            # W_s = diag(s) @ W; metadata
        lamina.smooth

    Exact in fp32 (``X diag(1/s) diag(s) W = X W`` up to rounding, rtol 1e-4); it only changes how
    evenly the quantization error falls on the channels. Ops already smoothed are left alone
    (idempotent).
    """

    Options = SmoothQuantOptions
    rtol = 1e-4
    atol = 1e-4

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from lamina.compiler.frontend.shapes import max_positions
        from lamina.passes.quant._calibration import load_batches

        o = self.options
        if not any(
            classify(n)[0] is not None and SMOOTH_KEY not in n.metadata_props for n in model.graph
        ):
            return PassResult(model, changed=False, stats={"smoothed": 0})
        if not o.calibration:
            raise UsageError(
                "smooth-quant needs calibration data: calibration=FILE (texts with tokenizer=DIR, "
                "or an .npz of feeds)"
            )
        batches = load_batches(
            model, o.calibration, o.tokenizer or None, o.calibration_size, max_positions(model)
        )
        n = smooth(model, batches, o.alpha, self.name)
        return PassResult(model, changed=n > 0, stats={"smoothed": n})

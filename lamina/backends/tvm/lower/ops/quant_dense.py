"""The QDQ form of a quantized dense layer, lowered to one INT8 kernel call
(``kernels/dense_int8``).

The ``quantize-int8`` pass leaves, for every quantized ``lamina::Linear`` (or MatMul / Gemm on a
constant weight)::

    X -> QuantizeLinear(s, zp) -> DequantizeLinear(s, zp) -> Linear.X        (static)
    X -> DynamicQuantizeLinear -> DequantizeLinear(y, s, zp) -> Linear.X     (dynamic)
    W_q[K, N] int8 -> DequantizeLinear(w_scale[N], w_zp = 0, axis=1) -> Linear.W

:func:`plan_int8` finds these before the graph is lowered (``lower/graph.py`` calls it). A matched
consumer becomes ``quantize(X) -> dense_int8(Xq, packed W_q) -> epilogue`` in its own converter
(:func:`emit_int8_dense`); the Q / DQ nodes whose every use is such a consumer are not lowered at
all. One quantized copy of X is made per tensor and shared by its consumers (Q, K and V). Anything
else (a DQ that also feeds a float op, a weight that is not a per-channel symmetric int8 constant,
N not a multiple of the vector lanes) is left to the standalone Q / DQ converters.

The arithmetic is ONNX's: the kernel computes the integers of ``DQ(Q(X)) @ DQ(W_q)`` exactly
(int32 accumulators), then ``(acc - zp * colsum(W_q)) * s * w_scale + bias``, so the only
differences from ONNX Runtime on the same QDQ graph are float rounding in the epilogue, and on the
AVX2 family 8-bit weights, which its saturation remedy re-rounds to 7 bits
(``dense_int8.reduce_range``; ``lamina compile`` quantizes 7-bit ones for an AVX2 target).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from tvm import relax

from ..context import LowerContext
from ..registry import Value

if TYPE_CHECKING:
    from lamina.passes.sparsity._cost import Int8CostTable

log = logging.getLogger(__name__)

_ONNX = ("", "ai.onnx")


@dataclass
class Int8Dense:
    """A matched quantized dense: where X comes from and the integer weight ``[K, N]``."""

    x: ir.Value  # the float activation (QuantizeLinear's / DynamicQuantizeLinear's input)
    dynamic: bool
    x_scale: float = 0.0
    x_zp: int = 0
    signed: bool = False
    wq: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))  # [K, N] int8
    w_scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [N]
    w_name: str = "weight"
    via: tuple[ir.Node, ...] = ()  # the Q / DQ nodes this consumer reads through
    # ``x`` is multiplied by this per-channel vector before quantization (the ``Mul`` of
    # ``smooth-quant``, fused into the quantize kernel); ``smooth_name`` names it.
    smooth: np.ndarray | None = None
    smooth_name: str = ""
    # The consumer whose (static) quantization of this dense's output this kernel does in its
    # epilogue, when nothing else reads the float output.
    quant_out: Int8Dense | None = None


def _producer(v: ir.Value | None, op: str) -> ir.Node | None:
    if v is None:
        return None
    p = v.producer()
    if p is None or p.op_type != op or p.domain not in _ONNX:
        return None
    return p


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()


def _scalar(v: ir.Value | None) -> np.ndarray | None:
    a = _const(v)
    return a if a is not None and a.size == 1 else None


def _activation(xv: ir.Value) -> Int8Dense | None:
    """``DQ(Q(x))`` or ``DQ(DynamicQuantizeLinear(x))`` on the activation input."""
    dq = _producer(xv, "DequantizeLinear")
    if dq is None or len(dq.inputs) < 2:
        return None
    dyn = _producer(dq.inputs[0], "DynamicQuantizeLinear")
    if dyn is not None:
        outs = list(dyn.outputs)
        if list(dq.inputs[:3]) != outs[:3] or dyn.inputs[0] is None:
            return None
        return Int8Dense(x=dyn.inputs[0], dynamic=True, via=(dq, dyn))
    q = _producer(dq.inputs[0], "QuantizeLinear")
    if q is None or q.inputs[0] is None or len(q.inputs) < 3:
        return None
    s_q, z_q = _scalar(q.inputs[1]), _scalar(q.inputs[2])
    s_d = _scalar(dq.inputs[1])
    z_d = _scalar(dq.inputs[2]) if len(dq.inputs) > 2 else None
    if s_q is None or z_q is None or s_d is None or z_d is None:
        return None
    if z_q.dtype not in (np.uint8, np.int8) or z_d.dtype != z_q.dtype:
        return None
    if float(s_q) != float(s_d) or int(z_q) != int(z_d) or not float(s_q) > 0:
        return None
    return Int8Dense(x=q.inputs[0], dynamic=False, x_scale=float(s_q), x_zp=int(z_q),
                     signed=z_q.dtype == np.int8, via=(dq, q))


def _weight(wv: ir.Value, trans_b: bool) -> tuple[np.ndarray, np.ndarray, str, ir.Node] | None:
    """``DQ(W_q int8 const, per-channel or per-tensor scale, zero zero-points)`` -> ``[K, N]``."""
    dq = _producer(wv, "DequantizeLinear")
    if dq is None:
        return None
    wq = _const(dq.inputs[0])
    scale = _const(dq.inputs[1]) if len(dq.inputs) > 1 else None
    zp = _const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    if wq is None or wq.dtype != np.int8 or wq.ndim != 2 or scale is None:
        return None
    if zp is not None and (zp.dtype != np.int8 or np.any(zp != 0)):
        return None
    n_axis = 0 if trans_b else 1
    attr = dq.attributes.get("axis")
    axis = int(attr.value) if attr is not None else 1
    axis = axis + 2 if axis < 0 else axis
    n = wq.shape[n_axis]
    if scale.size == 1:
        scale = np.full(n, float(scale.reshape(())), np.float32)
    elif scale.ndim != 1 or axis != n_axis or scale.size != n:
        return None
    w_kn = wq.T if trans_b else wq
    return (np.ascontiguousarray(w_kn), scale.astype(np.float32),
            dq.inputs[0].name or "weight", dq)


def _match(node: ir.Node, lanes: int) -> Int8Dense | None:
    domain = node.domain
    if domain == "lamina" and node.op_type == "Linear":
        trans_b = False
    elif domain in _ONNX and node.op_type == "MatMul":
        trans_b = False
    elif domain in _ONNX and node.op_type == "Gemm":
        attrs = {k: a.value for k, a in node.attributes.items()}
        scaled = attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
        if attrs.get("transA", 0) or scaled:
            return None
        trans_b = bool(attrs.get("transB", 0))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = _const(node.inputs[2])
            if c is None or c.ndim != 1:
                return None
    else:
        return None
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    act = _activation(node.inputs[0])
    w = _weight(node.inputs[1], trans_b)
    if act is None or w is None:
        return None
    w_kn, w_scale, name, wdq = w
    if w_kn.shape[1] % lanes:
        return None
    act.wq, act.w_scale, act.w_name = w_kn, w_scale, name
    act.via = (*act.via, wdq)
    return act


def plan_int8(graph: ir.Graph, target: object) -> tuple[dict[ir.Node, Int8Dense], set[ir.Node]]:
    """The consumers that lower to INT8 kernels, and the Q / DQ nodes nothing else needs.

    Empty without a target or on a target with no INT8 kernel family."""
    if target is None:
        return {}, set()
    from ...kernels.dense_int8 import lanes32
    from ...kernels.isa import int8_isa

    fam = int8_isa(target)  # type: ignore[arg-type]
    if fam is None:
        return {}, set()
    matches: dict[ir.Node, Int8Dense] = {}
    for node in graph:
        m = _match(node, lanes32(fam))
        if m is not None:
            matches[node] = m
    outputs = set(graph.outputs)
    skip: set[ir.Node] = set()

    def only_used_by(node: ir.Node, ok) -> bool:
        for out in node.outputs:
            if out in outputs:
                return False
            for user, _ in out.uses():
                if not ok(user):
                    return False
        return True

    # DQ first (its users are the matched consumers), then the Q / DynamicQuantizeLinear feeding
    # only skipped DQs.
    candidates = {n for m in matches.values() for n in m.via}
    for n in candidates:
        if n.op_type == "DequantizeLinear" and only_used_by(n, lambda u: u in matches):
            skip.add(n)
    for n in candidates:
        if n.op_type != "DequantizeLinear" and only_used_by(n, lambda u: u in skip):
            skip.add(n)
    # smooth-quant's per-channel Mul before a static QuantizeLinear that is itself absorbed: the
    # quantize kernel does the multiply (``x * s`` then the division, as ONNX Runtime does).
    for m in matches.values():
        if m.dynamic or m.via[1] not in skip:
            continue
        mul = _producer(m.x, "Mul")
        smooth = _smooth_vector(mul, m.wq.shape[0])
        if smooth is None or not only_used_by(mul, lambda u: u in skip):
            continue
        vec, x = smooth
        m.x, m.smooth, m.smooth_name = x, vec, mul.inputs[1].name or mul.name or "smooth"
        skip.add(mul)
    # A static quantization of an INT8 dense's output that nothing else reads (the FFN's GELU
    # output before the down projection): the producer's epilogue writes the u8 directly.
    for m in matches.values():
        if m.dynamic or m.via[1] not in skip or m.x in outputs:
            continue
        prod = m.x.producer()
        if prod in matches and all(user in skip for user, _ in m.x.uses()):
            matches[prod].quant_out = m
    return matches, skip


def _smooth_vector(mul: ir.Node | None, k: int) -> tuple[np.ndarray, ir.Value] | None:
    """``(s[K] float32, x)`` for ``Mul(x, s)`` with a constant per-last-axis ``s`` (either
    order)."""
    if mul is None or len(mul.inputs) != 2 or None in mul.inputs:
        return None
    for ci, xi in ((1, 0), (0, 1)):
        c = _const(mul.inputs[ci])
        x = mul.inputs[xi]
        if c is None or _const(x) is not None or c.dtype != np.float32:
            continue
        if c.size != k or c.shape[-1:] != (k,):
            continue
        if x.shape is not None and (len(x.shape) < c.ndim or x.shape[-1] != k):
            continue  # x broadcast by the Mul (unknown shapes are checked when lowering)
        return np.ascontiguousarray(c.reshape(k)), x
    return None


def emit_int8_dense(
    ctx: LowerContext,
    m: Int8Dense,
    *,
    bias: Value | None = None,
    activation: str = "none",
    residual: Value | None = None,
) -> relax.Expr:
    """``act(DQ(Q(x)) @ DQ(W_q) + bias) + residual`` as quantize + one INT8 kernel call."""
    from ...kernels.dense_int8 import (
        FusedLayerNorm,
        column_sums,
        dense_int8_kernel,
        fits_7_bits,
        kernel_family,
        layer_norm_fusable,
        pack_weight_int8,
        packing,
        reduce_range,
        resolve_int8_config,
        sections_fit,
    )
    from ...kernels.isa import INT8_FEATURES, num_threads
    from ...kernels.quantize import dynamic_qparams_kernel, quantize_kernel
    from ._dense import EPILOGUES

    target = ctx.target
    x = ctx.env[m.x]
    shape = ctx.shape(x)
    k = shape[-1]
    rows = int(np.prod(shape[:-1]))
    n = m.wq.shape[1]
    if m.wq.shape[0] != k:
        raise ctx.error(f"INT8 weight {m.w_name!r} has K={m.wq.shape[0]}, the input has {k}")
    bb = ctx.bb

    sw = sparse_choice(ctx, m, rows)
    if sw is not None:
        return _emit_sparse_int8(ctx, m, sw, x, shape, bias=bias, activation=activation,
                                 residual=residual)

    chosen = ctx.tiles.int8(rows, k, n, target) if ctx.tiles is not None else None
    cfg = resolve_int8_config(rows, k, n, target, chosen)
    nb, k_step = packing(rows, k, n, target, cfg)
    fam = kernel_family(rows, n, target)  # AMX targets run shapes off the 32 x 32 grid on VNNI
    kp = -(-k // k_step) * k_step

    # One quantized copy of x for all its consumers (of the same K padding).
    cache = ctx.int8_inputs
    key = _quant_key(m, kp)
    if key not in cache:
        x2 = bb.emit(relax.op.reshape(ctx.expr(x), (rows, k)))
        if m.dynamic:
            flat = bb.emit(relax.op.reshape(x2, (rows * k,)))
            gq = bb.add_func(dynamic_qparams_kernel(rows, k), f"lamina_dyn_qparams_{rows}x{k}")
            qp = bb.emit(relax.call_tir(gq, [flat], relax.TensorType((2,), "float32")))
            qp_dense = qp
        else:
            qp = relax.const(np.array([m.x_scale, m.x_zp], np.float32), "float32")
            qp_dense = _kernel_qparams(m)
        smooth = m.smooth is not None
        gv = bb.add_func(
            quantize_kernel(rows, k, signed=m.signed, target=target, k_step=k_step,
                            smooth=smooth),
            f"lamina_quantize_{rows}x{k}{'_s8' if m.signed else ''}{'_smooth' if smooth else ''}",
        )
        qargs = [x2, _param(ctx, f"{m.smooth_name}@smooth", m.smooth), qp] if smooth else [x2, qp]
        xq = bb.emit(relax.call_tir(gv, qargs, relax.TensorType((rows, kp), "uint8")))
        cache[key] = (xq, qp_dense)
    xq, qp_dense = cache[key]

    wq, w_scale = m.wq, m.w_scale
    if fam == "avx2" and not fits_7_bits(wq):
        wq, w_scale = reduce_range(wq, w_scale)
        if not ctx.reduced_weights:
            log.warning("INT8 weight %r (and any after it) has 8-bit values: re-rounded to 7 "
                        "bits for the AVX2 kernels; quantize for this target (lamina compile "
                        "--quantize int8, or quantize-int8{weight-bits=7}) to calibrate and "
                        "measure 7-bit weights", m.w_name)
        ctx.reduced_weights.append(m.w_name)
    tag = f"@int8{fam}{nb}k{k_step}"
    wp_var = _param(ctx, f"{m.w_name}{tag}", pack_weight_int8(wq, nb, k_step))
    cs_var = _param(ctx, f"{m.w_name}{tag}:colsum", column_sums(wq))
    ws_var = _param(ctx, f"{m.w_name}{tag}:scale", w_scale)
    epilogue = EPILOGUES[activation]
    # The consumer's quantization in this kernel's epilogue, when the consumer reads exactly n
    # columns (no K padding) and this kernel is not the AMX one (which has no such epilogue).
    out = m.quant_out
    claim = claim_quantization(ctx, out, rows, n) if out is not None and fam != "amx" else None
    out_key = claim[0] if claim is not None else None
    func = dense_int8_kernel(
        rows,
        k,
        n,
        target=target,
        config=cfg,
        bias=bias is not None,
        epilogue=epilogue,
        residual=residual is not None,
        quant_out=out_key is not None,
        out_signed=out_key is not None and out.signed,
    )
    name = (
        f"lamina_dense_int8_{rows}x{k}x{n}{'_' + epilogue if epilogue else ''}"
        f"{'_res' if residual is not None else ''}{'_q' if out_key is not None else ''}"
    )
    gv = bb.add_func(func, name)
    args = [xq, wp_var, cs_var, ws_var, qp_dense]
    if bias is not None:
        args.append(ctx.expr(ctx.cast(bias, "float32")))
    if residual is not None:
        args.append(bb.emit(relax.op.reshape(ctx.expr(residual), (rows, n))))
    if out_key is not None:
        args += claim[1:]
        yq = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows, n), "uint8")))
        cache[out_key] = (yq, _kernel_qparams(out))
        ctx.features.update(INT8_FEATURES[fam])
        return bb.emit(relax.op.reshape(yq, (*shape[:-1], n)))
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows, n), "float32")))
    ctx.features.update(INT8_FEATURES[fam])
    out = bb.emit(relax.op.reshape(y, (*shape[:-1], n)))
    if fam != "amx":
        # A consumer that rounds this output to bf16 anyway (the BF16 attention) may ask for the
        # kernel's bf16 form instead: half the bytes, and no rounding on its side. The float call
        # is then dead and removed.
        def bf16_form(heads: int = 0, batch: int = 0) -> relax.Expr:
            # A merged QKV projection for attention whose thread t takes the t-th contiguous
            # chunk of (batch, head) tasks: with fewer batch rows than threads (b1), each
            # thread computes its heads' Q, K and V columns, all rows, so that the attention
            # reads them on its own core (with more, the row blocks already match).
            threads = num_threads(target)
            fit = (sections_fit(rows, k, n, target, 3, heads, cfg)
                   if heads and batch % threads else None)
            fb = dense_int8_kernel(rows, k, n, target=target, config=fit or cfg,
                                   bias=bias is not None, epilogue=epilogue,
                                   residual=residual is not None, bf16_out=True,
                                   sections=3 if fit else 0)
            gb = bb.add_func(fb, f"{name}_bf16{'_heads' if fit else ''}")
            yb = bb.emit(relax.call_tir(gb, args, relax.TensorType((rows, n), "uint16")))
            return bb.emit(relax.op.reshape(yb, (*shape[:-1], n)))

        ctx.int8_bf16_forms[out] = bf16_form
    if layer_norm_fusable(rows, k, n, target, cfg):
        # A LayerNorm that is this output's only reader may run inside the kernel instead
        # (dense_int8_kernel's layer_norm): each core normalises the rows it has just computed,
        # with no kernel launch between. The float call is then dead and removed.
        def ln_form(gamma: relax.Expr, beta: relax.Expr, eps: float,
                    quant: tuple[relax.Expr, relax.Expr, bool] | None):
            from ...kernels.layernorm import emit_normalized

            fused = FusedLayerNorm(eps, quant is not None, quant is not None and quant[2])
            fl = dense_int8_kernel(rows, k, n, target=target, config=cfg, bias=bias is not None,
                                   epilogue=epilogue, residual=residual is not None,
                                   layer_norm=fused)
            return emit_normalized(bb, fl, f"{name}_ln", [*args, gamma, beta],
                                   [*shape[:-1], n], quant)

        ctx.int8_ln_forms[out] = ln_form
    return out


@dataclass
class SparseInt8Policy:
    """When INT8 layers on pruned weights run the block-sparse kernel: a cost model measured on the
    target (``_cost.Int8CostTable``; ``table`` loads it on the first pruned layer, measuring it then
    once per tuning database) predicts the dense and the sparse kernel's time per layer, and the
    sparse one runs when it is predicted ``min_gain`` times faster. ``decisions``: per pruned
    layer and token count, its line for the compile log and the manifest, and whether it runs
    sparse."""

    table: Callable[[], Int8CostTable]
    min_gain: float = 1.15
    decisions: dict[tuple[str, int], tuple[str, bool]] = field(default_factory=dict)

    _loaded: Int8CostTable | None = field(default=None, repr=False)

    @property
    def lines(self) -> list[str]:
        return [line for line, _ in self.decisions.values()]

    @property
    def sparse(self) -> int:
        return sum(use for _, use in self.decisions.values())

    def costs(self) -> Int8CostTable:
        if self._loaded is None:
            self._loaded = self.table()
        return self._loaded


# A weight is a candidate when at least this fraction of its 4x1 blocks is all zero (a dense
# weight quantizes a few blocks to zero by chance; those never pay, and measuring the cost table
# for them would only slow the compile).
SPARSE_INT8_MIN_EMPTY = 0.1


def sparse_choice(ctx: LowerContext, m: Int8Dense, rows: int):
    """The block-sparse encoding of ``m``'s weight when its layer runs the sparse INT8 kernel
    (AVX-512 VNNI targets, ``ctx.int8_sparse`` set, whole 64-token tiles and 64-column stores, and
    predicted faster by the policy's measured cost model), else None. Decided once per layer."""
    from ...kernels.isa import int8_isa
    from ...kernels.sparse_int8 import SG, TILE, R, encode_int8_blocks

    target = ctx.target
    key = (m.w_name, rows)
    if key in ctx.int8_sparse_choice:
        return ctx.int8_sparse_choice[key]
    sw = None
    k, n = m.wq.shape
    policy = ctx.int8_sparse
    if (policy is not None and target is not None and int8_isa(target) in ("vnni", "amx")
            and rows % TILE == 0 and n % (SG * R) == 0):
        blocks = (m.wq.reshape(k, n // R, R) != 0).any(axis=2)
        if blocks.mean() <= 1 - SPARSE_INT8_MIN_EMPTY:
            cand = encode_int8_blocks(m.wq)
            pred = policy.costs().predict(k, n, 4 * cand.quads)
            use = pred.gain >= policy.min_gain
            line = (f"{m.w_name}: W {k}x{n}, {rows} tokens, {100 * cand.density:.1f}% of 4x1 "
                    f"blocks stored; dense {pred.dense_ns:.0f} ns/token, sparse "
                    f"{pred.sparse_ns:.0f} ns/token: {'SPARSE' if use else 'dense'}, predicted "
                    f"gain {pred.gain:.2f}x")
            log.info("INT8 %s", line)
            policy.decisions.setdefault(key, (line, use))
            if use:
                sw = cand
    ctx.int8_sparse_choice[key] = sw
    return sw


def _emit_sparse_int8(ctx: LowerContext, m: Int8Dense, sw, x, shape, *, bias, activation,
                      residual) -> relax.Expr:
    """:func:`emit_int8_dense` for a block-sparse weight: the activations quantized transposed
    (one copy for all sparse consumers), then the sparse INT8 kernel."""
    from ...kernels.isa import INT8_FEATURES
    from ...kernels.quantize import dynamic_qparams_kernel, quantize_transposed_kernel
    from ...kernels.sparse_int8 import sparse_int8_kernel
    from ._dense import EPILOGUES

    bb = ctx.bb
    k, n = m.wq.shape
    rows = int(np.prod(shape[:-1]))
    key = ("T", *_quant_key(m, k))
    if key not in ctx.int8_inputs:
        x2 = bb.emit(relax.op.reshape(ctx.expr(x), (rows, k)))
        if m.dynamic:
            flat = bb.emit(relax.op.reshape(x2, (rows * k,)))
            gq = bb.add_func(dynamic_qparams_kernel(rows, k), f"lamina_dyn_qparams_{rows}x{k}")
            qp = bb.emit(relax.call_tir(gq, [flat], relax.TensorType((2,), "float32")))
            qp_kernel = qp
        else:
            qp = relax.const(np.array([m.x_scale, m.x_zp], np.float32), "float32")
            qp_kernel = _kernel_qparams(m)
        smooth = m.smooth is not None
        gv = bb.add_func(
            quantize_transposed_kernel(rows, k, signed=m.signed, smooth=smooth),
            f"lamina_quantize_t_{rows}x{k}{'_s8' if m.signed else ''}"
            f"{'_smooth' if smooth else ''}",
        )
        qargs = [x2, _param(ctx, f"{m.smooth_name}@smooth", m.smooth), qp] if smooth else [x2, qp]
        xt = bb.emit(relax.call_tir(gv, qargs, relax.TensorType((k, rows), "uint8")))
        ctx.int8_inputs[key] = (xt, qp_kernel)
    xt, qp_kernel = ctx.int8_inputs[key]
    epilogue = EPILOGUES[activation]
    # A block-sparse consumer's transposed quantization in this kernel's epilogue (nothing else
    # reads this layer's float output: plan_int8's quant_out).
    out = m.quant_out
    out_key = None
    if out is not None and residual is None and not out.dynamic \
            and sparse_choice(ctx, out, rows) is not None:
        out_key = ("T", *_quant_key(out, n))
        if out_key in ctx.int8_inputs:
            out_key = None
    chunks = ctx.tiles.sparse_int8(rows, sw, ctx.target) if ctx.tiles is not None else None
    func = sparse_int8_kernel(rows, sw, target=ctx.target, epilogue=epilogue,
                              residual=residual is not None, quant_out=out_key is not None,
                              out_signed=out_key is not None and out.signed, chunks=chunks)
    tag = "@int8sparse"
    args = [xt]
    for suffix, arr in (("qptr", sw.qptr), ("qk", sw.qk), ("qw", sw.qw), ("colsum", sw.colsum)):
        args.append(_param(ctx, f"{m.w_name}{tag}:{suffix}", arr))
    args += [_param(ctx, f"{m.w_name}{tag}:scale", m.w_scale.astype(np.float32)), qp_kernel]
    args.append(ctx.expr(ctx.cast(bias, "float32")) if bias is not None
                else relax.const(np.zeros(n, np.float32), "float32"))
    if residual is not None:
        args.append(bb.emit(relax.op.reshape(ctx.expr(residual), (rows, n))))
    name = (f"lamina_sparse_int8_{rows}x{k}x{n}{'_' + epilogue if epilogue else ''}"
            f"{'_res' if residual is not None else ''}{'_qt' if out_key is not None else ''}")
    gv = bb.add_func(func, name)
    ctx.features.update(INT8_FEATURES["vnni"])
    if out_key is not None:
        smooth = out.smooth if out.smooth is not None else np.ones(n, np.float32)
        mult = (smooth / np.float32(out.x_scale)).astype(np.float32)
        args += [_param(ctx, f"{out.smooth_name or out.x.name}@quant{out.x_scale!r}", mult),
                 relax.const(np.array([out.x_scale, out.x_zp], np.float32), "float32")]
        yt = bb.emit(relax.call_tir(gv, args, relax.TensorType((n, rows), "uint8")))
        ctx.int8_inputs[out_key] = (yt, _kernel_qparams(out))
        # The consumer reads yt through ctx.int8_inputs; the value only lends it the shape.
        return bb.emit(relax.op.reshape(yt, (*shape[:-1], n)))
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows, n), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], n)))


def quantized_values(matches: dict[ir.Node, Int8Dense],
                     skip: set[ir.Node]) -> dict[ir.Value, Int8Dense]:
    """The float activations whose static quantization (an absorbed QuantizeLinear) the kernel
    that produces them may do, e.g. a LayerNorm's output: value -> a consumer that reads it."""
    out: dict[ir.Value, Int8Dense] = {}
    for m in matches.values():
        if not m.dynamic and m.via[1] in skip:
            out.setdefault(m.x, m)
    return out


def claim_quantization(ctx: LowerContext, m: Int8Dense, rows: int,
                       n: int) -> tuple[tuple, relax.Expr, relax.Expr] | None:
    """For a producer of ``m.x`` (``rows x n``) that quantizes it itself: ``(cache key,
    multiplier S[n], qo)`` (the arguments of the kernels' ``quant_out``), or None when the
    consumer pads K (AMX) or the copy already exists. The producer stores its u8 output under the
    key in ``ctx.int8_inputs``, where the consumer's :func:`emit_int8_dense` finds it."""
    from ...kernels.dense_int8 import packing, resolve_int8_config

    target = ctx.target
    if target is None or m.dynamic or sparse_choice(ctx, m, rows) is not None:
        return None  # a block-sparse consumer reads its activations transposed
    n_out = m.wq.shape[1]
    cfg = ctx.tiles.int8(rows, n, n_out, target) if ctx.tiles is not None else None
    _, k_step = packing(rows, n, n_out, target, resolve_int8_config(rows, n, n_out, target, cfg))
    key = _quant_key(m, n)
    if n % k_step or key in ctx.int8_inputs:
        return None
    smooth = m.smooth if m.smooth is not None else np.ones(n, np.float32)
    mult = (smooth / np.float32(m.x_scale)).astype(np.float32)
    s = _param(ctx, f"{m.smooth_name or m.x.name}@quant{m.x_scale!r}", mult)
    return key, s, relax.const(np.array([m.x_scale, m.x_zp], np.float32), "float32")


def claim_sole_quantization(ctx: LowerContext, value: ir.Value, rows: int,
                            n: int) -> tuple[Int8Dense, tuple, relax.Expr, relax.Expr] | None:
    """:func:`claim_quantization` for a producer whose float output nothing else reads (every use
    absorbed into INT8 kernels, not a graph output), so it may write only the u8: ``(consumer,
    key, S, qo)``, or None."""
    m = ctx.int8_out.get(value)
    if m is None or value.is_graph_output():
        return None
    if not all(user in ctx.absorbed for user, _ in value.uses()):
        return None
    claim = claim_quantization(ctx, m, rows, n)
    return None if claim is None else (m, *claim)


def store_quantized(ctx: LowerContext, m: Int8Dense, key: tuple, xq: relax.Expr) -> None:
    """Record a producer's fused quantization of ``m.x`` for its consumers."""
    ctx.int8_inputs[key] = (xq, _kernel_qparams(m))


def _quant_key(m: Int8Dense, kp: int) -> tuple:
    """What makes two quantized copies of an activation the same."""
    return (m.x, m.dynamic, m.x_scale, m.x_zp, m.signed, kp, m.smooth_name)


def _kernel_qparams(m: Int8Dense) -> relax.Expr:
    """``[scale, zero point]`` of a static activation as the kernel's u8 sees it."""
    zp = m.x_zp + (128 if m.signed else 0)
    return relax.const(np.array([m.x_scale, zp], np.float32), "float32")


def _param(ctx: LowerContext, name: str, value: np.ndarray) -> relax.Var:
    existing = ctx.params.get(name)
    if existing is not None:
        return existing
    dtype = str(value.dtype)
    return ctx.add_param(name, relax.Var(name, relax.TensorType(value.shape, dtype)), value)

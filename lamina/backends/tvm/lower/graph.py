"""Lower a static, canonical ``onnx_ir.Model`` to one Relax function.

Preconditions: every graph input has a static shape (canonicalization has specialized the
batch and sequence dims); shape arithmetic either is gone or depends only on constants (it is
folded here on :class:`Const` values, never handed to TVM). Weights (named initializers with
more than one element) become trailing function parameters, after the graph inputs, so that one
parameter file serves every bucket's function.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from tvm import relax

from .._errors import BackendError
from .context import LowerContext, _dtype_str, unsupported_dtype
from .ops.quant_dense import SparseInt8Policy, plan_int8, quantized_values
from .registry import Const, Value, lookup, supported_ops
from .versions import unsupported_version

log = logging.getLogger(__name__)

# Nodes whose inputs are all constants and this small (in elements, summed) are evaluated at
# compile time with ONNX's reference evaluator; bigger ones (weights) stay in the Relax graph.
FOLD_MAX_ELEMENTS = 1 << 16
# Ops whose converters fold constant inputs themselves (onnx.reference lacks their older opset
# versions).
SELF_FOLDING = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class FunctionInfo:
    """What one lowered Relax function takes and returns."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: list[str]
    param_values: dict[str, np.ndarray] = field(repr=False)
    folded_nodes: int = 0
    # LLVM features beyond the target's base vector ISA that the emitted kernels use
    # (``avx512vnni``, ``amx-int8``...): what the artifact must require of a host.
    features: set[str] = field(default_factory=set)
    int8_layers: int = 0  # dense layers lowered to INT8 kernels


def _input_spec(v: ir.Value) -> TensorSpec:
    if v.type is not None and not isinstance(v.type, ir.TensorType):
        raise BackendError(f"graph input {v.name!r} is a {v.type}, not a tensor; the TVM backend "
                           "takes tensor inputs only")
    why = unsupported_dtype(v.dtype)
    if why:
        readers = sorted({_op_name(n) for n, _ in v.uses()})
        by = f" (read by {', '.join(readers)})" if readers else ""
        raise BackendError(f"graph input {v.name!r}{by}: {why} by the TVM backend")
    if v.shape is None or v.type is None:
        raise BackendError(f"graph input {v.name!r} has no shape or type")
    dims = []
    for d in v.shape.dims:
        if not isinstance(d, int):
            raise BackendError(
                f"graph input {v.name!r} has a symbolic dim {str(d)!r} (shape {v.shape}); the TVM "
                "backend needs static shapes: specialize the model per (batch, seq) bucket")
        dims.append(d)
    return TensorSpec(v.name or "", tuple(dims), _dtype_str(v.dtype.numpy()))


def lower_function(bb: relax.BlockBuilder, model: ir.Model, func_name: str,
                   target: object = None, tiles: object = None,
                   int8_sparse: SparseInt8Policy | None = None) -> FunctionInfo:
    """Add ``func_name`` (inputs..., weights...) -> tuple(outputs) to ``bb``'s module.
    ``int8_sparse``: INT8 layers on pruned weights run the block-sparse INT8 kernel where this
    policy's cost model predicts a gain (None: never)."""
    graph = model.graph
    opsets = dict(graph.opset_imports or model.opset_imports)
    ctx = LowerContext(bb, opsets, target=target)
    ctx.tiles = tiles
    ctx.int8_sparse = int8_sparse
    env: dict[ir.Value, Value] = {}
    ctx.env = env  # converters may look at the values behind their inputs (fused head split)
    # Quantized dense layers in QDQ form lower to INT8 kernels; their Q / DQ nodes are not lowered.
    ctx.int8, absorbed = plan_int8(graph, target)
    ctx.int8_out = quantized_values(ctx.int8, absorbed)
    ctx.absorbed = absorbed
    for name, v in graph.initializers.items():
        if v.const_value is None:
            raise BackendError(f"initializer {name!r} has no value (external data not loaded?)")
        env[v] = Const(v.const_value.numpy(), name)

    in_specs: list[TensorSpec] = []
    in_vars: list[relax.Var] = []
    for v in graph.inputs:
        if v in env:  # an initializer listed as input (old IR versions): a weight
            continue
        spec = _input_spec(v)
        var = relax.Var(spec.name, relax.TensorType(spec.shape, spec.dtype))
        env[v] = var
        in_specs.append(spec)
        in_vars.append(var)

    folded = 0
    try:
        with bb.function(func_name, attrs={"num_input": len(in_vars)}):
            with bb.dataflow():
                for node in graph:
                    if node in absorbed:
                        continue
                    # An INT8 consumer's quantized inputs may have no value of their own (absorbed).
                    lookup_in = env.get if node in ctx.int8 else env.__getitem__
                    ins = [None if v is None else lookup_in(v) for v in node.inputs]
                    ctx.node_desc = f"node {_node_name(node)!r} ({_op_name(node)})"
                    _check_dtypes(ctx, node)
                    if node not in ctx.int8 and _foldable(node, ins):
                        outs = _fold(ctx, node, ins)
                        folded += 1
                    else:
                        fn = lookup(node.domain, node.op_type)
                        why = None if node.domain not in ("", "ai.onnx") else \
                            unsupported_version(node.op_type, ctx.opset(""))
                        if fn is not None and why:
                            raise BackendError(f"{ctx.node_desc}: {why}")
                        if fn is None:
                            raise BackendError(
                                f"{ctx.node_desc}: no TVM lowering for operator {_op_name(node)!r} "
                                f"(opset {ctx.opset(node.domain)}); supported: "
                                f"{', '.join(supported_ops())}")
                        try:
                            outs = fn(ctx, node, ins)
                        except BackendError:
                            raise
                        except Exception as e:  # a TVM type error: name the node
                            raise BackendError(f"{ctx.node_desc}: lowering failed: "
                                               f"{type(e).__name__}: {str(e).strip()[:500]}") from e
                    if not isinstance(outs, (list, tuple)):
                        outs = [outs]
                    for i, ov in enumerate(node.outputs):
                        if ov is None or not ov.name:
                            continue
                        if i >= len(outs) or outs[i] is None:
                            if ov.uses() or ov in graph.outputs:
                                raise BackendError(f"{ctx.node_desc}: output {i} ({ov.name!r}) "
                                                   "is not supported")
                            continue
                        _check_shape(ctx, ov, outs[i])
                        env[ov] = outs[i]
                ctx.node_desc = "<graph outputs>"
                out_exprs, out_specs = [], []
                for v in graph.outputs:
                    e = ctx.expr(env[v])
                    out_exprs.append(e)
                    out_specs.append(TensorSpec(v.name or "", tuple(ctx.shape(e)), ctx.dtype(e)))
                out = bb.emit_output(relax.Tuple(out_exprs))
            bb.emit_func_output(out, params=in_vars + list(ctx.params.values()))
    except BaseException:
        _close_open_blocks(bb)
        raise
    log.debug("lowered %s: %d nodes, %d folded, %d weights", func_name, len(graph), folded,
              len(ctx.params))
    return FunctionInfo(func_name, in_specs, out_specs, list(ctx.params), ctx.param_values,
                        folded, set(ctx.features), len(ctx.int8))


def _close_open_blocks(bb: relax.BlockBuilder) -> None:
    """End the binding block and scope a failed ``bb.function`` left open.

    TVM's function scope does not unwind them on an exception; the C++ builder then warns
    "BlockBuilder destroyed with remaining blocks!" after Lamina's error line.
    """
    for close in (bb._end_block, bb.end_scope):
        try:
            close()
        except Exception:  # noqa: BLE001 - nothing of that kind was left open
            log.debug("no open Relax block or scope to close")


def _check_dtypes(ctx: LowerContext, node: ir.Node) -> None:
    """Refuse a node that reads or writes a tensor type the backend cannot compute in."""
    for kind, values in (("input", node.inputs), ("output", node.outputs)):
        for v in values:
            if v is None:
                continue
            if v.type is not None and not isinstance(v.type, ir.TensorType):
                raise ctx.error(f"{kind} {v.name!r} is a {v.type}; only tensors are supported")
            why = unsupported_dtype(v.dtype)
            if why:
                raise ctx.error(f"{kind} {v.name!r}: {why}")


def _node_name(node: ir.Node) -> str:
    """The node's name, or its first output's when it has none (ONNX allows unnamed nodes)."""
    if node.name:
        return node.name
    return next((o.name for o in node.outputs if o is not None and o.name), "")


def _op_name(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _check_shape(ctx: LowerContext, ov: ir.Value, got: Value) -> None:
    """Cross-check a converter's static shape with the ONNX shape annotation, when known."""
    if ov.shape is None or not all(isinstance(d, int) for d in ov.shape.dims):
        return
    want = list(ov.shape.dims)
    have = ctx.shape(got)
    if want != have:
        raise BackendError(f"{ctx.node_desc}: output {ov.name!r} lowered to shape {have}, "
                           f"the model says {want}")


def _foldable(node: ir.Node, ins: list[Value | None]) -> bool:
    if node.domain not in ("", "ai.onnx") or not ins or node.op_type in SELF_FOLDING:
        return False
    if any(not isinstance(v, Const) for v in ins if v is not None):
        return False
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
           for a in node.attributes.values()):
        return False
    return sum(np.size(v.value) for v in ins if v is not None) <= FOLD_MAX_ELEMENTS


def _fold(ctx: LowerContext, node: ir.Node, ins: list[Value | None]) -> list[Const]:
    """Evaluate one node on constant inputs with ``onnx.reference``."""
    from lamina.compiler.ir.evaluate import evaluate_node

    arrays = [None if v is None else np.asarray(v.value) for v in ins]
    try:
        res = evaluate_node(node, arrays, ctx.opset(""))
    except Exception as e:
        raise BackendError(f"{ctx.node_desc}: constant folding failed: {e}") from e
    return [Const(r) for r in res]

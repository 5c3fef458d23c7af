"""Per-function lowering state and the helpers every converter uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from .._errors import BackendError
from .registry import Const, Value

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir

    from ..tuning.kernel_search import KernelTiles


class LowerContext:
    """What a converter sees: the block builder, the opset, parameters and typed helpers.

    ``node_desc`` names the node being converted so that every error says where it happened.
    """

    def __init__(self, bb: relax.BlockBuilder, opsets: dict[str, int],
                 target: tvm.target.Target | None = None) -> None:
        self.bb = bb
        self.opsets = opsets
        # With a target, matmuls on constant weights use the hand-written kernels (packed weights).
        self.target = target
        # Kernel tiles (``tuning.kernel_search.KernelTiles``: .dense(), .attention()); None: the
        # per-ISA defaults.
        self.tiles: KernelTiles | None = None
        # LLVM features beyond the base vector ISA that emitted kernels use (see FunctionInfo).
        self.features: set[str] = set()
        # INT8: the consumers lowered to INT8 kernels (node -> ops.quant_dense.Int8Dense), and the
        # quantized activations they share ((value, mode...) -> (Xq, qparams)).
        self.int8: dict = {}
        self.int8_inputs: dict = {}
        # INT8 weights the AVX2 lowering re-rounded to 7 bits (warned about once).
        self.reduced_weights: list[str] = []
        # float activations an INT8 consumer quantizes statically (quant_dense.quantized_values)
        self.int8_out: dict = {}
        self.absorbed: set = set()  # Q / DQ (and smooth-quant Mul) nodes the INT8 kernels absorb
        # INT8 layers on pruned weights may run the block-sparse kernel where the target's cost
        # model predicts a gain (quant_dense.SparseInt8Policy; None: off, --no-sparsity); the
        # decision per (weight, rows) (quant_dense.sparse_choice)
        self.int8_sparse = None
        # INT8 dense outputs whose bf16 form a consumer may emit instead (expr -> factory;
        # quant_dense.emit_int8_dense, read by the BF16 attention)
        self.int8_bf16_forms: dict = {}
        # INT8 dense outputs whose LayerNorm a consumer may fuse into the kernel (expr ->
        # factory; quant_dense.emit_int8_dense, read by the LayerNormalization converter)
        self.int8_ln_forms: dict = {}
        self.int8_sparse_choice: dict = {}
        self.env: dict = {}
        self.params: dict[str, relax.Var] = {}
        self.param_values: dict[str, np.ndarray] = {}
        self.node_desc = "<graph>"

    # -- opsets ---------------------------------------------------------------------------
    def opset(self, domain: str = "") -> int:
        if domain in ("", "ai.onnx"):
            return self.opsets.get("", self.opsets.get("ai.onnx", 1))
        return self.opsets.get(domain, 1)

    # -- errors ---------------------------------------------------------------------------
    def error(self, msg: str) -> BackendError:
        return BackendError(f"{self.node_desc}: {msg}")

    # -- values ---------------------------------------------------------------------------
    def const(self, v: Value, what: str = "input") -> np.ndarray:
        """The compile-time value of ``v``; a clear error if it is only known at run time."""
        if isinstance(v, Const):
            return v.value
        raise self.error(
            f"{what} must be a compile-time constant here; canonicalize the model with static "
            "input shapes first (no Shape/Range/ConstantOfShape on run-time values)")

    def const_ints(self, v: Value, what: str = "input") -> list[int]:
        return [int(x) for x in np.asarray(self.const(v, what)).reshape(-1)]

    def expr(self, v: Value) -> relax.Expr:
        """A Relax expression for ``v``: weights become parameters, small constants constants."""
        if not isinstance(v, Const):
            return v
        arr = np.asarray(v.value)
        if v.name is not None and arr.size > 1:
            var = self.params.get(v.name)
            if var is None:
                var = relax.Var(v.name, relax.TensorType(arr.shape, _dtype_str(arr.dtype)))
                self.params[v.name] = var
                self.param_values[v.name] = arr
            return var
        return relax.const(np.require(arr, requirements="C"), _dtype_str(arr.dtype))

    def add_param(self, name: str, var: relax.Var, value: np.ndarray) -> relax.Var:
        """Register a weight computed at compile time (e.g. a packed panel) as a parameter."""
        existing = self.params.get(name)
        if existing is not None:
            return existing
        self.params[name] = var
        self.param_values[name] = value
        return var

    def emit(self, e: relax.Expr) -> relax.Expr:
        return self.bb.emit(e)

    def shape(self, v: Value) -> list[int]:
        if isinstance(v, Const):
            return list(np.shape(v.value))
        vty = v.ty
        if not isinstance(vty, relax.TensorType) or vty.shape is None:
            raise self.error(f"value has no static tensor shape ({vty})")
        dims = []
        for d in vty.shape.values:
            if not isinstance(d, int) and not hasattr(d, "value"):
                raise self.error(f"value has a symbolic shape {list(vty.shape.values)}")
            dims.append(int(d))
        return dims

    def rank(self, v: Value) -> int:
        return len(self.shape(v))

    def dtype(self, v: Value) -> str:
        if isinstance(v, Const):
            return _dtype_str(np.asarray(v.value).dtype)
        return str(v.ty.dtype)

    def cast(self, v: Value, dtype: str) -> Value:
        if self.dtype(v) == dtype:
            return v
        if isinstance(v, Const):
            return Const(np.asarray(v.value).astype(dtype))
        return self.emit(relax.op.astype(v, dtype))

    def attr(self, node: ir.Node, name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        if a is None:
            return default
        return a.value

    def attr_ints(self, node: ir.Node, name: str, default: Sequence[int] | None = None
                  ) -> list[int] | None:
        a = node.attributes.get(name)
        if a is None:
            return None if default is None else list(default)
        return [int(x) for x in a.value]


# ONNX element types the TVM backend computes in (NumPy dtype names); others are refused.
SUPPORTED_DTYPES = frozenset({"float32", "float64", "float16", "int8", "int16", "int32", "int64",
                              "uint8", "uint16", "uint32", "uint64", "bool"})


def unsupported_dtype(dtype: Any) -> str | None:
    """Why an ONNX element type (``onnx_ir.DataType``) cannot be lowered, or None if it can."""
    import onnx_ir as ir

    if dtype is None or ir.DataType(dtype) == ir.DataType.UNDEFINED:
        return None
    dt = ir.DataType(dtype)
    if dt == ir.DataType.STRING:
        return "string tensors are not supported"
    try:
        name = str(np.dtype(dt.numpy()))
    except Exception:  # noqa: BLE001 - no NumPy equivalent
        name = None
    if name in SUPPORTED_DTYPES:
        return None
    return f"{dt.name.lower()} tensors are not supported"


def _dtype_str(dt: Any) -> str:
    s = str(np.dtype(dt))
    return "bool" if s == "bool" else s


def normalize_axis(ctx: LowerContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.error(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis

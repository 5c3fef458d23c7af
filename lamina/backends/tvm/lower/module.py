"""Lower one static graph per (batch, seq) bucket into a single Relax module sharing weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax

from .._errors import BackendError
from .graph import FunctionInfo, lower_function
from .ops.bf16_dense import Bf16Lowering, precision_scope
from .ops.quant_dense import SparseInt8Policy

log = logging.getLogger(__name__)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def bucket_function_name(batch: int, seq: int) -> str:
    return f"main_b{batch}_s{seq}"


@dataclass
class LoweredModule:
    mod: tvm.IRModule
    functions: dict[tuple[int, int], FunctionInfo]
    params: dict[str, np.ndarray]
    extra: dict[str, FunctionInfo] = field(default_factory=dict)
    bf16: Bf16Lowering | None = None  # what ``precision="bf16"`` lowered (None: fp32)

    @property
    def features(self) -> set[str]:
        """Extra LLVM features the kernels of any bucket use (``TargetSpec.narrowed``)."""
        return set().union(*(f.features for f in self.functions.values()))


def lower_buckets(models: dict[tuple[int, int], ir.Model], target: object = None,
                  tiles: object = None, extra: dict[str, ir.Model] | None = None,
                  precision: str = "fp32",
                  int8_sparse: SparseInt8Policy | None = None) -> LoweredModule:
    """One Relax function ``main_b{batch}_s{seq}`` per bucket; weights pooled by name.

    Buckets are specializations of one model, so weights with the same name normally have the
    same value and are stored once; a name whose value differs in some bucket (a constant folded
    to that bucket's shape) is stored again as ``name@b{batch}_s{seq}``. With ``target``, matmuls on
    constant weights use the hand-written kernels of ``backends/tvm/kernels`` for that target.
    ``FunctionInfo.params`` lists the parameter-file keys each function takes, in order. ``extra``:
    more functions by name (e.g. the packed, padding-free ones of ``varlen.py``), lowered after the
    buckets with the same weight pooling. ``precision="bf16"``: dense layers on constant weights use
    the BF16 kernels (``ops/bf16_dense.py``; needs a target with AVX512-BF16 or AMX-BF16).
    ``int8_sparse``: INT8 layers on pruned weights run the block-sparse INT8 kernel where this
    policy's measured cost model predicts a gain (``ops/quant_dense.sparse_choice``; None: never).
    """
    if not models:
        raise BackendError("no buckets to compile")
    bb = relax.BlockBuilder()
    functions: dict[tuple[int, int], FunctionInfo] = {}
    params: dict[str, np.ndarray] = {}
    jobs = [(key, bucket_function_name(*key), models[key]) for key in sorted(models)]
    jobs += [(None, name, m) for name, m in (extra or {}).items()]
    extras: dict[str, FunctionInfo] = {}
    with precision_scope(precision) as bf16:
        for key, fname, model in jobs:
            _lower_one(bb, key, fname, model, target, tiles, params, functions, extras,
                       int8_sparse)
    return LoweredModule(bb.get(), functions, params, extras, bf16)


def _lower_one(bb: relax.BlockBuilder, key: tuple[int, int] | None, fname: str, model: ir.Model,
               target: object, tiles: object, params: dict[str, np.ndarray],
               functions: dict[tuple[int, int], FunctionInfo],
               extras: dict[str, FunctionInfo],
               int8_sparse: SparseInt8Policy | None = None) -> None:
    """Lower one function into ``bb`` and pool its weights into ``params`` (see above)."""
    batch, seq = key if key is not None else (0, 0)
    info = lower_function(bb, model, fname, target=target, tiles=tiles, int8_sparse=int8_sparse)
    keys = []
    for name in info.params:
        value = info.param_values[name]
        key_name = name
        seen = params.get(name)
        if seen is not None and seen is not value and not _same(seen, value):
            # A bucket-specific constant under a shared name (e.g. position embeddings
            # folded to this bucket's length): keep it beside the shared one.
            key_name = f"{name}@b{batch}_s{seq}" if key is not None else f"{name}@{fname}"
            log.debug("bucket %dx%d: weight %r differs from other buckets', stored as %r",
                      batch, seq, name, key_name)
        params.setdefault(key_name, value)
        keys.append(key_name)
    info.params = keys
    info.param_values = {}
    if key is None:
        extras[fname] = info
    else:
        functions[key] = info

"""Lower one static graph per (batch, seq) bucket into a single Relax module sharing weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import tvm
from tvm import relax

from .._errors import BackendError
from .graph import FunctionInfo, lower_function


def bucket_function_name(batch: int, seq: int) -> str:
    return f"main_b{batch}_s{seq}"


@dataclass
class LoweredModule:
    mod: tvm.IRModule
    functions: dict[tuple[int, int], FunctionInfo]
    params: dict[str, np.ndarray]


def lower_buckets(models: dict[tuple[int, int], ir.Model]) -> LoweredModule:
    """One Relax function ``main_b{batch}_s{seq}`` per bucket; weights pooled by name.

    Every bucket's graph must give a weight name the same value (they are specializations of one
    model), so one parameter file serves all functions.
    """
    if not models:
        raise BackendError("no buckets to compile")
    bb = relax.BlockBuilder()
    functions: dict[tuple[int, int], FunctionInfo] = {}
    params: dict[str, np.ndarray] = {}
    for key in sorted(models):
        batch, seq = key
        info = lower_function(bb, models[key], bucket_function_name(batch, seq))
        for name, value in info.param_values.items():
            seen = params.get(name)
            if seen is None:
                params[name] = value
            elif seen is not value and (seen.shape != value.shape or seen.dtype != value.dtype
                                        or not np.array_equal(seen, value)):
                raise BackendError(f"bucket {batch}x{seq}: weight {name!r} differs from the "
                                   "other buckets' (all buckets must come from one model)")
        info.param_values = {}
        functions[key] = info
    return LoweredModule(bb.get(), functions, params)

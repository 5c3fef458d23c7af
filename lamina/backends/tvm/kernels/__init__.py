"""Hand-written, ISA-parameterised TIR kernels (dense, batched matmul) for the TVM backend."""

from __future__ import annotations

from .common import standalone_module
from .dense import (
    DenseConfig,
    batch_matmul_kernel,
    candidate_configs,
    default_batch_config,
    default_config,
    dense_kernel,
    dense_reference,
    pack_weight,
    packed_weight_shape,
    resolve_config,
    unpack_weight,
)
from .isa import host_supports, host_target, int8_isa, isa_of, target_for

__all__ = [
    "DenseConfig",
    "batch_matmul_kernel",
    "candidate_configs",
    "default_batch_config",
    "default_config",
    "dense_kernel",
    "dense_reference",
    "host_supports",
    "host_target",
    "int8_isa",
    "isa_of",
    "pack_weight",
    "packed_weight_shape",
    "resolve_config",
    "standalone_module",
    "target_for",
    "unpack_weight",
]

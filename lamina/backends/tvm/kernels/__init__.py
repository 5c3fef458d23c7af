"""Hand-written, ISA-parameterised TIR kernels for the TVM backend: dense with fused epilogues and
batched matmul (``dense``), fused attention (``attention``), LayerNorm and row reductions
(``layernorm``, ``_rows``), and their Relax emitters (``relax_emit``). This package exports the
dense API; the others are imported from their modules by the lowering."""

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

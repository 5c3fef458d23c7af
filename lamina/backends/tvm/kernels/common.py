"""What every hand-written kernel shares: the fused elementwise epilogues (TIR and numpy forms),
the vectorizable fast erf / tanh, and the marks a finished kernel carries.

The dense kernels (fp32 and INT8), the attention kernel and the row kernels (LayerNorm, softmax) all
import from here, so an epilogue means the same thing in each of them.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import tvm
from tvm import tirx

Epilogue = Literal["gelu_erf", "gelu_tanh", "relu"] | None
EPILOGUES: tuple[str | None, ...] = (None, "gelu_erf", "gelu_tanh", "relu")


def f32(v: float) -> tirx.PrimExpr:
    """A float32 TIR constant."""
    return tirx.const(v, "float32")


def round_half_even(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """ONNX QuantizeLinear's rounding, as LLVM's ``nearbyint`` (the default rounding mode). TVM's
    own ``nearbyint`` does not vectorize: a ``T.vectorized`` loop using it stays scalar, and LLVM
    re-vectorizes it at its preferred width (8 lanes) or with gathers; the LLVM intrinsic
    vectorizes to the loop's lanes."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.nearbyint", x)


def _poly(x2: tirx.PrimExpr, coeffs: list[float]) -> tirx.PrimExpr:
    p = f32(coeffs[0])
    for c in coeffs[1:]:
        p = p * x2 + f32(c)
    return p


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """Rational erf approximation (Eigen's, as in TVM's ``fast_erf``), max error ~1e-6,
    vectorizes."""
    x = tirx.max(tirx.min(x, f32(4.0)), f32(-4.0))
    x2 = x * x
    p = x * _poly(
        x2,
        [
            -2.72614225801306e-10,
            2.77068142495902e-08,
            -2.10102402082508e-06,
            -5.69250639462346e-05,
            -7.34990630326855e-04,
            -2.95459980854025e-03,
            -1.60960333262415e-02,
        ],
    )
    q = _poly(
        x2,
        [
            -1.45660718464996e-05,
            -2.13374055278905e-04,
            -1.68282697438203e-03,
            -7.37332916720468e-03,
            -1.42647390514189e-02,
        ],
    )
    return p / q


def fast_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """Rational tanh approximation (Eigen's, as in TVM's ``fast_tanh``), vectorizes."""
    x = tirx.max(tirx.min(x, f32(9.0)), f32(-9.0))
    x2 = x * x
    p = x * _poly(
        x2,
        [
            -2.76076847742355e-16,
            2.00018790482477e-13,
            -8.60467152213735e-11,
            5.12229709037114e-08,
            1.48572235717979e-05,
            6.37261928875436e-04,
            4.89352455891786e-03,
        ],
    )
    q = _poly(
        x2, [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03]
    )
    return p / q


def apply_epilogue(v: tirx.PrimExpr, epilogue: Epilogue) -> tirx.PrimExpr:
    """The elementwise epilogue applied to ``acc + bias`` (fast, vectorizable forms)."""
    if epilogue is None:
        return v
    if epilogue == "gelu_erf":
        return f32(0.5) * v * (f32(1.0) + fast_erf(v * f32(1.0 / math.sqrt(2.0))))
    if epilogue == "gelu_tanh":
        inner = f32(math.sqrt(2.0 / math.pi)) * (v + f32(0.044715) * v * v * v)
        return f32(0.5) * v * (f32(1.0) + fast_tanh(inner))
    if epilogue == "relu":
        return tirx.max(v, f32(0.0))
    raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {EPILOGUES}")


def check_epilogue(epilogue: Epilogue) -> None:
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {EPILOGUES}")


def epilogue_reference(y: np.ndarray, epilogue: Epilogue) -> np.ndarray:
    """numpy (float64) form of :func:`apply_epilogue` with the exact erf / tanh."""
    if epilogue == "gelu_erf":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return 0.5 * y * (1.0 + erf(y / math.sqrt(2.0)))
    if epilogue == "gelu_tanh":
        return 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    if epilogue == "relu":
        return np.maximum(y, 0.0)
    return y


def dequant_epilogue(bias: bool, epilogue: Epilogue, residual: bool):
    """The INT8 kernels' epilogue on one int32 accumulator ``a`` of output ``(i, j)``:
    ``epilogue((a - zp * colsum[j]) * x_scale * w_scale[j] + bias[j]) + R[i, j]`` with
    ``qp = [x_scale, zp]`` (TIR, vectorizes)."""

    def epi(
        i: tirx.PrimExpr, j: tirx.PrimExpr, a: tirx.PrimExpr, cs, ws, qp, b, r
    ) -> tirx.PrimExpr:
        zp = tirx.Cast("int32", qp[1])
        v = tirx.Cast("float32", a - zp * cs[j]) * (qp[0] * ws[j])
        if bias:
            v = v + b[j]
        v = apply_epilogue(v, epilogue)
        if residual:
            v = v + r[i, j]
        return v

    return epi


STACK_BYTES = 1024  # tvm::runtime::kMaxStackAlloca


def register_rows(mr: int, row_bytes: int) -> tuple[tuple[int, int], ...]:
    """A register tile of ``mr`` rows of ``row_bytes`` each, as three row groups ``(first row,
    rows)`` (empty groups have 0 rows), each group under :data:`STACK_BYTES`.

    A kernel keeps each group in its own small "global" buffer: TVM lowers a buffer of that scope
    and under 1,024 bytes to a stack array, which LLVM promotes to registers. Any other buffer in a
    parallel loop ("local" scope, or 1,024 bytes or more) is served by the workspace pool: per task
    an allocate call, a free call, a memset of the tile and its stores back, none of which LLVM
    may drop. On MiniLM's INT8 K = 384 dense that was 10% of the kernel (Zen5)."""
    per = max(1, (STACK_BYTES - 1) // row_bytes)
    groups = [(r, min(per, mr - r)) for r in range(0, mr, per)]
    if len(groups) > 3:
        raise ValueError(f"a register tile of {mr} rows of {row_bytes} bytes needs "
                         f"{len(groups)} groups of under {STACK_BYTES} bytes (at most 3)")
    groups += [(mr, 0)] * (3 - len(groups))
    return tuple(groups)


def keep_params(func: tirx.PrimFunc, keep: list[str]) -> tirx.PrimFunc:
    """``func`` with only the parameters named in ``keep`` (a template's optional inputs that its
    body never reads are dropped)."""
    params = [p for p in func.params if p.name in keep]
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


OPAQUE = 8  # relax OpPatternKind.kOpaque


def finish_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Mark a hand-scheduled kernel: MetaSchedule and dlight skip it (``tirx.is_scheduled``), and
    FuseOps never merges it with its neighbours (``op_pattern`` opaque: FuseTIR cannot splice a
    scheduled kernel, e.g. the pooler's dense followed by Tanh)."""
    return (
        func.with_attr("tirx.is_scheduled", True)
        .with_attr("op_pattern", OPAQUE)
        .without_attr("global_symbol")
    )


def root_block(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Wrap the body of a kernel written as plain loops (no blocks) in the root block Relax's
    analyses expect of every PrimFunc."""
    from tvm import s_tir

    if isinstance(func.body, s_tir.SBlockRealize):
        return func
    block = s_tir.SBlock([], [], [], "root", func.body)
    return func.with_body(s_tir.SBlockRealize([], True, block))


def standalone_module(func: tirx.PrimFunc, name: str = "main") -> tvm.IRModule:
    """Wrap a kernel as a one-function IRModule callable as ``name`` (tests, benchmarks)."""
    return tvm.IRModule({name: func.with_attr("global_symbol", name)})

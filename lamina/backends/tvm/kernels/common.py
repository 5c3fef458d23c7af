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
from tvm.script import tirx as T

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


def saturate_u8(v: tirx.PrimExpr, zp: tirx.PrimExpr, signed: bool = False) -> tirx.PrimExpr:
    """The code an INT8 kernel reads for the scaled value ``v``: ``saturate(round_half_even(v) +
    zp)`` (ONNX QuantizeLinear), as u8, or as int8 stored shifted by +128 when ``signed``."""
    lo, hi, shift = (-128.0, 127.0, 128.0) if signed else (0.0, 255.0, 0.0)
    return tirx.Cast("uint8", tirx.max(tirx.min(round_half_even(v) + zp, f32(hi)), f32(lo))
                     + f32(shift))


# A 16 x 16 transpose by interleaves (the attention kernels' K, the transposed quantization): rows
# loaded in bit-reversed order, then four rounds, each interleaving row i with row i + 8 in runs of
# 1, 2, 4 and 8 lanes (x86's unpacks at full width; any element type).


def _interleave(width: int, lo: bool) -> list[int]:
    """Shuffle indices of x86's unpack (lo or hi half) of two 16-lane vectors in runs of
    ``width`` lanes."""
    out = []
    for e in range(8 // width):
        src = (e + (0 if lo else 8 // width)) * width
        out += [src + b for b in range(width)] + [16 + src + b for b in range(width)]
    return out


_L1, _L2, _L4, _L8 = [(_interleave(w, True), _interleave(w, False)) for w in (1, 2, 4, 8)]
_V16 = T.ramp(0, 1, 16)


def bit_reversed(r):
    """The row of the transpose's first buffer that the ``r``-th of 16 rows is loaded into."""
    return (r % 2) * 8 + (r // 2 % 2) * 4 + (r // 4 % 2) * 2 + r // 8


@T.macro
def interleave_rounds(ta, tb):
    """The first three rounds of the 16 x 16 transpose (``ta`` -> ``tb`` -> ``ta`` -> ``tb``, 16
    rows of 16 lanes, loaded in :func:`bit_reversed` order); the caller's last round interleaves
    ``tb[i]`` with ``tb[i + 8]`` by ``_L8`` into the transposed rows."""
    for i in T.unroll(8):
        tb[2 * i, _V16] = T.Shuffle([ta[i, _V16], ta[i + 8, _V16]], _L1[0])
        tb[2 * i + 1, _V16] = T.Shuffle([ta[i, _V16], ta[i + 8, _V16]], _L1[1])
    for i in T.unroll(8):
        ta[2 * i, _V16] = T.Shuffle([tb[i, _V16], tb[i + 8, _V16]], _L2[0])
        ta[2 * i + 1, _V16] = T.Shuffle([tb[i, _V16], tb[i + 8, _V16]], _L2[1])
    for i in T.unroll(8):
        tb[2 * i, _V16] = T.Shuffle([ta[i, _V16], ta[i + 8, _V16]], _L4[0])
        tb[2 * i + 1, _V16] = T.Shuffle([ta[i, _V16], ta[i + 8, _V16]], _L4[1])


def butterfly(v: tirx.PrimExpr, lanes: int, combine) -> tirx.PrimExpr:
    """``v`` (``lanes`` wide) combined across its lanes by a butterfly (lane i with i ^ lanes/2,
    ..., i ^ 1): every lane holds the total, with no scalar extraction."""
    step = lanes // 2
    while step:
        v = combine(v, tirx.Shuffle([v], [i ^ step for i in range(lanes)]))
        step //= 2
    return v


def add(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """``a + b``: the combine of a butterfly sum."""
    return a + b


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


# GELU by table: the normal CDF on [-4, 4) in pieces, a polynomial in the position u in [0, 1)
# within each (least squares on Chebyshev nodes; the first piece starts at 0, the last ends at 1, so
# GELU(x) is 0 below -4 and x above 4). Rows: coefficients of u^0, u^1, ...; columns: pieces.
# 16 lanes (AVX-512): 16 cubic pieces of width 0.5; 8 lanes (AVX2): 8 quartic pieces of width 1, one
# register of either holding a row. Max error of x * table(x) against the exact GELU: 1.3e-4 (at
# x = -4), 3e-5 within (-3.9, 3.9).
_GELU_TABLES = {
    16: (
        [2.8697302780628098e-12, 0.0002316570607945323, 0.0013476505409926176,
         0.006206691265106201, 0.022749748080968857, 0.06681349128484726, 0.15866628289222717,
         0.30854371190071106, 0.49999484419822693, 0.6914514303207397, 0.8413377404212952,
         0.9331926703453064, 0.9772527813911438, 0.993792712688446, 0.9986512064933777,
         0.9997631907463074],
        [0.0003267498395871371, 0.00046655500773340464, 0.0022866064682602882,
         0.008859572932124138, 0.02701209858059883, 0.06456422805786133, 0.1206333264708519,
         0.17582617700099945, 0.19962671399116516, 0.1763853132724762, 0.12121578305959702,
         0.06476833671331406, 0.026903102174401283, 0.00868676882237196, 0.002180440118536353,
         0.0005331101710908115],
        [-0.0004762480384670198, 0.00023794043227098882, 0.0013189170276746154,
         0.004999333061277866, 0.013380245305597782, 0.025202075019478798, 0.031994931399822235,
         0.02310524322092533, -0.0006952848052605987, -0.023757051676511765,
         -0.03144948557019234, -0.02437599003314972, -0.013044195249676704,
         -0.0050812456756830215, -0.0014759446494281292, -0.0006826083990745246],
        [0.0003862854791805148, 0.00041266807238571346, 0.0012541095493361354,
         0.0026816208846867085, 0.003665248164907098, 0.0020824698731303215,
         -0.002745960606262088, -0.0074699860997498035, -0.0074699860997498035,
         -0.002745960606262088, 0.0020824698731303215, 0.003665248164907098,
         0.0026816208846867085, 0.0012541095493361354, 0.00041266807238571346,
         0.0003862854791805148],
    ),
    8: (
        [4.65562267557007e-12, 0.0013512069126591086, 0.022739481180906296, 0.15866248309612274,
         0.500010073184967, 0.8413335680961609, 0.9772506356239319, 0.9986549615859985],
        [0.00051887147128582, 0.004362168721854687, 0.054514601826667786, 0.24164137244224548,
         0.39841142296791077, 0.24253343045711517, 0.053958434611558914, 0.004222691059112549],
        [-0.0009126828517764807, 0.007250344380736351, 0.04991910606622696, 0.12323226779699326,
         0.0045741042122244835, -0.1255013346672058, -0.05382337421178818,
         -0.005241845268756151],
        [0.0014261665055528283, 0.004046893212944269, 0.037792451679706573,
         -0.00449023162946105, -0.08071401715278625, 0.012595701962709427, 0.027001792564988136,
         0.0026768522802740335],
        [0.00031267141457647085, 0.005738724488765001, -0.006299187429249287,
         -0.019055945798754692, 0.019055945798754692, 0.006299187429249287,
         -0.005738724488765001, -0.00031267141457647085],
    ),
}
_PERMPS = {16: "llvm.x86.avx512.permvar.sf.512", 8: "llvm.x86.avx2.permps"}


def _lane_constants(lane: tirx.PrimExpr, values: list[float]) -> tirx.PrimExpr:
    """An expression that, vectorized over ``lane`` = 0 .. n - 1, is the constant vector
    ``values`` (selects on constants, which LLVM folds)."""
    e = f32(values[-1])
    for k in range(len(values) - 2, -1, -1):
        e = tirx.Select(lane == k, f32(values[k]), e)
    return e


def gelu_table(v: tirx.PrimExpr, lane: tirx.PrimExpr, lanes: int = 16) -> tirx.PrimExpr:
    """GELU by :data:`_GELU_TABLES`, in a loop vectorized over ``lanes`` (16: AVX-512, 8: AVX2;
    ``lane`` its variable): the piece's coefficients come from in-register tables by ``vpermps``,
    so the function takes 5 (16 lanes) or 6 (8 lanes) multiply-adds where the rational erf takes
    15. In the INT8 kernels, whose dot products issue on the same ports as multiply-adds, the erf
    was 12% of FFN1 (BERT-base, Zen5). Lossy artifacts only: the error (1.3e-4 at most) is far
    below an INT8 step."""
    table = _GELU_TABLES[lanes]
    width = 8.0 / lanes
    s = tirx.max(tirx.min(v, f32(3.999)), f32(-4.0)) * f32(1.0 / width) + f32(4.0 / width)
    i = tirx.Cast("int32", s)  # the piece, 0 .. lanes - 1
    u = s - tirx.Cast("float32", i)

    def coef(k: int) -> tirx.PrimExpr:
        return tirx.call_llvm_pure_intrin("float32", _PERMPS[lanes],
                                          _lane_constants(lane, table[k]), i)

    p = coef(len(table) - 1)
    for k in range(len(table) - 2, -1, -1):
        p = coef(k) + u * p
    return v * p


def apply_epilogue(v: tirx.PrimExpr, epilogue: Epilogue,
                   lane: tuple[tirx.PrimExpr, int] | None = None) -> tirx.PrimExpr:
    """The elementwise epilogue applied to ``acc + bias`` (fast, vectorizable forms). With
    ``lane = (variable, lanes)`` of a loop vectorized over 16 (AVX-512) or 8 (AVX2) lanes (lossy
    kernels only) ``gelu_erf`` is :func:`gelu_table`."""
    if epilogue is None:
        return v
    if epilogue == "gelu_erf" and lane is not None:
        return gelu_table(v, *lane)
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
    ``qp = [x_scale, zp]`` (TIR, vectorizes; ``lane``: see :func:`apply_epilogue`)."""

    def epi(
        i: tirx.PrimExpr, j: tirx.PrimExpr, a: tirx.PrimExpr, cs, ws, qp, b, r,
        lane: tuple[tirx.PrimExpr, int] | None = None,
    ) -> tirx.PrimExpr:
        zp = tirx.Cast("int32", qp[1])
        v = tirx.Cast("float32", a - zp * cs[j]) * (qp[0] * ws[j])
        if bias:
            v = v + b[j]
        v = apply_epilogue(v, epilogue, lane)
        if residual:
            v = v + r[i, j]
        return v

    return epi


def fit_chunk(steps: int, cap: int, least: int) -> int:
    """The largest chunk of at most ``cap`` steps dividing ``steps`` into at least two chunks of
    ``least`` or more steps, else 0 (the dense kernels' K chunks for a software prefetch)."""
    for v in range(min(cap, steps // 2), least - 1, -1):
        if steps % v == 0:
            return v
    return 0


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

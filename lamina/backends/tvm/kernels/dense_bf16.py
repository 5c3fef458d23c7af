"""BF16 dense kernels: bf16 activations x bf16 weights, fp32 accumulation, fp32 epilogue.

``Y[M, N] = epilogue(bf16(X) @ bf16(W) + bias[N]) + R[M, N]``

bf16 values are stored as their bit patterns in ``uint16`` (the upper half of the fp32 word),
never as TVM's ``bfloat16`` dtype: TVM's ``BF16ComputeLegalize`` rewrites bf16 vectors into fp32
ones and the dot-product instruction could not be emitted (TVM_NOTES.md). Two kernels make a layer:

- :func:`to_bf16_kernel`: ``X[M, K]`` fp32 -> ``Xb[M, Kp]`` uint16, round to nearest even (NaN
  stays NaN), K zero-padded to the family's K step. One per activation, shared by its consumers.
- :func:`dense_bf16_kernel`: the matmul on the packed weight ``Wp[N / nb, Kp / 2, 2 nb]`` with
  ``Wp[p, k2, 2 c + j] = bf16(W[2 k2 + j, p nb + c])`` (:func:`pack_weight_bf16`): each run of 32
  values is one ``vdpbf16ps`` operand (16 columns x a pair of k), and for ``nb = 16`` this is the
  AMX-BF16 B-tile layout ``[N / 16, K / 2, 32]``.

Instruction families (``isa.bf16_isa``):

- ``avx512bf16``: ``acc[16 x f32] = vdpbf16ps(acc, bcast(Xb[i, 2 k2 : 2 k2 + 2]), Wp[p, k2, v])``
  (``acc += a0 * b0 + a1 * b1`` per lane). LLVM's intrinsic takes ``<32 x bfloat>`` operands, which
  TIR cannot spell, so the kernel calls a three-line LLVM IR helper (:data:`DPBF16PS_IR`, bitcasts
  of the uint16 / int32 vectors, ``alwaysinline``) linked into the module through the
  ``pragma_import_llvm`` attribute and called with ``call_extern``. Every operand is passed inline
  in one expression: a named temporary would become a workspace buffer stored and reloaded per call.
- ``amx`` (AMX-BF16): ``dense_amx.amx_dense_bf16_kernel``, ``tdpbf16ps`` on 32 x 32 tiles (K step
  32), chosen for shapes in whole tiles on targets with ``amx-bf16``.

Schedule of the ``avx512bf16`` kernel (TIR written directly; the register tile is explicit)::

    parallel for (mo, p, mt) in (M / mc) x (N / nb) x (mc / mr):  # row block, panel, row tile
      acc[mr, nb] = 0                                  # mr * nv zmm accumulators (8 x 3 = 24)
      for k2 in Kp / 2:                                # (in chunks with prefetch_kc)
        for i in unroll(mr): for v in unroll(nv):      # nv = nb / 16
          acc[i, v] = vdpbf16ps(acc[i, v], bcast32(Xb[row i, 2 k2 : 2 k2 + 2]), Wp[p, k2, v])
      Y[tile] = epilogue(acc + bias) + R               # the fp32 kernel's epilogues

With ``mr = 8, nv = 3`` the inner loop is 3 weight loads, 8 broadcasts and 24 ``vdpbf16ps`` with
every accumulator in a register (checked in the generated assembly, no spills). The default row
block ``mc`` is M split among the threads when each gets at least 128 rows (:func:`_row_block`),
else M. Measured numbers are in the README (BF16).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from ._prefetch import panel_share
from .common import (
    Epilogue,
    apply_epilogue,
    check_epilogue,
    epilogue_reference,
    finish_kernel,
    fit_chunk,
    keep_params,
    register_rows,
    root_block,
)
from .dense_amx import amx_bf16_fits, amx_dense_bf16_kernel
from .isa import bf16_isa, num_threads

LANES = 16  # fp32 lanes of one zmm accumulator = columns per vdpbf16ps
# Accumulators the register tile may use (of 32 zmm), leaving nv weight vectors and a broadcast.
_ACC_BUDGET = 24
_DEFAULT = (8, 3)

DPBF16PS = "lamina_dpbf16ps"
# The helper the kernel calls: LLVM 22 declares vdpbf16ps on <32 x bfloat>; TIR passes the same
# bits as <16 x i32> (the broadcast activation pair) and <32 x i16> (the packed weights).
# linkonce_odr: every kernel of a module imports it, the linker keeps one copy (inlined anyway).
DPBF16PS_IR = r"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)

define linkonce_odr <16 x float> @lamina_dpbf16ps(<16 x float> %acc, <16 x i32> %a,
                                                  <32 x i16> %b) #0 {
  %ab = bitcast <16 x i32> %a to <32 x bfloat>
  %bb = bitcast <32 x i16> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %ab,
                                                            <32 x bfloat> %bb)
  ret <16 x float> %r
}

declare <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float>)

define linkonce_odr <16 x i16> @lamina_cvtneps2bf16(<16 x float> %x) #0 {
  %r = call <16 x bfloat> @llvm.x86.avx512bf16.cvtneps2bf16.512(<16 x float> %x)
  %b = bitcast <16 x bfloat> %r to <16 x i16>
  ret <16 x i16> %b
}

attributes #0 = { alwaysinline nounwind }
"""


def vdpbf16ps(acc: tirx.PrimExpr, pair: tirx.PrimExpr, words: tirx.PrimExpr) -> tirx.PrimExpr:
    """``acc`` (float32x16) + the dot products of the bf16 ``pair`` (uint16x2, broadcast to every
    lane) with ``words`` (32 bf16 values: uint16x32 or int16x32), as one inline expression (the
    kernel's module needs :data:`DPBF16PS_IR` imported)."""
    return T.call_extern(f"float32x{LANES}", DPBF16PS, acc,
                         T.broadcast(T.reinterpret("int32", pair), LANES), words)


def vcvtneps2bf16(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """The bf16 bits (uint16x16) of ``x`` (float32x16), round to nearest even, in one instruction
    (``vcvtneps2bf16``, which reads and writes denormals as zero), from :data:`DPBF16PS_IR`."""
    return T.call_extern(f"uint16x{LANES}", "lamina_cvtneps2bf16", x)


PREFETCH_KC = 32  # k2 steps (64 values of K) per prefetch chunk


@dataclass(frozen=True)
class Bf16Config:
    """Register tile of the ``avx512bf16`` kernel: ``mr`` rows x ``nv`` fp32 vectors (``nb = 16
    nv`` columns, which fixes the packed weight layout). ``prefetch_kc``: the K loop runs in chunks
    of this many k2 steps, each issuing software prefetches for its share of the next panel, as the
    fp32 kernel does; -1 means :data:`PREFETCH_KC`, 0 (the default) off. With bf16 weights (half
    the bytes) the hardware prefetchers kept up: on Zen5 with cold weights it changed the time by
    1-2%, either way, so the tile search decides per shape."""

    mr: int = _DEFAULT[0]
    nv: int = _DEFAULT[1]
    prefetch_kc: int = 0
    mc: int = 0

    def key(self) -> str:
        return f"mr{self.mr}_nv{self.nv}_pf{self.prefetch_kc}_mc{self.mc}"

    def to_dict(self) -> dict[str, int]:
        return {"mr": self.mr, "nv": self.nv, "prefetch_kc": self.prefetch_kc, "mc": self.mc}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Bf16Config:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def family(target: tvm.target.Target) -> str:
    fam = bf16_isa(target)
    if fam is None:
        raise ValueError(f"no BF16 kernel for target {target} (needs AVX512-BF16 or AMX-BF16)")
    return fam


def fits(N: int) -> bool:
    """Whether the kernels take an output width of N (whole 16-column vectors)."""
    return N % LANES == 0


def kernel_family(M: int, N: int, target: tvm.target.Target) -> str:
    """The family that runs an ``M x N`` dense on ``target``: ``amx`` only for shapes in whole
    32 x 32 tiles (an AMX-BF16 CPU has AVX512-BF16 for the rest)."""
    fam = family(target)
    if fam == "amx" and not amx_bf16_fits(M, N):
        return "avx512bf16"
    return fam


def _divisor_at_most(n: int, cap: int) -> int:
    for v in range(max(1, min(cap, n)), 0, -1):
        if n % v == 0:
            return v
    return 1


def _default_tile(M: int, vectors: int) -> Bf16Config:
    """The most accumulators within the budget (``mr`` dividing M, at most 8; ``nv`` dividing the
    row's vectors, at most 6), then the tallest tile (fewer weight loads per FLOP)."""
    best, key = Bf16Config(1, 1), (0, 0)
    for mr in (v for v in range(1, min(M, 8) + 1) if M % v == 0):
        for nv in (v for v in range(1, min(vectors, 6) + 1) if vectors % v == 0):
            acc = mr * nv
            if acc > _ACC_BUDGET:
                continue
            k = (acc, mr)
            if k > key:
                best, key = Bf16Config(mr, nv), k
    return best


MIN_ROW_BLOCK = 128


def _row_block(M: int, mr: int, threads: int) -> int:
    """Rows per block of the default tile: M split evenly among the threads when each gets at least
    :data:`MIN_ROW_BLOCK` rows, else all of M.

    With one block per thread, each thread computes (and its epilogue writes) the rows it also
    converted to bf16 (the conversion kernel splits rows the same way), instead of reading the half
    another core wrote, at the price of every thread reading every weight panel. Measured on MiniLM
    (Zen5, 2 threads, interleaved): b2 s128 0.91x, b8 s128 0.85-0.88x the time of one block; b1
    (64 rows a thread) unchanged, so it keeps one block."""
    rows = M // threads if threads > 1 and M % threads == 0 else M
    if rows < M and rows >= MIN_ROW_BLOCK and rows % mr == 0:
        return rows
    return M


def _fit_prefetch(K2: int, kc: int) -> int:
    """The largest chunk <= kc dividing K2 into at least two chunks of 8 or more steps, else 0."""
    return fit_chunk(K2, PREFETCH_KC if kc < 0 else kc, 8)


def resolve_bf16_config(M: int, K: int, N: int, target: tvm.target.Target | None = None,
                        config: Bf16Config | None = None) -> Bf16Config:
    """The tile the kernel really uses: ``nv`` divides N / 16 and ``mr`` divides M (else
    smaller), within the accumulator budget; the prefetch chunk divides the k2 steps (else off)."""
    if not fits(N):
        raise ValueError(f"N={N} is not a multiple of the {LANES} fp32 lanes of the BF16 kernel")
    cfg = config or _default_tile(M, N // LANES)
    nv = _divisor_at_most(N // LANES, max(1, cfg.nv))
    mr = _divisor_at_most(M, max(1, min(cfg.mr, _ACC_BUDGET // nv)))
    if config is None:
        cfg = replace(cfg, mc=_row_block(M, mr, num_threads(target) if target is not None else 1))
    mc = cfg.mc if 0 < cfg.mc < M and cfg.mc % mr == 0 and M % cfg.mc == 0 else M
    return Bf16Config(mr=mr, nv=nv, prefetch_kc=_fit_prefetch(padded_k(K) // 2, cfg.prefetch_kc),
                      mc=mc)


def candidate_bf16_configs(M: int, K: int, N: int,
                           target: tvm.target.Target | None = None) -> list[Bf16Config]:
    """The default tile first, then the tiles that use most of the register budget."""
    default = resolve_bf16_config(M, K, N, target)
    mr, nv, mc = default.mr, default.nv, default.mc
    threads = num_threads(target) if target is not None else 1
    tiles = [(mr, nv, -1, mc), (mr, nv, 2 * PREFETCH_KC, mc)]
    tiles += [(mr, nv, 0, rows) for rows in (M, M // threads, M // (2 * threads))]
    tiles += [(r, v, 0, mc) for r, v in ((8, 3), (6, 4), (4, 6), (12, 2), (4, 5), (8, 2), (6, 3),
                                         (4, 4))]
    out = [default]
    for r, v, kc, rows in tiles:
        cfg = resolve_bf16_config(M, K, N, target, Bf16Config(r, v, kc, max(1, rows)))
        if cfg not in out:
            out.append(cfg)
    return out


# ---------------------------------------------------------------------------------------------
# numpy side: rounding, packing, reference
# ---------------------------------------------------------------------------------------------


def k_step(fam: str | None = None) -> int:
    """The K step of a family: 32 (one AMX tile row of bf16) for ``amx``, else 2 (one pair)."""
    return 32 if fam == "amx" else 2


def padded_k(K: int, fam: str | None = None) -> int:
    """K rounded up to the family's K step."""
    step = k_step(fam)
    return -(-K // step) * step


def to_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), round to nearest even; NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def from_bf16(b: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> fp32 (exact)."""
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest bf16 value, as fp32."""
    return from_bf16(to_bf16(x))


def pack_weight_bf16(w: np.ndarray, nb: int, layout: Literal["KN", "NK"] = "KN",
                     step: int = 2) -> np.ndarray:
    """A float weight -> bf16 panels ``[N / nb, Kp / 2, 2 nb]`` uint16 (see the module doc), K
    zero-padded to a multiple of ``step`` (32 for AMX). ``layout="NK"``: a Gemm ``transB=1`` /
    torch Linear weight ``[N, K]``."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"pack_weight_bf16 expects a 2-D weight, got shape {w.shape}")
    if layout == "NK":
        w = w.T
    elif layout != "KN":
        raise ValueError(f"layout must be 'KN' or 'NK', got {layout!r}")
    K, N = w.shape
    if N % nb:
        raise ValueError(f"N={N} is not a multiple of the panel width nb={nb}")
    Kp = -(-K // step) * step
    wb = to_bf16(w)
    if Kp != K:
        wb = np.concatenate([wb, np.zeros((Kp - K, N), np.uint16)])
    return np.ascontiguousarray(
        wb.reshape(Kp // 2, 2, N // nb, nb).transpose(2, 0, 3, 1).reshape(N // nb, Kp // 2, 2 * nb))


def unpack_weight_bf16(wp: np.ndarray, K: int) -> np.ndarray:
    """Inverse of :func:`pack_weight_bf16` (``"KN"``): ``[K, N]`` fp32 of the bf16 values."""
    P, K2, nb2 = wp.shape
    nb = nb2 // 2
    w = np.asarray(wp).reshape(P, K2, nb, 2).transpose(1, 3, 0, 2).reshape(K2 * 2, P * nb)
    return from_bf16(w[:K])


def dense_bf16_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                         epilogue: Epilogue = None,
                         residual: np.ndarray | None = None) -> np.ndarray:
    """float64 reference of the kernels: X and W (``[K, N]``) rounded to bf16, exact products."""
    y = round_bf16(x).astype(np.float64) @ round_bf16(w).astype(np.float64)
    if bias is not None:
        y = y + bias
    y = epilogue_reference(y, epilogue)
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# TIR side
# ---------------------------------------------------------------------------------------------


def _bf16_bits(u: tirx.PrimExpr, keep_nan: bool = True) -> tirx.PrimExpr:
    """The bf16 bits of the fp32 bits ``u`` (uint32, scalar or vector), round to nearest even;
    NaN -> quiet NaN (``keep_nan=False``: values known finite, one compare and select fewer).
    Written as one expression (no lets: see ``to_bf16_kernel``)."""
    rne = (u + (((u >> T.uint32(16)) & T.uint32(1)) + T.uint32(0x7FFF))) >> T.uint32(16)
    if not keep_nan:
        return T.Cast("uint16", rne)
    nan = (u >> T.uint32(16)) | T.uint32(0x40)
    is_nan = (u & T.uint32(0x7FFFFFFF)) > T.uint32(0x7F800000)
    return T.Cast("uint16", T.Select(is_nan, nan, rne))


def to_bf16_kernel(M: int, K: int, Kp: int | None = None) -> tirx.PrimFunc:
    """``Xb[M, Kp] = bf16(X[M, K])`` (uint16 bits, round to nearest even), zeros in ``K..Kp``.

    Arguments ``X[M, K]`` float32, output ``Xb[M, Kp]`` uint16. Parallel over rows, 16 lanes at a
    time. The rounding is written inline in each vector store: a value bound to a name inside a
    vectorized loop became a let that this TVM broadcasts from lane 0."""
    Kp = padded_k(K) if Kp is None else Kp
    if Kp < K:
        raise ValueError(f"Kp={Kp} < K={K}")
    KV = K // LANES
    tail = K - KV * LANES

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, K), "float32"), Xb: T.Buffer((M, Kp), "uint16")):
        T.func_attr({"tirx.noalias": True})
        for i in T.parallel(M):
            for kv in range(KV):
                for c in T.vectorized(LANES):
                    Xb[i, kv * LANES + c] = _bf16_bits(
                        T.reinterpret("uint32", X[i, kv * LANES + c]))
            for c in range(tail):
                Xb[i, KV * LANES + c] = _bf16_bits(T.reinterpret("uint32", X[i, KV * LANES + c]))
            for c in range(Kp - K):
                Xb[i, K + c] = T.uint16(0)

    return finish_kernel(root_block(func))


def bf16_epilogue(bias: bool, epilogue: Epilogue, residual: bool):
    """The fp32 epilogue on one accumulator ``a`` of output ``(i, j)``:
    ``epilogue(a + bias[j]) + R[i, j]`` (the fp32 dense kernel's epilogues, TIR, vectorizes)."""

    def epi(i: tirx.PrimExpr, j: tirx.PrimExpr, a: tirx.PrimExpr, b, r) -> tirx.PrimExpr:
        v = a
        if bias:
            v = v + b[j]
        v = apply_epilogue(v, epilogue)
        if residual:
            v = v + r[i, j]
        return v

    return epi


def packing(M: int, K: int, N: int, target: tvm.target.Target,
            config: Bf16Config | None = None) -> tuple[int, int]:
    """``(nb, k_step)`` of the packed weight and the bf16 activation for this kernel."""
    if kernel_family(M, N, target) == "amx":
        return 16, k_step("amx")
    return resolve_bf16_config(M, K, N, target, config).nv * LANES, k_step()


def dense_bf16_kernel(M: int, K: int, N: int, *, target: tvm.target.Target,
                      config: Bf16Config | None = None, bias: bool = False,
                      epilogue: Epilogue = None, residual: bool = False) -> tirx.PrimFunc:
    """The scheduled BF16 dense kernel.

    Arguments, in order: ``Xb[M, Kp]`` uint16 (:func:`to_bf16_kernel`, Kp = K rounded up to the
    family's K step, see :func:`packing`), ``Wp`` uint16 (:func:`pack_weight_bf16` with ``nb =
    config.nv * 16``), ``bias[N]`` float32 if ``bias``, ``R[M, N]`` float32 if ``residual``, output
    ``Y[M, N]`` float32. On an AMX-BF16 target, shapes in whole 32 x 32 tiles get
    :func:`amx_dense_bf16_kernel` (K padded to 32, 16-column panels).
    """
    check_epilogue(epilogue)
    if kernel_family(M, N, target) == "amx":
        return amx_dense_bf16_kernel(M, K, N, threads=num_threads(target), bias=bias,
                                     epilogue=epilogue, residual=residual)
    cfg = resolve_bf16_config(M, K, N, target, config)
    mr, nv = cfg.mr, cfg.nv
    L = LANES
    nb = nv * L
    Kp = padded_k(K)
    K2 = Kp // 2
    P = N // nb
    MB = cfg.mc // mr  # row tiles per row block
    MO = M // cfg.mc  # row blocks
    epi = bf16_epilogue(bias, epilogue, residual)
    # Software prefetch: K runs in CH chunks of KC steps; each (row tile, chunk) fetches PF of the
    # next panel's LINES cache lines (nv lines per k2 step), so the whole panel is requested while
    # this one is computed. Without chunks (KC = 0) one chunk of all K2 steps and no prefetch.
    KC = cfg.prefetch_kc or K2
    CH = K2 // KC
    LINES = K2 * nv
    PF = -(-LINES // (MB * CH)) if cfg.prefetch_kc else 0

    (r0, n0), (r1, n1), (r2, n2) = register_rows(mr, nb * 4)

    @T.macro
    def zero(acc, rows):
        for i in T.unroll(rows):
            for v in T.unroll(nv):
                acc[i, T.ramp(v * L, 1, L)] = T.broadcast(T.float32(0), L)

    @T.macro
    def step(acc, r, rows, row, p, k, X, W):
        for i in T.unroll(rows):
            for v in T.unroll(nv):
                acc[i, T.ramp(v * L, 1, L)] = vdpbf16ps(
                    acc[i, T.ramp(v * L, 1, L)], X[row + r + i, T.ramp(k * 2, 1, 2)],
                    W[p, k, T.ramp(v * 2 * L, 1, 2 * L)])

    @T.macro
    def store(acc, r, rows, row, p, B, R, Y):
        for i in T.unroll(rows):
            for v in T.unroll(nv):  # one register of columns at a time
                for c in T.vectorized(L):
                    Y[row + r + i, p * nb + v * L + c] = epi(
                        row + r + i, p * nb + v * L + c, acc[i, v * L + c], B, R)

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, Kp), "uint16"), W: T.Buffer((P, K2, 2 * nb), "uint16"),
             B: T.Buffer((N,), "float32"), R: T.Buffer((M, N), "float32"),
             Y: T.Buffer((M, N), "float32")):
        T.func_attr({"tirx.noalias": True})
        for task in T.parallel(MO * P * MB):
            with T.attr(0, "pragma_import_llvm", DPBF16PS_IR):
                # The register tile in up to three row groups (see common.register_rows).
                acc0 = T.alloc_buffer((max(n0, 1), nb), "float32")
                acc1 = T.alloc_buffer((max(n1, 1), nb), "float32")
                acc2 = T.alloc_buffer((max(n2, 1), nb), "float32")
                p = T.bind(task // MB % P)
                row = T.bind(task // (P * MB) * MB * mr + task % MB * mr)
                zero(acc0, n0)
                zero(acc1, n1)
                zero(acc2, n2)
                for kc in range(CH):
                    for f in T.unroll(PF):
                        T.evaluate(panel_share(W, (task // MB + 1) % P, task % MB * CH + kc, f,
                                               PF, LINES, nv, 2 * L))
                    for k2 in range(KC):
                        step(acc0, r0, n0, row, p, kc * KC + k2, X, W)
                        step(acc1, r1, n1, row, p, kc * KC + k2, X, W)
                        step(acc2, r2, n2, row, p, kc * KC + k2, X, W)
                store(acc0, r0, n0, row, p, B, R, Y)
                store(acc1, r1, n1, row, p, B, R, Y)
                store(acc2, r2, n2, row, p, B, R, Y)

    keep = ["X", "W"] + (["B"] if bias else []) + (["R"] if residual else []) + ["Y"]
    return finish_kernel(root_block(keep_params(func, keep)))

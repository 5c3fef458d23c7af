"""INT8 dense kernels: u8 activations x s8 weights, int32 accumulation, fused dequantizing epilogue.

``Y[M, N] = epilogue((Xq @ Wq - zp * colsum(Wq)) * (x_scale * w_scale[N]) + bias[N]) + R[M, N]``

``Xq`` is the activation quantized to uint8 with zero point ``zp`` (signed int8 activations arrive
shifted by +128, with ``zp + 128``: the same integers, so the instructions always see u8 x s8);
``Wq`` is the per-channel symmetric int8 weight, packed at compile time (:func:`pack_weight_int8`)
into the layout of the ISA's dot-product instruction: ``Wp[N // nb, K4, 4 * nb]`` with
``Wp[p, k4, 4 * c + j] = Wq[4 * k4 + j, p * nb + c]``. Each run of ``4 * lanes`` bytes is what one
instruction multiplies against a broadcast group of 4 activation bytes, and for ``nb = 16`` this is
byte for byte the VNNI / AMX-INT8 layout. K is padded to a multiple of 4 with zero weights.

Instruction families (``isa.int8_isa``):

- ``vnni`` (AVX-512 VNNI): ``acc[16 x i32] = vpdpbusd(acc, bcast4(Xq[i, 4k4:4k4+4]), Wp[p, k4,
  v])``;
  exact.
- ``avx2``: ``vpmaddwd(vpmaddubsw(bcast4(X), W), 1)`` added to ``acc[8 x i32]``. ``vpmaddubsw``
  saturates its int16 pair sums (255 * 127 * 2 > 32767), so this family takes **7-bit weights**
  (``[-64, 63]``), where no pair sum can saturate (255 * 64 * 2 = 32640) and the kernel is exact:
  ``lamina compile`` quantizes them so for an AVX2 target (``quantize-int8{weight-bits=7}``), and
  the lowering requantizes 8-bit ones (:func:`reduce_range`). The cost is one bit of weight
  precision (measured in the notes).
- ``amx`` (AMX-INT8): ``dense_amx.py``, chosen by :func:`dense_int8_kernel` on AMX targets.

``quantize.py`` makes ``Xq`` (QuantizeLinear / DynamicQuantizeLinear semantics).

Schedule (written directly in TIR, the register tile is explicit)::

    parallel for (mb, p, mt) in (M / mc) x (N / nb) x (mc / mr):  # row block, panel, row tile
      acc[mr, nb] = 0                                  # mr * nv vector registers (stack arrays)
      for kc in K / 4 / KC:
        prefetch(a share of panel p + 1)
        for k4 in KC:
          for i in unroll(mr): for v in unroll(nv):    # nv = nb / lanes
            acc[i, v] = dot4(acc[i, v], bcast(Xq[row i, 4 k4 : 4 k4 + 4]), Wp[p, k4, v])
      Y[tile] = epilogue(...)                          # one vector of columns at a time

With a fused LayerNorm the parallel loop is over the row blocks (one per thread), each running its
panel and row-tile tasks and then the LayerNorm of its rows; with ``sections`` the panels are
visited so that each thread's share is its slice of every section (see ``dense_int8_kernel``).

Tiles (``mr``, ``nv``) are :class:`Int8Config`; :func:`candidate_int8_configs` lists the grid that
``tuning.kernel_search`` measures per shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from ._prefetch import panel_share
from ._rows import lanes_for
from .common import (
    Epilogue,
    check_epilogue,
    dequant_epilogue,
    epilogue_reference,
    finish_kernel,
    fit_chunk,
    keep_params,
    register_rows,
    root_block,
    saturate_u8,
)
from .dense_amx import amx_dense_int8_kernel, amx_fits
from .dense_bf16 import _bf16_bits
from .isa import int8_isa, num_threads
from .layernorm import layer_norm_row


@dataclass(frozen=True)
class FusedLayerNorm:
    """The LayerNorm over each output row fused into the INT8 dense kernel (its ``eps``), and
    whether it also writes the next INT8 kernel's quantization (``quant_out``, ``out_signed``)."""

    eps: float
    quant_out: bool = False
    out_signed: bool = False


_INT32_LANES = {"vnni": 16, "amx": 16, "avx2": 8}
# Accumulator vectors the register tile may use (of 32 zmm / 16 ymm), leaving room for the
# weight vectors, the broadcast and (AVX2) the int16 temporaries and the ones vector.
_ACC_BUDGET = {"vnni": 24, "amx": 24, "avx2": 10}
_DEFAULT = {"vnni": (6, 4), "amx": (6, 4), "avx2": (4, 2)}


@dataclass(frozen=True)
class Int8Config:
    """Register tile of the INT8 dense kernel: ``mr`` rows x ``nv`` int32 vectors (``nb = nv *
    lanes`` columns, which fixes the packed weight layout); ``mc`` rows per row block (0: the
    default of :func:`_row_block`), the outermost split of the tasks."""

    mr: int = 6
    nv: int = 4
    mc: int = 0

    def key(self) -> str:
        return f"mr{self.mr}_nv{self.nv}" + (f"_mc{self.mc}" if self.mc else "")

    def to_dict(self) -> dict[str, int]:
        return {"mr": self.mr, "nv": self.nv, "mc": self.mc}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Int8Config:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def family(target: tvm.target.Target) -> str:
    fam = int8_isa(target)
    if fam is None:
        raise ValueError(f"no INT8 kernel for target {target} (needs AVX2 or AVX-512)")
    return fam


def kernel_family(M: int, N: int, target: tvm.target.Target) -> str:
    """The family that runs an ``M x N`` dense on ``target``: ``amx`` only for shapes in whole
    32 x 32 tiles (an AMX CPU has VNNI for the rest)."""
    fam = family(target)
    if fam == "amx" and not amx_fits(M, N):
        return "vnni"
    return fam


def lanes32(fam: str) -> int:
    """int32 lanes of one vector of the family."""
    return _INT32_LANES[fam]


def _divisor_at_most(n: int, cap: int) -> int:
    for v in range(max(1, min(cap, n)), 0, -1):
        if n % v == 0:
            return v
    return 1


def _default_tile(M: int, vectors: int, fam: str) -> Int8Config:
    """The most accumulators within the family's budget (``mr`` dividing M, ``nv`` dividing the
    row's vectors, ``mr`` at most the default's), then the fewest loads per step (mr + nv)."""
    cap_mr = _DEFAULT[fam][0] + 2
    best, key = Int8Config(1, 1), (0, 0)
    for mr in (v for v in range(1, min(M, cap_mr) + 1) if M % v == 0):
        for nv in (v for v in range(1, min(vectors, 8) + 1) if vectors % v == 0):
            acc = mr * nv
            if acc > _ACC_BUDGET[fam]:
                continue
            k = (acc, -(mr + nv))
            if k > key:
                best, key = Int8Config(mr, nv), k
    return best


MIN_ROW_BLOCK = 64


def _row_block(M: int, mr: int, threads: int) -> int:
    """Rows per block of the default tile: M split evenly among the threads when each gets at
    least :data:`MIN_ROW_BLOCK` rows, else all of M. With one block per thread each core computes
    (and its epilogue writes) the rows the LayerNorm before it wrote on that core, and the kernels
    after it read them there, at the price of every core reading every weight panel (as the BF16
    kernel does, ``dense_bf16._row_block``). Measured on MiniLM INT8 (Zen5, 2 threads,
    interleaved): b8 s128 0.78x the time of the panel-only split, b1 s128 (64 rows a thread)
    0.96x."""
    rows = M // threads if threads > 1 and M % threads == 0 else M
    if rows < M and rows >= MIN_ROW_BLOCK and rows % mr == 0:
        return rows
    return M


def resolve_int8_config(M: int, K: int, N: int, target: tvm.target.Target,
                        config: Int8Config | None = None) -> Int8Config:
    """The tile the kernel really uses: ``nb`` divides N (else narrower), ``mr`` divides M, the
    row block ``mc`` is a multiple of ``mr`` dividing M (default :func:`_row_block`)."""
    fam = family(target)
    L = lanes32(fam)
    if N % L:
        raise ValueError(f"N={N} is not a multiple of the {L} int32 lanes of {fam}")
    cfg = config or _default_tile(M, N // L, fam)
    nv = _divisor_at_most(N // L, max(1, cfg.nv))
    mr = _divisor_at_most(M, max(1, min(cfg.mr, _ACC_BUDGET[fam] // nv)))
    if not cfg.mc:
        mc = _row_block(M, mr, num_threads(target))
    elif 0 < cfg.mc < M and cfg.mc % mr == 0 and M % cfg.mc == 0:
        mc = cfg.mc
    else:
        mc = M
    return Int8Config(mr=mr, nv=nv, mc=mc)


def sections_fit(M: int, K: int, N: int, target: tvm.target.Target, sections: int, parts: int,
                 config: Int8Config | None = None) -> Int8Config | None:
    """The tile (whole-M row block) with which ``dense_int8_kernel(..., sections=sections)``
    gives each thread whole ``parts`` of every section (a QKV projection's heads), or None."""
    if kernel_family(M, N, target) == "amx":
        return None
    threads = num_threads(target)
    cfg = resolve_int8_config(M, K, N, target, config)
    cfg = Int8Config(cfg.mr, cfg.nv, M)
    P = N // (cfg.nv * lanes32(family(target)))
    if threads < 2 or parts % threads or P % (sections * threads):
        return None
    return cfg


def layer_norm_fusable(M: int, K: int, N: int, target: tvm.target.Target,
                       config: Int8Config | None = None) -> bool:
    """Whether the LayerNorm of this kernel's output rows may run inside it
    (``dense_int8_kernel``'s ``layer_norm``): not on AMX, rows of whole vectors, and one row
    block for each thread (each block's LayerNorm then runs on the core that computed its rows,
    in parallel; with fewer blocks than threads it would run on fewer cores than the separate
    kernel)."""
    if kernel_family(M, N, target) == "amx" or lanes_for(N, target) == 1:
        return False
    cfg = resolve_int8_config(M, K, N, target, config)
    blocks = M // cfg.mc
    threads = num_threads(target)
    return blocks >= threads and blocks % threads == 0


def candidate_int8_configs(M: int, K: int, N: int, target: tvm.target.Target) -> list[Int8Config]:
    """The default tile first, then every tile within the family's register budget, each with
    the default row block: a kernel timed alone cannot see what row blocks save (the next kernels
    reading rows from their own core), only what they cost (every core reading every weight panel;
    a search over them picked whole-M blocks, and the model ran 1.06x slower)."""
    fam = family(target)
    out = [resolve_int8_config(M, K, N, target)]
    for nv in (1, 2, 3, 4, 6):
        for mr in (2, 3, 4, 6, 8, 12, 16):
            if mr * nv > _ACC_BUDGET[fam] or mr * nv < _ACC_BUDGET[fam] // 3:
                continue
            cfg = resolve_int8_config(M, K, N, target, Int8Config(mr, nv))
            if cfg not in out:
                out.append(cfg)
    return out


# ---------------------------------------------------------------------------------------------
# numpy side: packing, weight remedies, references
# ---------------------------------------------------------------------------------------------


def padded_k(K: int, fam: str | None = None) -> int:
    """K rounded up to the family's K step: 64 (one AMX tile row) for ``amx``, else 4."""
    step = 64 if fam == "amx" else 4
    return -(-K // step) * step


def pack_weight_int8(w: np.ndarray, nb: int, k_step: int = 4) -> np.ndarray:
    """``[K, N]`` int8 -> ``[N // nb, Kp / 4, 4 * nb]`` (see the module doc), K zero-padded to a
    multiple of ``k_step`` (64 for AMX)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weight_int8 expects a 2-D int8 weight, got {w.dtype} {w.shape}")
    K, N = w.shape
    if N % nb:
        raise ValueError(f"N={N} is not a multiple of the panel width nb={nb}")
    Kp = -(-K // k_step) * k_step
    if Kp != K:
        w = np.concatenate([w, np.zeros((Kp - K, N), np.int8)])
    return np.ascontiguousarray(
        w.reshape(Kp // 4, 4, N // nb, nb).transpose(2, 0, 3, 1).reshape(N // nb, Kp // 4, 4 * nb))


def column_sums(w: np.ndarray) -> np.ndarray:
    """``sum_k w[k, n]`` in int32: the zero-point correction ``zp * colsum`` of the epilogue."""
    return np.asarray(w, np.int64).sum(axis=0).astype(np.int32)


def fits_7_bits(w: np.ndarray) -> bool:
    """Whether every weight is in ``[-64, 63]``, where ``vpmaddubsw`` cannot saturate."""
    w = np.asarray(w)
    return w.size == 0 or (int(w.min()) >= -64 and int(w.max()) <= 63)


def reduce_range(w: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit weights as 7-bit ones for the AVX2 family: ``round_half_even(w / 2)`` clipped to
    ``[-64, 63]`` and the scale doubled (ONNX Runtime's ``reduce_range`` on an already int8
    weight; it rounds twice and costs more accuracy than quantizing to 7 bits from fp32, what
    ``lamina compile`` does for an AVX2 target, ``quantize-int8{weight-bits=7}``)."""
    w7 = np.clip(np.round(np.asarray(w, np.float32) / 2.0), -64, 63).astype(np.int8)
    return w7, np.asarray(scale, np.float32) * 2.0


def dense_int8_reference(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """The exact int32 accumulators ``Xq @ Wq`` (numpy, int64 then checked into int32)."""
    acc = np.asarray(xq, np.int64) @ np.asarray(wq, np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    return acc.astype(np.int32)


def dense_int8_float_reference(xq: np.ndarray, wq: np.ndarray, zp: int, x_scale: float,
                               w_scale: np.ndarray, bias: np.ndarray | None = None,
                               epilogue: Epilogue = None,
                               residual: np.ndarray | None = None) -> np.ndarray:
    """float64 reference of the dequantizing epilogue."""
    acc = dense_int8_reference(xq, wq).astype(np.int64) - int(zp) * column_sums(wq)
    y = acc.astype(np.float64) * (float(x_scale) * np.asarray(w_scale, np.float64))
    if bias is not None:
        y = y + bias
    y = epilogue_reference(y, epilogue)
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# TIR side
# ---------------------------------------------------------------------------------------------

_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
_PMADDWD = "llvm.x86.avx2.pmadd.wd"


def packing(M: int, K: int, N: int, target: tvm.target.Target,
            config: Int8Config | None = None) -> tuple[int, int]:
    """``(nb, k_step)`` of the packed weight and the quantized activation for this kernel."""
    if kernel_family(M, N, target) == "amx":
        return 16, 64
    cfg = resolve_int8_config(M, K, N, target, config)
    return cfg.nv * lanes32(family(target)), 4


# Software prefetch of the next weight panel: K runs in chunks of this many k4 steps, each chunk
# of each row tile requesting its share of the next panel's cache lines, so the whole panel is in
# flight while this one is computed. Without it a panel's first row tile waits on memory: BERT-base
# (85 MB of INT8 weights, more than the L3) FFN1 with weights cold 1.09x the time with them warm,
# with it 1.01x; at 8 steps the chunked loop cost more than it saved (Zen5, 2 threads).
PREFETCH_KC = 32


def dense_int8_kernel(M: int, K: int, N: int, *, target: tvm.target.Target,
                      config: Int8Config | None = None, bias: bool = False,
                      epilogue: Epilogue = None, residual: bool = False,
                      raw: bool = False, quant_out: bool = False,
                      out_signed: bool = False, bf16_out: bool = False,
                      layer_norm: FusedLayerNorm | None = None,
                      sections: int = 0) -> tirx.PrimFunc:
    """The scheduled INT8 dense kernel.

    Arguments, in order: ``Xq[M, Kp]`` uint8 (Kp = K rounded up to 4), ``Wp`` int8
    (:func:`pack_weight_int8` with ``nb = config.nv * lanes``), ``colsum[N]`` int32,
    ``w_scale[N]`` float32, ``qp[2]`` float32 (activation scale, u8 zero point), ``bias[N]`` if
    ``bias``, ``R[M, N]`` if ``residual``, output ``Y[M, N]`` float32. With ``raw`` the output is
    the int32 accumulator ``Xq @ Wq`` itself and only ``Xq, Wp, Y`` are arguments (tests).

    With ``quant_out`` the kernel also quantizes its result for the next INT8 kernel (the
    consumer's QuantizeLinear, and smooth-quant's per-channel ``Mul`` before it, fused into this
    producer's epilogue): after ``R`` come ``S[N]``, the multiplier ``smooth[j] / scale`` of the
    consumer's quantization, and ``qo[2]`` (``qo[1]`` its zero point), and ``Y`` is the consumer's
    u8 ``Xq[M, N] = saturate(round_half_even(y * S) + zp)`` (int8 shifted by +128 when
    ``out_signed``). A multiply, not ONNX's division: the float result ``y`` already differs from
    ONNX Runtime's by rounding, and a division per element cost more than the whole quantize kernel.

    With ``bf16_out`` ``Y`` is uint16: the bf16 bits of the float result (round to nearest even),
    for a consumer that rounds its input to bf16 anyway (the BF16 attention on a QKV projection).

    With ``layer_norm`` the LayerNorm that reads the result is fused (:func:`layer_norm_fusable`):
    ``G[N]``, ``BT[N]`` (its gamma and beta) come after ``R``, and ``Y`` is the normalised
    float result; with ``layer_norm.quant_out``, ``S`` and ``qo`` follow as above and ``Yq[M, N]``
    u8 is the next INT8 kernel's quantization of ``Y`` (``layernorm.layer_norm_kernel``'s).

    With ``sections`` (and ``config.mc == M``) the N columns are that many equal sections (a
    merged QKV projection's Q, K and V) and thread ``t`` computes the ``t``-th slice of each, all
    rows (:func:`sections_fit`): the heads a consumer's thread ``t`` takes (contiguous chunks, as
    the attention kernels do) are then on its own core.
    """
    check_epilogue(epilogue)
    ln = layer_norm
    ln_q = ln is not None and ln.quant_out
    if ln is not None and (quant_out or bf16_out or raw):
        raise ValueError("a fused LayerNorm writes the float result (and its own quantization)")
    if kernel_family(M, N, target) == "amx":
        if quant_out or bf16_out or ln is not None:
            raise ValueError("the AMX INT8 kernel has no quantized, bf16 or normalised output")
        return amx_dense_int8_kernel(M, K, N, threads=num_threads(target), bias=bias,
                                     epilogue=epilogue, residual=residual, raw=raw)
    fam = family(target)
    cfg = resolve_int8_config(M, K, N, target, config)
    L = lanes32(fam)
    mr, nv = cfg.mr, cfg.nv
    nb = nv * L
    Kp = padded_k(K)
    K4 = Kp // 4
    P = N // nb
    MB = cfg.mc // mr  # row tiles per row block
    MO = M // cfg.mc  # row blocks (one per thread at large M): outermost, then panels
    VB = 4 * L  # weight bytes per vector
    vnni = fam in ("vnni", "amx")
    if quant_out and bf16_out:
        raise ValueError("quant_out and bf16_out are exclusive")
    out_dtype = ("int32" if raw else "uint8" if quant_out else "uint16" if bf16_out
                 else "float32")
    i32v = f"int32x{L}"
    u8v = f"uint8x{VB}"
    i16v = f"int16x{2 * L}"

    epi = dequant_epilogue(bias, epilogue, residual)

    (r0, n0), (r1, n1), (r2, n2) = register_rows(mr, nb * 4)
    # The prefetch (see PREFETCH_KC): CH chunks of KC steps, PF of the next panel's LINES lines
    # (nv lines per k4 step) per chunk of each of the MB row tiles.
    KC = fit_chunk(K4, PREFETCH_KC, 4) or K4
    CH = K4 // KC
    LINES = K4 * nv
    PF = -(-LINES // (MB * CH)) if KC < K4 else 0
    if sections:
        # Thread t computes the t-th column slice of each of the sections, all rows (the tasks,
        # split evenly among the threads, visit the panels in this order).
        threads = num_threads(target)
        if cfg.mc != M or P % (sections * threads):
            raise ValueError(f"{sections} sections of {P} panels of {nb} columns do not split "
                             f"among {threads} threads (or rows split in blocks)")
        PS = P // (sections * threads)

        def panel(q):
            return q // PS % sections * (P // sections) + q // (sections * PS) * PS + q % PS
    else:
        def panel(q):
            return q
    if ln is not None:
        ln_lanes = lanes_for(N, target)
        if ln_lanes == 1:
            raise ValueError(f"a fused LayerNorm needs rows of whole vectors, N={N}")
        ln_row = layer_norm_row(N, ln.eps, ln_lanes, ln_q, ln.out_signed)

    @T.macro
    def zero(acc, rows):
        for i in T.unroll(rows):
            for v in T.unroll(nv):
                acc[i, T.ramp(v * L, 1, L)] = T.broadcast(T.int32(0), L)

    @T.macro
    def step(acc, r, rows, row, p, k4, X, W):
        for i in T.unroll(rows):
            for v in T.unroll(nv):
                if vnni:
                    acc[i, T.ramp(v * L, 1, L)] = T.call_llvm_pure_intrin(
                        i32v, _VPDPBUSD, acc[i, T.ramp(v * L, 1, L)],
                        T.reinterpret(u8v, T.broadcast(T.reinterpret(
                            "int32", X[row + r + i, T.ramp(k4 * 4, 1, 4)]), L)),
                        W[p, k4, T.ramp(v * VB, 1, VB)])
                else:
                    acc[i, T.ramp(v * L, 1, L)] = acc[i, T.ramp(v * L, 1, L)] + (
                        T.call_llvm_pure_intrin(
                            i32v, _PMADDWD,
                            T.call_llvm_pure_intrin(
                                i16v, _PMADDUBSW,
                                T.reinterpret(u8v, T.broadcast(T.reinterpret(
                                    "int32", X[row + r + i, T.ramp(k4 * 4, 1, 4)]), L)),
                                W[p, k4, T.ramp(v * VB, 1, VB)]),
                            T.broadcast(T.int16(1), 2 * L)))

    @T.macro
    def store(acc, r, rows, row, p, CS, WS, QP, B, R, S, QO, Y):
        for i in T.unroll(rows):
            for v in T.unroll(nv):  # one register of columns at a time (no spills)
                # (c, L), the vectorized lane, lets the epilogue use in-register tables
                # (common.gelu_table).
                for c in T.vectorized(L):
                    if raw:
                        Y[row + r + i, p * nb + v * L + c] = acc[i, v * L + c]
                    elif quant_out:
                        Y[row + r + i, p * nb + v * L + c] = saturate_u8(
                            epi(row + r + i, p * nb + v * L + c, acc[i, v * L + c], CS, WS, QP,
                                B, R, (c, L)) * S[p * nb + v * L + c], QO[1], out_signed)
                    elif bf16_out:
                        Y[row + r + i, p * nb + v * L + c] = _bf16_bits(T.reinterpret(
                            "uint32", epi(row + r + i, p * nb + v * L + c, acc[i, v * L + c],
                                          CS, WS, QP, B, R, (c, L))))
                    else:
                        Y[row + r + i, p * nb + v * L + c] = epi(
                            row + r + i, p * nb + v * L + c, acc[i, v * L + c], CS, WS, QP, B, R,
                            (c, L))

    @T.macro
    def tile_task(task, X, W, CS, WS, QP, B, R, S, QO, Y):
        # The register tile in up to three row groups (see common.register_rows).
        acc0 = T.alloc_buffer((max(n0, 1), nb), "int32")
        acc1 = T.alloc_buffer((max(n1, 1), nb), "int32")
        acc2 = T.alloc_buffer((max(n2, 1), nb), "int32")
        p = T.bind(panel(task // MB % P))
        row = T.bind(task // (P * MB) * cfg.mc + task % MB * mr)
        zero(acc0, n0)
        zero(acc1, n1)
        zero(acc2, n2)
        for kc in range(CH):
            for f in T.unroll(PF):
                T.evaluate(panel_share(W, panel((task // MB + 1) % P), task % MB * CH + kc, f,
                                       PF, LINES, nv, VB))
            for k4 in range(kc * KC, kc * KC + KC):
                step(acc0, r0, n0, row, p, k4, X, W)
                step(acc1, r1, n1, row, p, k4, X, W)
                step(acc2, r2, n2, row, p, k4, X, W)
        store(acc0, r0, n0, row, p, CS, WS, QP, B, R, S, QO, Y)
        store(acc1, r1, n1, row, p, CS, WS, QP, B, R, S, QO, Y)
        store(acc2, r2, n2, row, p, CS, WS, QP, B, R, S, QO, Y)

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, Kp), "uint8"), W: T.Buffer((P, K4, 4 * nb), "int8"),
             CS: T.Buffer((N,), "int32"), WS: T.Buffer((N,), "float32"),
             QP: T.Buffer((2,), "float32"), B: T.Buffer((N,), "float32"),
             R: T.Buffer((M, N), "float32"), G: T.Buffer((N,), "float32"),
             BT: T.Buffer((N,), "float32"), S: T.Buffer((N,), "float32"),
             QO: T.Buffer((2,), "float32"), Y: T.Buffer((M, N), out_dtype),
             Yq: T.Buffer((M, N), "uint8")):
        T.func_attr({"tirx.noalias": True})
        if ln is None:
            for task in T.parallel(MO * P * MB):
                tile_task(task, X, W, CS, WS, QP, B, R, S, QO, Y)
        else:
            # Each row block's tasks, then the LayerNorm of its rows, in place, on the core that
            # has just written them.
            for blk in T.parallel(MO):
                for t in range(P * MB):
                    tile_task(blk * (P * MB) + t, X, W, CS, WS, QP, B, R, S, QO, Y)
                for r in range(cfg.mc):
                    ln_row(Y, G, BT, S, QO, Y, Yq, blk * cfg.mc + r)

    keep = ["X", "W", "Y"] if raw else (["X", "W", "CS", "WS", "QP"] + (["B"] if bias else [])
                                        + (["R"] if residual else [])
                                        + (["G", "BT"] if ln is not None else [])
                                        + (["S", "QO"] if quant_out or ln_q else []) + ["Y"]
                                        + (["Yq"] if ln_q else []))
    return finish_kernel(root_block(keep_params(func, keep)))

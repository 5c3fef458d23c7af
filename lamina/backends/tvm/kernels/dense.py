"""Hand-scheduled fp32 dense and batched matmul kernels for x86 (AVX-512 / AVX2 / generic).

``Y[M, N] = epilogue(X[M, K] @ W[K, N] + bias[N]) + R[M, N]`` with the weight packed at compile
time into panels ``Wp[N // nb, K, nb]`` (``pack_weight``), so that one register tile reads one
contiguous ``K x nb`` panel.

Schedule (BLIS-like, one register tile of ``mr x nb`` accumulators)::

    parallel for (mo, no) in (M / mc) x (N / nb):      # cache block of mc rows x one panel
      for mt in mc / mr:                              # register tile
        acc[mr, nb] = 0                               # local buffer, promoted to registers
        for k in K:
          for i in unroll(mr):                        # broadcast X[i, k]
            acc[i, :] += X[i, k] * Wp[no, k, :]       # vector FMA, nb lanes
        Y[tile] = epilogue(acc + bias) + R            # vectorized epilogue, written once

The accumulator tile is fully unrolled and vectorized, so LLVM keeps it in registers (``mr * nb /
lanes`` vector registers: AVX-512 default 8 x 32 = 16 zmm, AVX2 default 6 x 16 = 12 ymm).
In a model the weights stream from DRAM on every call (MiniLM's 42 MB exceed L3), and the first row
tile of each panel would wait on memory; with ``prefetch_kc`` (default 64) K runs in chunks and each
chunk issues software prefetches for its share of the *next* panel, which brought the kernel with
cold weights from 355 to 328 us (MiniLM FFN1, AVX-512, 2 threads; AVX2 693 -> 644 us). Tile
sizes live in :class:`DenseConfig`; :func:`default_config` picks them per ISA and
:func:`candidate_configs` lists the small grid that ``lamina.backends.tvm.tuning.kernel_search``
measures per shape.

How the converter emits a dense layer in Relax (weights packed by numpy at compile time)::

    cfg = tuned_or_default_config(M, K, N, target)          # DenseConfig
    func = dense_kernel(M, K, N, bias=True, epilogue="gelu_erf", residual=False,
                        target=target, config=cfg)
    gv = bb.add_func(func, "lamina_dense_128x384x1536_gelu")
    wp = relax.const(pack_weight(w_kn, cfg.nb))   # or a param holding the packed array
    x2 = bb.emit(relax.op.reshape(x, (M, K)))      # [b, s, K] -> [b*s, K] (free)
    y = bb.emit(relax.call_tir(gv, [x2, wp, bias], relax.TensorType((M, N), "float32")))

The argument order of the returned PrimFunc is ``X, Wp, [bias], [R], Y`` (see
:func:`dense_kernel`). Functions carry ``tirx.is_scheduled`` so MetaSchedule and dlight leave
them alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import tvm
from tvm import te, tirx

from .common import (
    Epilogue,
    apply_epilogue,
    check_epilogue,
    epilogue_reference,
    f32,
    finish_kernel,
    fit_chunk,
)
from .isa import isa_of, num_threads


@dataclass(frozen=True)
class DenseConfig:
    """Tile sizes of the dense / batched matmul schedule (the tunable knobs).

    mr: rows of the register tile (activations broadcast per row).
    nb: columns of the register tile = packed weight panel width (a multiple of the vector lanes).
    mc: rows per cache block (a multiple of mr); the X block ``mc x K`` stays in L2 while the
        thread walks its panels. 0 means all of M.
    n_inner: panels walked inside one parallel chunk (1 = parallelise over every panel).
    unroll_k: unroll factor of the K loop (1 = none).
    prefetch_kc: software prefetch of the next weight panel, issued once per chunk of this many k
        steps (each chunk fetches its share of the panel, so the panel is in cache when the thread
        reaches it); -1 = the default (64), 0 = off. The weights stream from DRAM on every call in
        a real model (MiniLM's are 42 MB, more than L3): without it the first row tile of each panel
        waits on memory, about 10% of the kernel's time.
    """

    mr: int = 8
    nb: int = 32
    mc: int = 0
    n_inner: int = 1
    unroll_k: int = 1
    prefetch_kc: int = -1

    def key(self) -> str:
        return (f"mr{self.mr}_nb{self.nb}_mc{self.mc}_ni{self.n_inner}_uk{self.unroll_k}"
                f"_pf{self.prefetch_kc}")

    def to_dict(self) -> dict[str, int]:
        return {"mr": self.mr, "nb": self.nb, "mc": self.mc, "n_inner": self.n_inner,
                "unroll_k": self.unroll_k, "prefetch_kc": self.prefetch_kc}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> DenseConfig:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


# Default register tiles per ISA: accumulators + one B vector per lane group + a broadcast must fit
# the register file (32 zmm / 16 ymm).
_DEFAULT_TILE: dict[str, tuple[int, int]] = {"avx512": (8, 32), "avx2": (6, 16), "generic": (4, 8)}
def _fit_nb(n: int, nb: int) -> int:
    """Largest panel width <= nb dividing n (powers of two first)."""
    cand = nb
    while cand > 1 and n % cand:
        cand //= 2
    if n % cand == 0:
        return cand
    return 1


PREFETCH_KC = 64


def _fit_prefetch(K: int, kc: int) -> int:
    """The largest chunk <= kc dividing K, or 0 (off) when K does not split into two chunks of at
    least 16 steps."""
    kc = PREFETCH_KC if kc < 0 else kc
    return fit_chunk(K, kc, 16) if kc > 0 else 0


def _fix(cfg: DenseConfig, M: int, N: int, K: int = 0) -> DenseConfig:
    nb = _fit_nb(N, cfg.nb)
    mr = max(1, min(cfg.mr, M))
    mc = cfg.mc if cfg.mc > 0 else M
    mc = max(mr, min(mc, M))
    mc = (mc // mr) * mr if mc < M else M
    n_panels = N // nb
    n_inner = max(1, min(cfg.n_inner, n_panels))
    while n_panels % n_inner:
        n_inner -= 1
    unroll_k = max(1, cfg.unroll_k)
    kc = _fit_prefetch(K, cfg.prefetch_kc) if n_inner == 1 and unroll_k == 1 else 0
    return replace(cfg, nb=nb, mr=mr, mc=mc, n_inner=n_inner, unroll_k=unroll_k, prefetch_kc=kc)


def default_config(M: int, K: int, N: int, target: tvm.target.Target) -> DenseConfig:
    """The per-ISA default tile for an ``M x K x N`` dense (no measurement).

    Measured on Zen4/Zen5 (2 threads): AVX-512 8 x 32 was within a few percent of the best tile on
    every MiniLM / BERT-base shape at M = 128 and M = 1024; a cache block that does not divide M
    (predicated tail blocks) costs up to 2x, so M is split only when the panels alone cannot
    feed every thread.
    """
    isa = isa_of(target)
    mr, nb = _DEFAULT_TILE[isa]
    threads = num_threads(target)
    mc = M
    panels = N // _fit_nb(N, nb)
    if panels < 4 * threads and M >= 4 * mr:
        mc = _divisor_block(M, mr, max(mr, M // 4))
    return _fix(DenseConfig(mr=mr, nb=nb, mc=mc), M, N, K)


def _divisor_block(M: int, mr: int, target_mc: int) -> int:
    """A cache block near ``target_mc`` that divides M and is a multiple of mr, if one exists."""
    best = M
    for mc in range(mr, M + 1, mr):
        if M % mc == 0 and abs(mc - target_mc) < abs(best - target_mc):
            best = mc
    return best


def candidate_configs(M: int, K: int, N: int, target: tvm.target.Target) -> list[DenseConfig]:
    """A small grid of tiles worth measuring for this shape and ISA (the default first)."""
    isa = isa_of(target)
    if isa == "avx512":
        tiles = [(6, 64), (8, 32), (12, 32), (14, 32), (16, 16), (4, 64), (8, 64)]
    elif isa == "avx2":
        tiles = [(6, 16), (4, 24), (3, 32), (8, 8), (12, 8), (4, 16), (2, 32)]
    else:
        tiles = [(4, 8), (6, 8), (8, 4)]
    default = default_config(M, K, N, target)
    out: list[DenseConfig] = [default]
    for kc in (0, 2 * PREFETCH_KC):  # the default tile without prefetch, and with longer chunks
        cfg = _fix(replace(default, prefetch_kc=kc), M, N, K)
        if cfg not in out:
            out.append(cfg)
    for mr, nb in tiles:
        for mc in sorted({M, _divisor_block(M, mr, 128), _divisor_block(M, mr, M // 4)}):
            cfg = _fix(DenseConfig(mr=mr, nb=nb, mc=mc), M, N, K)
            if cfg not in out:
                out.append(cfg)
    return out


# ---------------------------------------------------------------------------------------------
# numpy side: weight packing and reference
# ---------------------------------------------------------------------------------------------


def packed_weight_shape(K: int, N: int, nb: int) -> tuple[int, int, int]:
    """Shape of ``pack_weight``'s result: ``(N // nb, K, nb)``."""
    if N % nb:
        raise ValueError(f"N={N} is not a multiple of the panel width nb={nb}")
    return (N // nb, K, nb)


def pack_weight(w: np.ndarray, nb: int, layout: Literal["KN", "NK"] = "KN") -> np.ndarray:
    """Pack a dense weight into panels ``[N // nb, K, nb]`` (C-contiguous float32).

    ``layout="KN"`` takes an ONNX MatMul weight ``[K, N]``; ``"NK"`` takes a Gemm ``transB=1`` /
    PyTorch Linear weight ``[N, K]``.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"pack_weight expects a 2-D weight, got shape {w.shape}")
    if layout == "NK":
        w = w.T
    elif layout != "KN":
        raise ValueError(f"layout must be 'KN' or 'NK', got {layout!r}")
    K, N = w.shape
    packed_weight_shape(K, N, nb)
    return np.ascontiguousarray(w.reshape(K, N // nb, nb).transpose(1, 0, 2))


def unpack_weight(wp: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_weight(w, nb, "KN")``: ``[N // nb, K, nb] -> [K, N]``."""
    nblk, K, nb = wp.shape
    return np.ascontiguousarray(wp.transpose(1, 0, 2).reshape(K, nblk * nb))


def dense_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                    epilogue: Epilogue = None, residual: np.ndarray | None = None) -> np.ndarray:
    """numpy reference of :func:`dense_kernel` (w in ``[K, N]``), computed in float64."""
    y = x.astype(np.float64) @ w.astype(np.float64)
    if bias is not None:
        y = y + bias
    y = epilogue_reference(y, epilogue)
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# TIR side
# ---------------------------------------------------------------------------------------------


def _schedule(sch: tvm.s_tir.Schedule, cfg: DenseConfig, batched: bool
              ) -> tuple[object, object, object] | None:
    """Apply the register-tiled schedule to blocks ``matmul`` / ``epilogue`` (see module doc).

    With ``cfg.prefetch_kc`` the K loop is split into chunks; returns the loops the prefetch needs
    (parallel work item, row tile, K chunk), else None."""
    blk = sch.get_sblock("matmul")
    loops = sch.get_loops(blk)
    if batched:
        b, m, n, k = loops
    else:
        m, n, k = loops
        b = None
    mo, mi = sch.split(m, [None, cfg.mc])
    mt, mii = sch.split(mi, [None, cfg.mr])
    no, ni = sch.split(n, [None, cfg.nb])
    if cfg.n_inner > 1:
        no, nin = sch.split(no, [None, cfg.n_inner])
        sch.reorder(mo, no, nin, mt, k, mii, ni)
    else:
        nin = None
        sch.reorder(mo, no, mt, k, mii, ni)
    outer = [b, mo, no] if b is not None else [mo, no]
    item = sch.fuse(*outer)
    sch.parallel(item)
    epi = sch.get_sblock("epilogue")
    sch.reverse_compute_at(epi, mt)
    sch.set_scope(blk, 0, "local")
    chunk = None
    if cfg.prefetch_kc and not batched:
        # The accumulators stay in registers within a chunk; between chunks LLVM stores and
        # reloads them (16 vectors per chunk of 64 steps), the price of a call-free inner loop.
        chunk, _ki = sch.split(k, [None, cfg.prefetch_kc])
        k = chunk
    elif cfg.unroll_k > 1:
        ko, _ki = sch.split(k, [None, cfg.unroll_k])
        sch.annotate(ko, "pragma_auto_unroll_max_step", cfg.unroll_k * cfg.mr * 2)
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        k = ko
    sch.unroll(mii)
    sch.vectorize(ni)
    init = sch.decompose_reduction(blk, k)
    il = sch.get_loops(init)
    sch.unroll(il[-2])
    sch.vectorize(il[-1])
    el = sch.get_loops(epi)
    sch.unroll(el[-2])
    sch.vectorize(el[-1])
    return (item, mt, chunk) if chunk is not None else None


def _add_panel_prefetch(sch: tvm.s_tir.Schedule, loops: tuple[object, object, object],
                        cfg: DenseConfig, M: int, K: int, N: int) -> tirx.PrimFunc:
    """Each K chunk of each row tile prefetches its share of the next work item's weight panel,
    cache line by cache line, so the whole panel is requested while the current one is computed."""
    from ._prefetch import prefetch, prepend_to_loop

    func = sch.mod["main"]
    item, mt, chunk = (sch.get(rv).loop_var for rv in loops)  # type: ignore[arg-type]
    weight = next(r.source for r in sch.get(sch.get_sblock("matmul_update")).reads
                  if r.source.name == "W_packed")
    panels = N // cfg.nb
    lines = -(-K * cfg.nb // 16)  # 64-byte lines per panel
    chunks = K // cfg.prefetch_kc
    per = -(-lines // ((cfg.mc // cfg.mr) * chunks))

    def make() -> list[tirx.Stmt]:
        nxt = tirx.floormod(item + 1, panels)
        out = []
        for p in range(per):
            flat = tirx.floormod((mt * chunks + chunk) * per + p, lines) * 16
            out.append(prefetch(weight, [nxt, tirx.floordiv(flat, cfg.nb),
                                         tirx.floormod(flat, cfg.nb)]))
        return out

    return prepend_to_loop(func, chunk, make)


def dense_compute(M: int, K: int, N: int, nb: int, *, bias: bool, epilogue: Epilogue,
                  residual: bool) -> tirx.PrimFunc:
    """The unscheduled PrimFunc (args ``X, Wp, [bias], [R], Y``); blocks ``matmul``,
    ``epilogue``."""
    check_epilogue(epilogue)
    X = te.placeholder((M, K), "float32", "X")
    W = te.placeholder(packed_weight_shape(K, N, nb), "float32", "W_packed")
    k = te.reduce_axis((0, K), "k")
    C = te.compute(
        (M, N), lambda i, j: te.sum(X[i, k] * W[j // nb, k, j % nb], axis=k), name="matmul"
    )
    args = [X, W]
    B = R = None
    if bias:
        B = te.placeholder((N,), "float32", "bias")
        args.append(B)
    if residual:
        R = te.placeholder((M, N), "float32", "residual")
        args.append(R)

    def epi(i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        v = C[i, j]
        if B is not None:
            v = v + B[j]
        v = apply_epilogue(v, epilogue)
        if R is not None:
            v = v + R[i, j]
        return v

    Y = te.compute((M, N), epi, name="epilogue")
    return te.create_prim_func([*args, Y])


def dense_kernel(
    M: int,
    K: int,
    N: int,
    *,
    bias: bool = False,
    epilogue: Epilogue = None,
    residual: bool = False,
    target: tvm.target.Target,
    config: DenseConfig | None = None,
) -> tirx.PrimFunc:
    """Scheduled fp32 dense ``Y = epilogue(X @ W + bias) + R`` for a packed weight.

    Arguments of the PrimFunc, in order: ``X[M, K]``, ``W_packed[N // nb, K, nb]``
    (``pack_weight(w, config.nb)``), ``bias[N]`` if ``bias``, ``R[M, N]`` if ``residual``, and the
    output ``Y[M, N]`` (destination-passing, as ``relax.call_tir`` expects). ``config.nb`` may be
    lowered to divide N: read the final tile with :func:`resolve_config` before packing.
    """
    cfg = resolve_config(M, K, N, target, config)
    func = dense_compute(M, K, N, cfg.nb, bias=bias, epilogue=epilogue, residual=residual)
    sch = tvm.s_tir.Schedule(func)
    loops = _schedule(sch, cfg, batched=False)
    if loops is None:
        return finish_kernel(sch.mod["main"])
    return finish_kernel(_add_panel_prefetch(sch, loops, cfg, M, K, N))


def resolve_config(
    M: int, K: int, N: int, target: tvm.target.Target, config: DenseConfig | None = None
) -> DenseConfig:
    """The tile :func:`dense_kernel` will really use (defaults filled, sizes fitted to the
    shape)."""
    return default_config(M, K, N, target) if config is None else _fix(config, M, N, K)


# ---------------------------------------------------------------------------------------------
# Batched matmul (attention): both operands are activations, no packing.
# ---------------------------------------------------------------------------------------------


def default_batch_config(
    batch: int, M: int, K: int, N: int, target: tvm.target.Target
) -> DenseConfig:
    """Default tile for ``[batch, M, K] x [batch, K, N]``."""
    isa = isa_of(target)
    mr, nb = {"avx512": (6, 32), "avx2": (6, 16), "generic": (4, 8)}[isa]
    return _fix(DenseConfig(mr=mr, nb=nb, mc=M), M, N)


def batch_matmul_kernel(
    batch: int,
    M: int,
    K: int,
    N: int,
    *,
    scale: float | None = None,
    target: tvm.target.Target,
    config: DenseConfig | None = None,
) -> tirx.PrimFunc:
    """Scheduled ``C[b, M, N] = scale * (A[b, M, K] @ B[b, K, N])`` (attention QK^T and PV).

    Arguments: ``A``, ``B`` (natural layouts, B's rows read as nb-wide vectors) and output ``C``.
    For QK^T pass K already transposed (``[b*h, 64, s]``, as the exporters emit it).
    """
    cfg = default_batch_config(batch, M, K, N, target) if config is None else _fix(config, M, N)
    A = te.placeholder((batch, M, K), "float32", "A")
    B = te.placeholder((batch, K, N), "float32", "B")
    k = te.reduce_axis((0, K), "k")
    C = te.compute(
        (batch, M, N), lambda b, i, j: te.sum(A[b, i, k] * B[b, k, j], axis=k), name="matmul"
    )
    if scale is None:
        Y = te.compute((batch, M, N), lambda b, i, j: C[b, i, j], name="epilogue")
    else:
        Y = te.compute((batch, M, N), lambda b, i, j: C[b, i, j] * f32(scale), name="epilogue")
    sch = tvm.s_tir.Schedule(te.create_prim_func([A, B, Y]))
    _schedule(sch, cfg, batched=True)
    return finish_kernel(sch.mod["main"])

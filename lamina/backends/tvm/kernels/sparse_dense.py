"""Block-sparse fp32 dense kernel for constant pruned weights: ``Y = epilogue(X @ W + bias) + R``.

Format (built by numpy at compile time, :func:`encode_blocks`). ``W[K, N]`` is cut into *blocks of R
consecutive outputs of one input row* (``Rx1`` in the ``[out, in]`` naming of
``lamina.passes.sparsity._analysis``: ``4x1`` = ``W[k, 4g:4g+4]``). Output group ``g`` (columns
``[gR, gR+R)``) keeps only its nonzero blocks, in CSR form::

    indptr[G + 1]   int32   blocks of group g are indptr[g] .. indptr[g+1]
    kidx[nnzb]      int32   their input row k
    data[nnzb, R]   float32 their R weights

``R = 1`` is the unstructured case (CSR over outputs). A weight pruned with 4x1 blocks has exactly
its nonzero blocks stored; an unstructured one may be stored with ``R = 4`` too (zeros inside stored
blocks are multiplied), which the cost model picks when fewer, fuller blocks win.

Why this layout: the kernel vectorises over *rows of X* (tokens), not over N. With ``X^T[K, mc]``
(each task transposes its tokens once) a block is one vector load per ``lanes`` tokens, reused by
the R weights of the block; a register tile of ``R x mc`` accumulators (AVX-512, R = 4: 4 x 64 = 16
zmm) takes ``mc / lanes`` loads, R broadcasts and ``R * mc / lanes`` FMAs per block, the ratio of
the dense kernel's 8 x 32 tile. Vectorising over N instead would need blocks 16-32 outputs wide to
fill a vector, a much coarser pattern than the 4x1 blocks pruning keeps accuracy with. Schedule::

    parallel for (mo, chunk):                               # mc tokens x a chunk of output groups
      XT[k, :] = X[mo*mc : mo*mc+mc, k]                     # this task's tokens, transposed
      for g in chunk:
        acc[R, mc] = 0                                      # registers
        for b in indptr[g] .. indptr[g+1]:                  # nonzero blocks (data-dependent trip)
          for j in unroll(R): acc[j, :] += data[b, j] * XT[kidx[b], :]
        acc = epilogue(acc + bias[gR:gR+R])                 # vectorised over tokens
        Y[mo*mc + m, gR + j] = acc[j, m] (+ R[...])         # R contiguous floats per token

With ``R = 1`` (unstructured) one output group is one column of ``Y``: storing it directly would
write one float per token into a different cache line. The kernel instead stages ``lanes`` groups'
columns in a small transposed buffer (``stage[SG, mc]``, in L1) and writes them out as ``lanes``
contiguous floats per token; that made the R = 1 kernel 3.5x faster (768 x 3072 at 10% density:
from 0.74x the dense kernel to 2.7x).

One parallel region only: a second (a shared transpose) costs a barrier, which on a busy machine
waits for a descheduled thread (it tripled the kernel's time under load). Measured (AVX-512 Zen5, 2
threads, shared machine, ratios from interleaved runs): 128 x 384 x 1536 with 90% 4x1 sparsity
2.6-3.1x faster than the dense kernel, 768 x 3072 2.6-2.8x; 90% unstructured as R = 1 (staged
stores) 2.7x at 768 x 3072 (``sparse_calibrate``'s timings).

The nonzero structure of each weight is fixed at compile time: the kernel is generated for its exact
``nnzb`` and the index arrays are constants of the artifact (a params entry beside the data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from .common import EPILOGUES, Epilogue, apply_epilogue, finish_kernel
from .isa import isa_of, lanes, num_threads

# Accumulator vector registers a tile may use (of 32 zmm / 16 ymm / 16 xmm).
_ACC_REGS = {"avx512": 16, "avx2": 12, "generic": 8}


@dataclass(frozen=True)
class SparseWeight:
    """A weight in the block format above (see the module doc)."""

    K: int
    N: int
    R: int
    indptr: np.ndarray   # int32 [N / R + 1]
    kidx: np.ndarray     # int32 [nnzb]
    data: np.ndarray     # float32 [nnzb, R]

    @property
    def nnzb(self) -> int:
        return int(self.kidx.size)

    @property
    def density(self) -> float:
        """Stored blocks over all blocks (the fraction of the dense FLOPs the kernel does)."""
        return self.nnzb / max(1, self.K * (self.N // self.R))

    def to_dense(self) -> np.ndarray:
        w = np.zeros((self.K, self.N), np.float32)
        for g in range(self.N // self.R):
            lo, hi = int(self.indptr[g]), int(self.indptr[g + 1])
            w[self.kidx[lo:hi], g * self.R:(g + 1) * self.R] = self.data[lo:hi]
        return w


def encode_blocks(w_kn: np.ndarray, R: int) -> SparseWeight:
    """Encode ``W[K, N]`` with blocks of ``R`` outputs x 1 input (keeps every block with a
    nonzero)."""
    w = np.asarray(w_kn, np.float32)
    K, N = w.shape
    if N % R:
        raise ValueError(f"N={N} is not a multiple of the block width R={R}")
    blocks = w.reshape(K, N // R, R).transpose(1, 0, 2)  # [G, K, R]
    nz = (blocks != 0).any(axis=2)  # [G, K]
    counts = nz.sum(axis=1)
    indptr = np.zeros(N // R + 1, np.int32)
    indptr[1:] = np.cumsum(counts)
    g_idx, k_idx = np.nonzero(nz)  # row-major: grouped by g, k ascending
    data = np.ascontiguousarray(blocks[g_idx, k_idx], np.float32)
    if data.size == 0:  # keep the buffers non-empty (an all-zero weight): one explicit zero block
        k_idx = np.zeros(1, np.int64)
        data = np.zeros((1, R), np.float32)
        indptr[1:] = 1
    return SparseWeight(K, N, R, indptr, np.ascontiguousarray(k_idx, np.int32), data)


def _divisor_at_most(n: int, cap: int) -> int:
    for v in range(max(1, min(cap, n)), 0, -1):
        if n % v == 0:
            return v
    return 1


@dataclass(frozen=True)
class SparseConfig:
    """Tiles of the block-sparse kernel (0 = the default): ``mc`` tokens per task (whole vectors,
    at most the register budget), ``chunks`` chunks of output groups per token tile (the tasks are
    token tiles x chunks). Searched per shape and density when tuning
    (``tuning.kernel_search.best_sparse_config``)."""

    mc: int = 0
    chunks: int = 0

    def key(self) -> str:
        return f"mc{self.mc}_c{self.chunks}"

    def to_dict(self) -> dict[str, int]:
        return {"mc": self.mc, "chunks": self.chunks}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> SparseConfig:
        return cls(**{k: int(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_sparse_config(M: int, G: int, R: int, target: tvm.target.Target,
                          config: SparseConfig | None = None) -> SparseConfig:
    """The tiles the kernel really uses for ``M`` tokens and ``G`` output groups of ``R``: a token
    tile that divides M in whole vectors within the register budget (else the default), chunks
    dividing G (default: at least 2 tasks a thread)."""
    default_mc = token_tile(M, R, target)
    mc = default_mc
    if config is not None and config.mc:
        nl = lanes(isa_of(target))
        if (config.mc <= default_mc and M % config.mc == 0
                and (config.mc % nl == 0 or config.mc == M)):
            mc = config.mc
    n_mo = M // mc
    if config is not None and config.chunks:
        chunks = _divisor_at_most(G, config.chunks)
    else:
        chunks = _divisor_at_most(G, max(1, -(-2 * num_threads(target) // n_mo)))
    return SparseConfig(mc, chunks)


def candidate_sparse_configs(M: int, G: int, R: int,
                             target: tvm.target.Target) -> list[SparseConfig]:
    """The default first, then half token tiles and 1-8 tasks a thread."""
    default = resolve_sparse_config(M, G, R, target)
    threads = num_threads(target)
    out = [default]
    for mc in (default.mc, default.mc // 2):
        if mc < 1:
            continue
        n_mo = M // mc if M % mc == 0 else 1
        for per_thread in (1, 2, 4, 8):
            cfg = resolve_sparse_config(M, G, R, target, SparseConfig(
                mc, max(1, -(-per_thread * threads // n_mo))))
            if cfg not in out:
                out.append(cfg)
    return out


def token_tile(M: int, R: int, target: tvm.target.Target) -> int:
    """Tokens per register tile: the most whole vectors within the ISA's accumulator budget that
    divide M (else M itself when it is small)."""
    isa = isa_of(target)
    nl = lanes(isa)
    vecs = max(1, _ACC_REGS[isa] // R)
    for mc in range(min(M, vecs * nl), 0, -1):
        if M % mc == 0 and (mc % nl == 0 or mc == M):
            return mc
    return M if M <= vecs * nl else math.gcd(M, vecs * nl)


def sparse_dense_kernel(
    M: int,
    sw: SparseWeight,
    *,
    epilogue: Epilogue = None,
    residual: bool = False,
    target: tvm.target.Target,
    config: SparseConfig | None = None,
) -> tirx.PrimFunc:
    """The kernel for ``X[M, K]`` and the constant pattern of ``sw`` (tiles: ``config``, see
    :func:`resolve_sparse_config`).

    Arguments, in order: ``X[M, K]``, ``indptr``, ``kidx``, ``data`` (``sw``'s arrays), ``bias[N]``
    (zeros for a layer without one), ``R[M, N]`` if ``residual``, and the output ``Y[M, N]``
    (destination-passing).
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; expected one of {EPILOGUES}")
    K, N, Rb, nnzb = sw.K, sw.N, sw.R, sw.nnzb
    G = N // Rb
    # Tasks: token tiles x chunks of output groups, by default at least 2 per thread (the
    # transposes a token tile repeats per chunk are K * mc copies, small next to a chunk's FMAs).
    cfg = resolve_sparse_config(M, G, Rb, target, config)
    mc, chunks = cfg.mc, cfg.chunks
    n_mo = M // mc
    kc = 16 if K % 16 == 0 else 1
    halves = 2 if mc % 2 == 0 and Rb * mc * 4 >= 1024 else 1
    mh = mc // halves

    def epi(v: tirx.PrimExpr) -> tirx.PrimExpr:
        return apply_epilogue(v, epilogue)

    # One body, two signatures (with / without the residual input); the bias is always an argument
    # (zeros when the layer has none: N floats).
    @T.macro
    def store(acc, half, Y, B, mo, g, res_add):
        tile = T.alloc_buffer((Rb, mh), "float32", scope="local")
        for j in T.unroll(Rb):
            for m in T.vectorized(mh):
                tile[j, m] = epi(acc[j, m] + B[g * Rb + j])
        for m in range(mh):
            for j in T.unroll(Rb):
                Y[mo * mc + half * mh + m, g * Rb + j] = res_add(
                    tile[j, m], mo * mc + half * mh + m, g * Rb + j
                )

    # One parallel region (a second one costs a barrier, which on a busy machine means waiting for a
    # descheduled thread): each task transposes its mc tokens of X into its own XT and runs G /
    # chunks
    # output groups on them. The register tile is two local buffers of Rb x mh: TVM puts a local
    # buffer on the stack (where LLVM promotes it to registers) only below 1 KB; a 4 x 64 tile would
    # go
    # to a heap workspace and every FMA would store its accumulator back.
    # R = 1 (unstructured): storing one output column per group would be one scattered float per
    # token (a cache line each); instead SG groups' columns are staged (transposed, in L1) and
    # written as SG contiguous floats per token.
    per_chunk = G // chunks
    SG = lanes(isa_of(target))
    staged = Rb == 1 and per_chunk % SG == 0

    @T.macro
    def body_staged(X, indptr, kidx, data, B, Y, res_add):
        for task in T.parallel(n_mo * chunks):
            XT = T.alloc_buffer((K, mc), "float32")
            stage = T.alloc_buffer((SG, mc), "float32")
            for ko in range(K // kc):
                for m in range(mc):
                    for kk in T.vectorized(kc):
                        XT[ko * kc + kk, m] = X[task // chunks * mc + m, ko * kc + kk]
            for gb in range(per_chunk // SG):
                for jj in range(SG):
                    acc0 = T.alloc_buffer((1, mh), "float32", scope="local")
                    acc1 = T.alloc_buffer((1, mh), "float32", scope="local")
                    for m in T.vectorized(mh):
                        acc0[0, m] = T.float32(0)
                        acc1[0, m] = T.float32(0)
                    for b in range(indptr[task % chunks * per_chunk + gb * SG + jj],
                                   indptr[task % chunks * per_chunk + gb * SG + jj + 1]):
                        for m in T.vectorized(mh):
                            acc0[0, m] = acc0[0, m] + data[b, 0] * XT[kidx[b], m]
                        if halves == 2:
                            for m in T.vectorized(mh):
                                acc1[0, m] = acc1[0, m] + data[b, 0] * XT[kidx[b], mh + m]
                    for m in T.vectorized(mh):
                        stage[jj, m] = epi(acc0[0, m]
                                           + B[task % chunks * per_chunk + gb * SG + jj])
                    if halves == 2:
                        for m in T.vectorized(mh):
                            stage[jj, mh + m] = epi(acc1[0, m]
                                                    + B[task % chunks * per_chunk + gb * SG + jj])
                for m in range(mc):
                    for jj in T.vectorized(SG):
                        Y[task // chunks * mc + m, task % chunks * per_chunk + gb * SG + jj] = (
                            res_add(stage[jj, m], task // chunks * mc + m,
                                    task % chunks * per_chunk + gb * SG + jj))

    @T.macro
    def body(X, indptr, kidx, data, B, Y, res_add):
        for task in T.parallel(n_mo * chunks):
            XT = T.alloc_buffer((K, mc), "float32")
            for ko in range(K // kc):
                for m in range(mc):
                    for kk in T.vectorized(kc):
                        XT[ko * kc + kk, m] = X[task // chunks * mc + m, ko * kc + kk]
            for gi in range(G // chunks):
                acc0 = T.alloc_buffer((Rb, mh), "float32", scope="local")
                acc1 = T.alloc_buffer((Rb, mh), "float32", scope="local")
                for j in T.unroll(Rb):
                    for m in T.vectorized(mh):
                        acc0[j, m] = T.float32(0)
                        acc1[j, m] = T.float32(0)
                for b in range(
                    indptr[task % chunks * (G // chunks) + gi],
                    indptr[task % chunks * (G // chunks) + gi + 1],
                ):
                    for j in T.unroll(Rb):
                        for m in T.vectorized(mh):
                            acc0[j, m] = acc0[j, m] + data[b, j] * XT[kidx[b], m]
                        if halves == 2:
                            for m in T.vectorized(mh):
                                acc1[j, m] = acc1[j, m] + data[b, j] * XT[kidx[b], mh + m]
                store(acc0, 0, Y, B, task // chunks, task % chunks * (G // chunks) + gi, res_add)
                if halves == 2:
                    store(
                        acc1, 1, Y, B, task // chunks, task % chunks * (G // chunks) + gi, res_add
                    )

    if residual:

        @T.prim_func(private=True)
        def kernel(
            X: T.Buffer((M, K), "float32"),
            indptr: T.Buffer((G + 1,), "int32"),
            kidx: T.Buffer((nnzb,), "int32"),
            data: T.Buffer((nnzb, Rb), "float32"),
            B: T.Buffer((N,), "float32"),
            Res: T.Buffer((M, N), "float32"),
            Y: T.Buffer((M, N), "float32"),
        ):
            if staged:
                body_staged(X, indptr, kidx, data, B, Y, lambda v, i, n: v + Res[i, n])
            else:
                body(X, indptr, kidx, data, B, Y, lambda v, i, n: v + Res[i, n])
    else:

        @T.prim_func(private=True)
        def kernel(
            X: T.Buffer((M, K), "float32"),
            indptr: T.Buffer((G + 1,), "int32"),
            kidx: T.Buffer((nnzb,), "int32"),
            data: T.Buffer((nnzb, Rb), "float32"),
            B: T.Buffer((N,), "float32"),
            Y: T.Buffer((M, N), "float32"),
        ):
            if staged:
                body_staged(X, indptr, kidx, data, B, Y, lambda v, i, n: v)
            else:
                body(X, indptr, kidx, data, B, Y, lambda v, i, n: v)

    return finish_kernel(kernel.with_attr("tirx.noalias", True))


def sparse_dense_reference(
    x: np.ndarray,
    sw: SparseWeight,
    bias: np.ndarray | None = None,
    epilogue: Epilogue = None,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """numpy reference of :func:`sparse_dense_kernel` (through the dense reference)."""
    from .dense import dense_reference

    return dense_reference(x, sw.to_dense(), bias, epilogue, residual)


def from_index(index: np.ndarray, data: np.ndarray, K: int, N: int) -> SparseWeight:
    """The kernel's arrays from ``lamina::SparseLinear``'s ``index`` (``g * K + k``, ascending) and
    ``data[nnzb, R]``."""
    index = np.asarray(index, np.int64).reshape(-1)
    data = np.ascontiguousarray(data, np.float32)
    R = int(data.shape[1])
    G = N // R
    groups, kidx = np.divmod(index, K)
    indptr = np.zeros(G + 1, np.int32)
    indptr[1:] = np.cumsum(np.bincount(groups, minlength=G))
    if index.size == 0:
        return encode_blocks(np.zeros((K, N), np.float32), R)
    return SparseWeight(K, N, R, indptr, kidx.astype(np.int32), data)


def emit_sparse_dense(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    sw: SparseWeight,
    bias: relax.Expr | None,
    *,
    epilogue: Epilogue = None,
    residual: relax.Expr | None = None,
    target: tvm.target.Target,
    param_name: str,
    config: SparseConfig | None = None,
) -> tuple[relax.Expr, list[tuple[str, relax.Var, np.ndarray]]]:
    """``epilogue(x @ W + bias) + residual`` for ``x[..., K]`` and the sparse weight ``sw``, as one
    ``call_tir``; returns ``y`` and the new parameters ``(name, var, array)`` (indptr, kidx, data)
    for the caller to register (weights stay out of the library, like the packed dense panels)."""
    from .relax_emit import _static_shape

    shape = _static_shape(x)
    K, N = sw.K, sw.N
    M = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    func = sparse_dense_kernel(
        M, sw, epilogue=epilogue, residual=residual is not None, target=target, config=config
    )
    tag = f"_{epilogue}" if epilogue else ""
    gv = bb.add_func(
        func,
        f"lamina_sparse_dense_{M}x{K}x{N}_r{sw.R}{tag}{'_res' if residual is not None else ''}",
    )
    params = []
    args: list[relax.Expr] = [x if len(shape) == 2 else bb.emit(relax.op.reshape(x, (M, K)))]
    for suffix, arr in (("indptr", sw.indptr), ("kidx", sw.kidx), ("data", sw.data)):
        name = f"{param_name}@{suffix}"
        var = relax.Var(name, relax.TensorType(arr.shape, str(arr.dtype)))
        params.append((name, var, arr))
        args.append(var)
    args.append(bias if bias is not None else relax.const(np.zeros(N, np.float32), "float32"))
    if residual is not None:
        rs = _static_shape(residual)
        args.append(residual if len(rs) == 2 else bb.emit(relax.op.reshape(residual, (M, N))))
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((M, N), "float32")))
    if len(shape) != 2:
        y = bb.emit(relax.op.reshape(y, (*shape[:-1], N)))
    return y, params

"""Block-sparse INT8 dense kernel (AVX-512 VNNI) for constant pruned, quantized weights.

``Y = epilogue((Xq @ Wq - zp * colsum) * x_scale * w_scale + bias) + R`` with ``Wq[K, N]`` int8
pruned in blocks of 4 consecutive outputs of one input (``4x1``, as in ``sparse_dense.py``) and u8
activations given *transposed*, ``XT[K, M]`` (tokens contiguous; see :func:`transposed_quantize`).

Why this shape. ``vpdpbusd`` sums 4 consecutive bytes of its u8 operand against 4 of its s8 operand
per int32 lane. The fp32 sparse kernel vectorises over tokens; here a lane is a token too, and its 4
bytes are the token's activations at 4 *different* inputs: the nonzero blocks of an output group
(4 outputs) are taken 4 at a time (a *quad*, padded with zero blocks), and the quad's weights for
output ``j`` are one dword, broadcast to all lanes. The activations of a quad are interleaved at run
time from the 4 rows ``XT[k0..k3, 64 tokens]``: two levels of in-lane unpacks (bytes, then words)
turn the 4 rows into 4 vectors of 16 tokens x 4 bytes, 8 shuffles feeding 16 ``vpdpbusd``
(4 outputs x 64 tokens, 16 zmm accumulators). Schedule::

    parallel for (tile of 64 tokens, chunk of output groups):
      for g in chunk:                                       # 4 outputs
        acc[4 outputs][4 x 16 tokens] = 0                   # 16 zmm
        for quad in g's quads:                              # 4 nonzero blocks (k0..k3)
          V[0..3] = unpack(XT[k0..k3, tile])                 # token lanes, 4 bytes each
          for j: acc[j][i] = vpdpbusd(acc[j][i], V[i], bcast(w[quad, j]))
        e[j] = epilogue(dequant(acc[j][i]))                 # vectorised over 16 tokens
        Y[token, 4g:4g+4] = transpose(e)[token] (+ R)        # 4 contiguous floats per token

The unpacks work within 128-bit lanes, so vector ``i`` lane ``4L + w`` holds token ``16L + 4i + w``.
The output transpose (unpacks of floats, then of float pairs) leaves the 4 outputs of one token in
each 128-bit lane, stored as one 16-byte row piece. Exact: the int32 sums are the dense
kernel's (zero padding blocks add nothing), so the outputs equal the dense INT8 kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from .common import check_epilogue, dequant_epilogue, finish_kernel, saturate_u8
from .isa import num_threads

R = 4  # outputs per block
TILE = 64  # tokens per register tile (4 zmm of 16 int32 lanes)
# Groups whose outputs are staged before they are stored: 16 floats, a cache line per token. Rows of
# Y are N floats apart (6 KB for N = 1536), so a tile's 64 rows fall into a couple of L1 sets;
# storing each group's 16 bytes directly evicted every line between its 4 partial writes (the
# kernel ran at the speed of those misses, whatever its density).
SG = 16
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


@dataclass(frozen=True)
class SparseInt8Weight:
    """``Wq[K, N]`` (int8, 4x1 blocks) as quads of nonzero blocks per group of 4 outputs.

    ``qptr[G + 1]``: quads of group ``g`` are ``qptr[g] .. qptr[g + 1]``; ``qk[nq, 4]``: their input
    rows; ``qw[nq, 4]``: for output ``j``, the dword of the 4 weights ``Wq[qk[q, t], 4g + j]`` (byte
    ``t``); ``colsum[N]``: ``sum_k Wq[k, n]`` (the zero-point correction)."""

    K: int
    N: int
    qptr: np.ndarray
    qk: np.ndarray
    qw: np.ndarray
    colsum: np.ndarray

    @property
    def quads(self) -> int:
        return int(self.qk.shape[0])

    @property
    def density(self) -> float:
        """Stored blocks (padding included) over all blocks: the dense work the kernel does."""
        return 4 * self.quads / max(1, self.K * (self.N // R))

    def to_dense(self) -> np.ndarray:
        w = np.zeros((self.K, self.N), np.int8)
        b = self.qw.view(np.int8).reshape(-1, R, 4)  # [q, j, t]
        for g in range(self.N // R):
            for q in range(int(self.qptr[g]), int(self.qptr[g + 1])):
                for t in range(4):
                    if b[q, :, t].any():
                        w[self.qk[q, t], g * R:(g + 1) * R] = b[q, :, t]
        return w


def encode_int8_blocks(wq: np.ndarray) -> SparseInt8Weight:
    """Encode int8 ``Wq[K, N]`` (N a multiple of 4): every 4x1 block with a nonzero is kept, in
    quads per output group (the last quad of a group padded with zero blocks of its last input)."""
    w = np.asarray(wq)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"expected a 2-D int8 weight, got {w.dtype} {w.shape}")
    K, N = w.shape
    if N % R:
        raise ValueError(f"N={N} is not a multiple of the block width {R}")
    G = N // R
    blocks = w.reshape(K, G, R).transpose(1, 0, 2)  # [G, K, R]
    qptr = np.zeros(G + 1, np.int32)
    qk_parts, qw_parts = [], []
    for g in range(G):
        ks = np.flatnonzero((blocks[g] != 0).any(axis=1))
        if ks.size == 0:
            ks = np.zeros(1, np.int64)  # keep every group's loop simple: one zero quad
        pad = -ks.size % 4
        vals = blocks[g, ks]  # [nb, R]
        if pad:
            ks = np.concatenate([ks, np.full(pad, ks[-1])])
            vals = np.concatenate([vals, np.zeros((pad, R), np.int8)])
        nq = ks.size // 4
        qk_parts.append(ks.reshape(nq, 4))
        # [nq, 4 t, R j] -> [nq, j, t] bytes -> one int32 per (q, j)
        qw_parts.append(np.ascontiguousarray(vals.reshape(nq, 4, R).transpose(0, 2, 1))
                        .view(np.int32).reshape(nq, R))
        qptr[g + 1] = qptr[g] + nq
    colsum = w.astype(np.int32).sum(axis=0).astype(np.int32)
    return SparseInt8Weight(K, N, qptr, np.concatenate(qk_parts).astype(np.int32),
                            np.concatenate(qw_parts).astype(np.int32), colsum)


def _unpack_lo_hi(width: int, lo: bool) -> list[int]:
    """Shuffle indices of x86's in-lane unpack (lo or hi half of each 128-bit lane) of two
    ``uint8x64`` vectors, interleaving elements of ``width`` bytes."""
    out = []
    per = 16 // width // 2  # elements taken from each source per lane
    for lane in range(4):
        for e in range(per):
            src = lane * 16 + ((e + (0 if lo else per)) * width)
            out += [src + b for b in range(width)]
            out += [64 + src + b for b in range(width)]
    return out


def _unpack32(width: int, lo: bool) -> list[int]:
    """The same for two ``float32x16`` vectors and elements of ``width`` floats (ps: 1, pd: 2)."""
    out = []
    per = 4 // width // 2
    for lane in range(4):
        for e in range(per):
            src = lane * 4 + (e + (0 if lo else per)) * width
            out += [src + b for b in range(width)]
            out += [16 + src + b for b in range(width)]
    return out


_LO_BW, _HI_BW = _unpack_lo_hi(1, True), _unpack_lo_hi(1, False)
_LO_WD, _HI_WD = _unpack_lo_hi(2, True), _unpack_lo_hi(2, False)


def default_chunks(M: int, N: int, target: tvm.target.Target) -> int:
    """Chunks of output groups per 64-token tile: the fewest (whole groups of ``SG``) that give
    every thread at least 4 tasks."""
    n_mo, gs = M // TILE, N // R // SG
    chunks = 1
    for c in range(1, gs + 1):
        if gs % c == 0:
            chunks = c
            if n_mo * c >= 4 * num_threads(target):
                break
    return chunks


def candidate_chunks(M: int, N: int, target: tvm.target.Target) -> list[int]:
    """Task splits worth timing (``tuning.kernel_search.best_sparse_int8_chunks``): the default
    first, then every split giving each thread 1 to 16 tasks."""
    n_mo, gs = M // TILE, N // R // SG
    threads = num_threads(target)
    out = [default_chunks(M, N, target)]
    out += [c for c in range(1, gs + 1)
            if gs % c == 0 and threads <= n_mo * c <= 16 * threads and c not in out]
    return out


def sparse_int8_kernel(M: int, sw: SparseInt8Weight, *, target: tvm.target.Target,
                       bias: bool = False, epilogue=None, residual: bool = False,
                       quant_out: bool = False, out_signed: bool = False,
                       chunks: int | None = None) -> tirx.PrimFunc:
    """The kernel for ``XT[K, M]`` (M a multiple of 64) and the constant pattern of ``sw``.

    Arguments: ``XT[K, M]`` u8, ``qptr``, ``qk``, ``qw`` (``sw``'s arrays), ``colsum[N]`` int32,
    ``w_scale[N]``, ``qp[2]`` (activation scale, zero point), ``bias[N]`` (zeros without one),
    ``R[M, N]`` if ``residual``, output ``Y[M, N]`` float32.

    ``quant_out`` (no residual): the output is the next block-sparse INT8 layer's input instead,
    ``YT[N, M]`` u8 = ``saturate(round_half_even(y * S[n]) + qo[1])`` transposed (int8 shifted by
    +128 when ``out_signed``), with ``S[N]`` and ``qo[2]`` after the bias, as
    ``dense_int8_kernel``'s ``quant_out``. A column's 64 tokens are one 64-byte store, after a
    dword permutation from the accumulators' token order.

    ``chunks``: chunks of output groups per token tile (the tasks are tiles x chunks; it must
    divide ``N / 64``); default :func:`default_chunks`, searched when tuning."""
    check_epilogue(epilogue)
    if quant_out and residual:
        raise ValueError("quant_out has no residual form")
    if M % TILE:
        raise ValueError(f"M={M} is not a multiple of the {TILE}-token tile")
    K, N, nq = sw.K, sw.N, sw.quads
    G = N // R
    n_mo = M // TILE
    if G % SG:
        raise ValueError(f"N={N} is not a multiple of {SG * R} (the kernel stores {SG} groups "
                         "at once)")
    if chunks is None:
        chunks = default_chunks(M, N, target)
    if chunks < 1 or G // SG % chunks:
        raise ValueError(f"chunks={chunks} does not divide the {G // SG} groups of {SG * R} "
                         "outputs")
    per_chunk = G // chunks
    epi = dequant_epilogue(True, epilogue, False)
    lo_bw, hi_bw, lo_wd, hi_wd = _LO_BW, _HI_BW, _LO_WD, _HI_WD

    # Output transposes: the 4 outputs' vectors of 16 tokens -> 4 floats per token, with x86's
    # in-lane unpacks (ps, then pd): result w holds, in 128-bit lane L, the 4 outputs of token
    # 16 L + 4 i + w (the token order of the accumulators).
    lo_ps, hi_ps = _unpack32(1, True), _unpack32(1, False)
    lo_pd, hi_pd = _unpack32(2, True), _unpack32(2, False)

    # The accumulators' byte order of a column (c = 16 i + 4 L + w for token 16 L + 4 i + w) to
    # token order: whole dwords move (a vpermd).
    to_tokens = [16 * ((t // 4) % 4) + 4 * (t // 16) + t % 4 for t in range(TILE)]

    @T.macro
    def body(XT, QPTR, QK, QW, CS, WS, QP, B, Y, res_add, S, QO):
        for task in T.parallel(n_mo * chunks):
            # Allocated once a task: below a group, each would be a heap workspace allocated and
            # freed per group (1,000 cycles each time, more than a sparse group's work).
            acc = T.alloc_buffer((R * 4, 16), "int32", scope="local")
            v = T.alloc_buffer((4, 64), "uint8", scope="local")
            ab = T.alloc_buffer((2, 64), "uint8", scope="local")
            cd = T.alloc_buffer((2, 64), "uint8", scope="local")
            e = T.alloc_buffer((R, 16), "float32", scope="local")
            pq = T.alloc_buffer((4, 16), "float32", scope="local")
            stage = T.alloc_buffer((TILE, SG * R), "float32")
            qb = T.alloc_buffer((R, TILE), "uint8", scope="local")
            for gi in range(per_chunk):
                for a in T.unroll(R * 4):
                    acc[a, T.ramp(0, 1, 16)] = T.broadcast(T.int32(0), 16)
                for q in range(QPTR[task % chunks * per_chunk + gi],
                               QPTR[task % chunks * per_chunk + gi + 1]):
                    ab[0, T.ramp(0, 1, 64)] = T.Shuffle(
                        [XT[QK[q, 0], T.ramp(task // chunks * TILE, 1, 64)],
                         XT[QK[q, 1], T.ramp(task // chunks * TILE, 1, 64)]], lo_bw)
                    ab[1, T.ramp(0, 1, 64)] = T.Shuffle(
                        [XT[QK[q, 0], T.ramp(task // chunks * TILE, 1, 64)],
                         XT[QK[q, 1], T.ramp(task // chunks * TILE, 1, 64)]], hi_bw)
                    cd[0, T.ramp(0, 1, 64)] = T.Shuffle(
                        [XT[QK[q, 2], T.ramp(task // chunks * TILE, 1, 64)],
                         XT[QK[q, 3], T.ramp(task // chunks * TILE, 1, 64)]], lo_bw)
                    cd[1, T.ramp(0, 1, 64)] = T.Shuffle(
                        [XT[QK[q, 2], T.ramp(task // chunks * TILE, 1, 64)],
                         XT[QK[q, 3], T.ramp(task // chunks * TILE, 1, 64)]], hi_bw)
                    for h in T.unroll(2):
                        v[2 * h, T.ramp(0, 1, 64)] = T.Shuffle(
                            [ab[h, T.ramp(0, 1, 64)], cd[h, T.ramp(0, 1, 64)]], lo_wd)
                        v[2 * h + 1, T.ramp(0, 1, 64)] = T.Shuffle(
                            [ab[h, T.ramp(0, 1, 64)], cd[h, T.ramp(0, 1, 64)]], hi_wd)
                    for j in T.unroll(R):
                        for i in T.unroll(4):
                            acc[j * 4 + i, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                                "int32x16", _VPDPBUSD, acc[j * 4 + i, T.ramp(0, 1, 16)],
                                v[i, T.ramp(0, 1, 64)],
                                T.reinterpret("int8x64", T.broadcast(QW[q, j], 16)))
                if quant_out:
                    for i in T.unroll(4):
                        for j in T.unroll(R):
                            for c in T.vectorized(16):
                                qb[j, i * 16 + c] = saturate_u8(
                                    epi(0, (task % chunks * per_chunk + gi) * R + j,
                                        acc[j * 4 + i, c], CS, WS, QP, B, None)
                                    * S[(task % chunks * per_chunk + gi) * R + j], QO[1],
                                    out_signed)
                    for j in T.unroll(R):
                        Y[(task % chunks * per_chunk + gi) * R + j,
                          T.ramp(task // chunks * TILE, 1, TILE)] = T.Shuffle(
                            [qb[j, T.ramp(0, 1, TILE)]], to_tokens)
                else:
                    for i in T.unroll(4):
                        for j in T.unroll(R):
                            for c in T.vectorized(16):
                                e[j, c] = epi(0, (task % chunks * per_chunk + gi) * R + j,
                                              acc[j * 4 + i, c], CS, WS, QP, B, None)
                        pq[0, T.ramp(0, 1, 16)] = T.Shuffle(
                            [e[0, T.ramp(0, 1, 16)], e[1, T.ramp(0, 1, 16)]], lo_ps)
                        pq[1, T.ramp(0, 1, 16)] = T.Shuffle(
                            [e[0, T.ramp(0, 1, 16)], e[1, T.ramp(0, 1, 16)]], hi_ps)
                        pq[2, T.ramp(0, 1, 16)] = T.Shuffle(
                            [e[2, T.ramp(0, 1, 16)], e[3, T.ramp(0, 1, 16)]], lo_ps)
                        pq[3, T.ramp(0, 1, 16)] = T.Shuffle(
                            [e[2, T.ramp(0, 1, 16)], e[3, T.ramp(0, 1, 16)]], hi_ps)
                        for h in T.unroll(2):  # w = 2 h (lo) and 2 h + 1 (hi)
                            e[2 * h, T.ramp(0, 1, 16)] = T.Shuffle(
                                [pq[h, T.ramp(0, 1, 16)], pq[2 + h, T.ramp(0, 1, 16)]], lo_pd)
                            e[2 * h + 1, T.ramp(0, 1, 16)] = T.Shuffle(
                                [pq[h, T.ramp(0, 1, 16)], pq[2 + h, T.ramp(0, 1, 16)]], hi_pd)
                        for w in T.unroll(4):
                            for lane in T.unroll(4):
                                stage[lane * 16 + i * 4 + w, T.ramp(gi % SG * R, 1, R)] = e[
                                    w, T.ramp(lane * 4, 1, 4)]
                    if gi % SG == SG - 1:
                        for m in range(TILE):
                            Y[task // chunks * TILE + m,
                              T.ramp((task % chunks * per_chunk + gi - (SG - 1)) * R, 1,
                                     SG * R)] = res_add(
                                stage[m, T.ramp(0, 1, SG * R)], task // chunks * TILE + m,
                                (task % chunks * per_chunk + gi - (SG - 1)) * R)

    if residual:

        @T.prim_func(private=True)
        def kernel(XT: T.Buffer((K, M), "uint8"), QPTR: T.Buffer((G + 1,), "int32"),
                   QK: T.Buffer((nq, 4), "int32"), QW: T.Buffer((nq, R), "int32"),
                   CS: T.Buffer((N,), "int32"), WS: T.Buffer((N,), "float32"),
                   QP: T.Buffer((2,), "float32"), B: T.Buffer((N,), "float32"),
                   Res: T.Buffer((M, N), "float32"), Y: T.Buffer((M, N), "float32")):
            body(XT, QPTR, QK, QW, CS, WS, QP, B, Y,
                 lambda val, m, n: val + Res[m, T.ramp(n, 1, SG * R)], None, None)
    elif quant_out:

        @T.prim_func(private=True)
        def kernel(XT: T.Buffer((K, M), "uint8"), QPTR: T.Buffer((G + 1,), "int32"),
                   QK: T.Buffer((nq, 4), "int32"), QW: T.Buffer((nq, R), "int32"),
                   CS: T.Buffer((N,), "int32"), WS: T.Buffer((N,), "float32"),
                   QP: T.Buffer((2,), "float32"), B: T.Buffer((N,), "float32"),
                   S: T.Buffer((N,), "float32"), QO: T.Buffer((2,), "float32"),
                   Y: T.Buffer((N, M), "uint8")):
            body(XT, QPTR, QK, QW, CS, WS, QP, B, Y, lambda val, m, n: val, S, QO)
    else:

        @T.prim_func(private=True)
        def kernel(XT: T.Buffer((K, M), "uint8"), QPTR: T.Buffer((G + 1,), "int32"),
                   QK: T.Buffer((nq, 4), "int32"), QW: T.Buffer((nq, R), "int32"),
                   CS: T.Buffer((N,), "int32"), WS: T.Buffer((N,), "float32"),
                   QP: T.Buffer((2,), "float32"), B: T.Buffer((N,), "float32"),
                   Y: T.Buffer((M, N), "float32")):
            body(XT, QPTR, QK, QW, CS, WS, QP, B, Y, lambda val, m, n: val, None, None)

    del bias  # the bias is always an argument (zeros for a layer without one)
    return finish_kernel(kernel.with_attr("tirx.noalias", True))

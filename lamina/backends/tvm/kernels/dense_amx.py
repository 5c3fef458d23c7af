"""AMX dense kernels: ``tdpbusd`` on tiles, the AMX family of ``dense_int8`` (same arguments and
epilogue, weights in the VNNI layout with 16-column panels, K padded to 64), and ``tdpbf16ps``, the
AMX family of ``dense_bf16`` (bf16 pairs, ``[N / 16, K / 2, 32]``, K padded to 32).

TVM 0.27 has no AMX intrinsic; LLVM 22's (``ldtilecfg``, ``tileloadd64``, ``tdpbusd``,
``tdpbf16ps``, ``tilestored64``, ``tilerelease``) are called from TIR with ``call_llvm_intrin``
(TVM_NOTES.md). Builds on any host, runs only on CPUs with AMX-INT8 / AMX-BF16, after the process
got the tile state from Linux (``backends/tvm/amx.py``).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .common import (
    Epilogue,
    check_epilogue,
    dequant_epilogue,
    finish_kernel,
    keep_params,
    root_block,
)


def amx_fits(M: int, N: int) -> bool:
    """The AMX kernel's 32 x 32 task tile needs M and N in multiples of 32."""
    return M % 32 == 0 and N % 32 == 0


_LDTILECFG = "llvm.x86.ldtilecfg"
_TILEZERO = "llvm.x86.tilezero"
_TILELOAD = "llvm.x86.tileloadd64"
_TDPBUSD = "llvm.x86.tdpbusd"
_TDPBF16PS = "llvm.x86.tdpbf16ps"
_TILESTORE = "llvm.x86.tilestored64"
_TILERELEASE = "llvm.x86.tilerelease"


@T.macro
def configure_tiles(cfg):
    """``ldtilecfg`` of the kernels' tiles (palette 1, 8 tiles of 16 rows x 64 bytes) from the
    64-byte buffer ``cfg``."""
    for b in range(64):
        cfg[b] = T.uint8(0)
    cfg[0] = T.uint8(1)
    for t in T.unroll(8):
        cfg[16 + 2 * t] = T.uint8(64)
        cfg[48 + t] = T.uint8(16)
    T.evaluate(T.call_llvm_intrin("void", _LDTILECFG, T.address_of(cfg[0])))


@T.macro
def tile_task(X, W, acc, row, col, KB, kx, x_stride, dot):
    """One 32 x 32 task: C (tmm0-3) = the sum over ``KB`` K blocks of A (tmm4-5: rows ``row`` and
    ``row + 16`` of ``X``, ``kx`` elements a block, rows ``x_stride`` bytes apart) times B (tmm6-7:
    panels ``col / 16`` and the next of ``W``) by the tile instruction ``dot``, stored into
    ``acc[32, 32]``."""
    for t in T.unroll(4):
        T.evaluate(T.call_llvm_intrin("void", _TILEZERO, T.int8(t)))
    for kb in range(KB):
        T.evaluate(T.call_llvm_intrin("void", _TILELOAD, T.int8(4),
                                      T.address_of(X[row, kb * kx]), T.int64(x_stride)))
        T.evaluate(T.call_llvm_intrin("void", _TILELOAD, T.int8(5),
                                      T.address_of(X[row + 16, kb * kx]), T.int64(x_stride)))
        T.evaluate(T.call_llvm_intrin("void", _TILELOAD, T.int8(6),
                                      T.address_of(W[col // 16, kb * 16, 0]), T.int64(64)))
        T.evaluate(T.call_llvm_intrin("void", _TILELOAD, T.int8(7),
                                      T.address_of(W[col // 16 + 1, kb * 16, 0]), T.int64(64)))
        T.evaluate(T.call_llvm_intrin("void", dot, T.int8(0), T.int8(4), T.int8(6)))
        T.evaluate(T.call_llvm_intrin("void", dot, T.int8(1), T.int8(4), T.int8(7)))
        T.evaluate(T.call_llvm_intrin("void", dot, T.int8(2), T.int8(5), T.int8(6)))
        T.evaluate(T.call_llvm_intrin("void", dot, T.int8(3), T.int8(5), T.int8(7)))
    for t in T.unroll(4):
        T.evaluate(T.call_llvm_intrin("void", _TILESTORE, T.int8(t),
                                      T.address_of(acc[t // 2 * 16, t % 2 * 16]), T.int64(128)))


def amx_dense_int8_kernel(M: int, K: int, N: int, *, threads: int, bias: bool = False,
                          epilogue: Epilogue = None, residual: bool = False,
                          raw: bool = False) -> tirx.PrimFunc:
    """AMX-INT8 form of :func:`dense_int8_kernel` (same arguments; Xq padded to K in multiples of
    64, ``Wp = pack_weight_int8(w, 16, 64)``, the VNNI layout with 16-column panels).

    One task per 32 x 32 output tile, in ``threads`` parallel chunks (chunk ``c`` takes tasks
    ``c, c + threads, ...``), each allocating its scratch and configuring the tiles once
    (TVM_NOTES.md; per task, the workspace calls and ``ldtilecfg`` would cost about as much as a
    K = 384 tile's ``tdpbusd``)::

        ldtilecfg(cfg)                 # tmm0-3: C 16 x 16 int32; tmm4-5: A 16 x 64 u8;
        for task in chunk:             # tmm6-7: B 16 x (16 x 4) s8
          tilezero(tmm0..3)
          for kb in Kp / 64:
            tileloadd64(tmm4 / tmm5, &Xq[rows 0-15 / 16-31, 64 kb], Kp)
            tileloadd64(tmm6 / tmm7, &Wp[panel 0 / 1, 16 kb, 0], 64)
            tdpbusd(tmm0, tmm4, tmm6)  tdpbusd(tmm1, tmm4, tmm7)
            tdpbusd(tmm2, tmm5, tmm6)  tdpbusd(tmm3, tmm5, tmm7)
          tilestored64(tmm0..3 -> acc[32, 32])
          Y[tile] = epilogue(acc)      # the same dequantizing epilogue as the VNNI kernel
        tilerelease()

    The process must have asked Linux for the tile state first (``runtime`` does, see
    ``backends/tvm/amx.py``); this host family runs only on CPUs with AMX.
    """
    check_epilogue(epilogue)
    if not amx_fits(M, N):
        raise ValueError(f"the AMX kernel needs M and N in multiples of 32, got {M} x {N}")
    Kp = -(-K // 64) * 64
    K4 = Kp // 4
    KB = Kp // 64
    P = N // 16
    MT, NT = M // 32, N // 32
    nt = max(1, min(MT * NT, threads))
    out_dtype = "int32" if raw else "float32"

    epi = dequant_epilogue(bias, epilogue, residual)

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, Kp), "uint8"), W: T.Buffer((P, K4, 64), "int8"),
             CS: T.Buffer((N,), "int32"), WS: T.Buffer((N,), "float32"),
             QP: T.Buffer((2,), "float32"), B: T.Buffer((N,), "float32"),
             R: T.Buffer((M, N), "float32"), Y: T.Buffer((M, N), out_dtype)):
        T.func_attr({"tirx.noalias": True})
        for ch in T.parallel(nt):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            acc = T.alloc_buffer((32, 32), "int32", scope="local")
            configure_tiles(cfg)
            for n in range((MT * NT - ch + nt - 1) // nt):
                task = T.bind(ch + n * nt)
                row = T.bind(task // NT * 32)
                col = T.bind(task % NT * 32)
                tile_task(X, W, acc, row, col, KB, 64, Kp, _TDPBUSD)
                for i in range(32):
                    for c in T.vectorized(32):
                        if raw:
                            Y[row + i, col + c] = acc[i, c]
                        else:
                            Y[row + i, col + c] = epi(row + i, col + c, acc[i, c], CS, WS, QP,
                                                      B, R)
            T.evaluate(T.call_llvm_intrin("void", _TILERELEASE))

    keep = ["X", "W", "Y"] if raw else (["X", "W", "CS", "WS", "QP"] + (["B"] if bias else [])
                                        + (["R"] if residual else []) + ["Y"])
    return finish_kernel(root_block(keep_params(func, keep)))


def amx_bf16_fits(M: int, N: int) -> bool:
    """The AMX-BF16 kernel's 32 x 32 task tile needs M and N in multiples of 32."""
    return amx_fits(M, N)


def amx_dense_bf16_kernel(M: int, K: int, N: int, *, threads: int, bias: bool = False,
                          epilogue: Epilogue = None, residual: bool = False) -> tirx.PrimFunc:
    """AMX-BF16 form of ``dense_bf16.dense_bf16_kernel`` (same arguments; ``Xb`` padded to K in
    multiples of 32, ``Wp = pack_weight_bf16(w, 16, step=32)``, bf16 pairs ``[N / 16, K / 2, 32]``).

    One task per 32 x 32 output tile, in chunks as the INT8 kernel above::

        ldtilecfg(cfg)                 # tmm0-3: C 16 x 16 fp32; tmm4-5: A 16 x 32 bf16;
        for task in chunk:             # tmm6-7: B 16 x (16 x 2) bf16
          tilezero(tmm0..3)
          for kb in Kp / 32:
            tileloadd64(tmm4 / tmm5, &Xb[rows 0-15 / 16-31, 32 kb], 2 Kp)
            tileloadd64(tmm6 / tmm7, &Wp[panel 0 / 1, 16 kb, 0], 64)
            tdpbf16ps(tmm0, tmm4, tmm6)  tdpbf16ps(tmm1, tmm4, tmm7)
            tdpbf16ps(tmm2, tmm5, tmm6)  tdpbf16ps(tmm3, tmm5, tmm7)
          tilestored64(tmm0..3 -> acc[32, 32])
          Y[tile] = epilogue(acc + bias) + R
        tilerelease()

    Runs only on CPUs with AMX-BF16, in a process that asked Linux for the tile state.
    """
    from .dense_bf16 import bf16_epilogue

    check_epilogue(epilogue)
    if not amx_bf16_fits(M, N):
        raise ValueError(f"the AMX kernel needs M and N in multiples of 32, got {M} x {N}")
    Kp = -(-K // 32) * 32
    K2 = Kp // 2
    KB = Kp // 32
    P = N // 16
    MT, NT = M // 32, N // 32
    nt = max(1, min(MT * NT, threads))
    epi = bf16_epilogue(bias, epilogue, residual)

    @T.prim_func(private=True)
    def func(X: T.Buffer((M, Kp), "uint16"), W: T.Buffer((P, K2, 32), "uint16"),
             B: T.Buffer((N,), "float32"), R: T.Buffer((M, N), "float32"),
             Y: T.Buffer((M, N), "float32")):
        T.func_attr({"tirx.noalias": True})
        for ch in T.parallel(nt):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            acc = T.alloc_buffer((32, 32), "float32", scope="local")
            configure_tiles(cfg)
            for n in range((MT * NT - ch + nt - 1) // nt):
                task = T.bind(ch + n * nt)
                row = T.bind(task // NT * 32)
                col = T.bind(task % NT * 32)
                tile_task(X, W, acc, row, col, KB, 32, 2 * Kp, _TDPBF16PS)
                for i in range(32):
                    for c in T.vectorized(32):
                        Y[row + i, col + c] = epi(row + i, col + c, acc[i, c], B, R)
            T.evaluate(T.call_llvm_intrin("void", _TILERELEASE))

    keep = ["X", "W"] + (["B"] if bias else []) + (["R"] if residual else []) + ["Y"]
    return finish_kernel(root_block(keep_params(func, keep)))

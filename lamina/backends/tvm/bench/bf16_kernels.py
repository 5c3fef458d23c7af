"""GFLOP/s of the BF16 dense kernel (``vdpbf16ps``) against the fp32 dense kernel, interleaved.

    TVM_NUM_THREADS=2 python bench/bf16_kernels.py --threads 2 [--shapes 128x384x1536 128x1536x384]
        [--rounds 7] [--cold] [--tiles 8x3 6x4 4x6]

Each round times a block of calls of every kernel in turn (the host is shared, so only ratios
taken in the same round mean much); the table shows medians over rounds and the median of the
per-round bf16 / fp32 ratios. ``bf16`` is the matmul kernel on already converted activations,
``bf16+cvt`` adds the fp32 -> bf16 conversion of X (what a model layer runs when the activation
feeds one dense layer). ``--cold``: each call reads another copy of the packed weight (more than
L3 in all), as in a model where the weights stream from DRAM. ``--asm`` prints the inner loop of
the bf16 kernel. Run as ``python bench/bf16_kernels.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tvm

from lamina.backends.tvm.kernels.common import standalone_module
from lamina.backends.tvm.kernels.dense import dense_kernel, pack_weight, resolve_config
from lamina.backends.tvm.kernels.dense_bf16 import (
    Bf16Config,
    dense_bf16_kernel,
    pack_weight_bf16,
    padded_k,
    resolve_bf16_config,
    to_bf16,
    to_bf16_kernel,
)
from lamina.backends.tvm.runtime import use_threads
from lamina.backends.tvm.target import resolve_target

COLD_BYTES = 96 << 20


def _copies(w: np.ndarray, cold: bool, dev) -> list:
    n = int(min(64, max(2, -(-COLD_BYTES // w.nbytes)))) if cold else 1
    return [tvm.runtime.tensor(w, dev) for _ in range(n)]


def _block(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t0) / calls


def inner_loop(asm: str) -> str:
    """The lines of the generated assembly around the vdpbf16ps run."""
    lines = asm.splitlines()
    idx = [i for i, line in enumerate(lines) if "vdpbf16ps" in line]
    if not idx:
        return "(no vdpbf16ps)"
    return "\n".join(lines[max(0, idx[0] - 12): idx[-1] + 4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["128x384x1536", "128x1536x384"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--tiles", nargs="*", default=[], help="bf16 tiles MRxNV to time as well")
    ap.add_argument("--asm", action="store_true")
    args = ap.parse_args()
    tgt32 = resolve_target("x86-avx512", threads=args.threads).tvm_target
    tgt16 = resolve_target("x86-avx512-bf16", threads=args.threads).tvm_target
    use_threads(args.threads)
    for shape in args.shapes:
        M, K, N = (int(v) for v in shape.split("x"))
        bench_shape(M, K, N, args, tgt32, tgt16)


def bench_shape(M: int, K: int, N: int, args: argparse.Namespace, tgt32: tvm.target.Target,
                tgt16: tvm.target.Target) -> None:
    """Time fp32 and bf16 kernels of one shape, interleaved (see the module doc)."""
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    xt = tvm.runtime.tensor(x, dev)
    bt = tvm.runtime.tensor(b, dev)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    fns = {}
    cfg = resolve_config(M, K, N, tgt32)
    f32 = tvm.compile(standalone_module(dense_kernel(M, K, N, bias=True, target=tgt32,
                                                     config=cfg)), tgt32).mod["main"]
    w32 = _copies(pack_weight(w, cfg.nb), args.cold, dev)
    fns[f"fp32 {cfg.mr}x{cfg.nb}"] = lambda i, f=f32, ws=w32: f(xt, ws[i % len(ws)], bt, y)
    Kp = padded_k(K)
    cvt = tvm.compile(standalone_module(to_bf16_kernel(M, K, Kp)), tgt16).mod["main"]
    xb = tvm.runtime.tensor(to_bf16(np.pad(x, ((0, 0), (0, Kp - K)))), dev)
    tiles = [None] + [Bf16Config(*(int(v) for v in t.split("x"))) for t in args.tiles]
    for i, tile in enumerate(tiles):
        c16 = resolve_bf16_config(M, K, N, tgt16, tile)
        ex = tvm.compile(standalone_module(dense_bf16_kernel(
            M, K, N, bias=True, target=tgt16, config=c16)), tgt16)
        if args.asm and i == 0:
            print(inner_loop(ex.mod.imports[0].inspect_source("asm")
                             if ex.mod.imports else ex.mod.inspect_source("asm")))
        f16 = ex.mod["main"]
        w16 = _copies(pack_weight_bf16(w, c16.nv * 16), args.cold, dev)
        fns[f"bf16 {c16.key()}"] = lambda i, f=f16, ws=w16: f(xb, ws[i % len(ws)], bt, y)
        fns[f"bf16+cvt {c16.key()}"] = (
            lambda i, f=f16, ws=w16: (cvt(xt, xb), f(xb, ws[i % len(ws)], bt, y)))
    fns["cvt only"] = lambda i: cvt(xt, xb)
    for fn in fns.values():
        _block(fn, 5)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            samples[k].append(_block(fn, args.calls))
    flops = 2.0 * M * K * N
    ref = next(iter(fns))
    print(f"\n{M}x{K}x{N}, {args.threads} threads, {'cold' if args.cold else 'warm'} weights, "
          f"{args.rounds} rounds x {args.calls} calls")
    print(f"{'kernel':34s} {'us':>8s} {'GFLOP/s':>8s} {'vs fp32 (by round)':>20s}")
    for k, ts in samples.items():
        med = float(np.median(ts))
        ratios = [r / t for r, t in zip(samples[ref], ts, strict=True)]
        print(f"{k:34s} {med * 1e6:8.1f} {flops / med / 1e9:8.1f} "
              f"{float(np.median(ratios)):7.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()

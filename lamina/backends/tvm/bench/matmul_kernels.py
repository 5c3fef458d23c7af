"""GFLOP/s of Lamina's dense and attention kernels vs numpy (OpenBLAS) vs MetaSchedule, on the
encoder shapes.

    python bench/matmul_kernels.py --threads 2 --m 128 1024 [--search] [--ms-trials 64]
        [--isa avx2] [--shapes minilm bert] [--attention] [--tuning-db DIR]

numpy runs in a child process (``OPENBLAS_NUM_THREADS=threads``) so its spinning pool never shares
the cores with TVM's; the two alternate in blocks (``--rounds``) and the table shows medians.
Columns: numpy; our kernel with the per-ISA default tile; with the grid-searched tile
(``--search``); MetaSchedule on the same Relax matmul+bias with ``--ms-trials`` trials. Searched
tiles and MetaSchedule records go to the tuning database ``lamina compile`` uses (``--tuning-db``,
default ``$LAMINA_TUNING_DB`` or ``~/.cache/lamina/tuning``), so a search here serves later
compiles. Run as ``python bench/matmul_kernels.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "minilm": [(384, 384), (384, 1536), (1536, 384)],
    "bert": [(768, 768), (768, 3072), (3072, 768)],
}

_NUMPY_CHILD = r"""
import json, sys, time
import numpy as np
shapes, calls, blocks = json.loads(sys.argv[1])
out = []
for M, K, N in shapes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    y = np.empty((M, N), np.float32)
    for _ in range(3):
        np.matmul(x, w, out=y); y += b
    ts = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(calls):
            np.matmul(x, w, out=y); y += b
        ts.append((time.perf_counter() - t) / calls)
    out.append(sorted(ts)[len(ts) // 2])
print(json.dumps(out))
"""

_NUMPY_ATTENTION_CHILD = r"""
import json, sys, time
import numpy as np
shapes, calls, blocks = json.loads(sys.argv[1])
out = []
for B, S, H, D in shapes:
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, S, D), dtype=np.float32) for _ in range(3))
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    bias = np.zeros((B, 1, 1, S), np.float32)
    def attn():
        s = np.matmul(q, kt) * np.float32(D ** -0.5) + bias
        s -= s.max(-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(-1, keepdims=True)
        return np.matmul(s, v).transpose(0, 2, 1, 3).reshape(B, S, H * D)
    for _ in range(3):
        attn()
    ts = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(calls):
            attn()
        ts.append((time.perf_counter() - t) / calls)
    out.append(sorted(ts)[len(ts) // 2])
print(json.dumps(out))
"""


def attention_table(target, threads: int, seqs: list[int], batches: list[int], rounds: int,
                    calls: int, head_dims: tuple[int, ...] = (32, 64)) -> None:
    """The fused attention kernel (12 heads, merged QKV input, key-padding bias) against numpy
    (OpenBLAS batched matmuls around a numpy softmax, heads already split)."""
    import numpy as np
    import tvm

    from lamina.backends.tvm.kernels import standalone_module
    from lamina.backends.tvm.kernels.attention import attention_kernel

    shapes = [(b, s, 12, d) for b in batches for s in seqs for d in head_dims]
    items = []
    for B, S, H, D in shapes:
        func = attention_kernel(B, S, S, H, D, scale=D ** -0.5, merged=True, mask=True,
                                target=target)
        ex = tvm.compile(standalone_module(func), target)
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(a) for a in (
            rng.standard_normal((B * S, 3 * H * D), dtype=np.float32),
            np.zeros((B, S), np.float32), np.zeros((B, S, H, D), np.float32))]
        items.append((ex.mod, args))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    tn, to = [], []
    for _ in range(rounds):
        res = subprocess.run([sys.executable, "-c", _NUMPY_ATTENTION_CHILD,
                              json.dumps([shapes, calls, 3])], env=env, capture_output=True,
                             text=True, check=True)
        tn.append(json.loads(res.stdout))
        to.append([float(np.median(m.time_evaluator("main", tvm.cpu(), number=calls,
                                                     repeat=3)(*a).results)) for m, a in items])
    print("| batch | seq | heads x d | numpy us | fused kernel us | GFLOP/s | numpy/ours |")
    print("|---|---|---|---|---|---|---|")
    for i, (B, S, H, D) in enumerate(shapes):
        n, o = np.median([r[i] for r in tn]), np.median([r[i] for r in to])
        gf = 4.0 * B * H * S * S * D / o / 1e9
        print(f"| {B} | {S} | {H} x {D} | {n * 1e6:.0f} | {o * 1e6:.0f} | {gf:.0f} | {n / o:.2f} |",
              flush=True)


def numpy_times(shapes: list[tuple[int, int, int]], threads: int, calls: int,
                blocks: int) -> list[float]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", _NUMPY_CHILD, json.dumps([shapes, calls, blocks])],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def kernel_timer(M: int, K: int, N: int, target, cfg):
    import numpy as np
    import tvm

    from lamina.backends.tvm.kernels import dense_kernel, pack_weight, standalone_module

    func = dense_kernel(M, K, N, bias=True, target=target, config=cfg)
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(a, dev) for a in (
        rng.standard_normal((M, K), dtype=np.float32),
        pack_weight(rng.standard_normal((K, N), dtype=np.float32), cfg.nb),
        rng.standard_normal(N, dtype=np.float32), np.zeros((M, N), np.float32))]
    return ex.mod, args


def ms_timer(M: int, K: int, N: int, target, trials: int, cache: str):
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from lamina.backends.tvm.tuning import apply, tune

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((M, K), "float32"), w: R.Tensor((K, N), "float32"),
                 b: R.Tensor((N,), "float32")):
            with R.dataflow():
                y = R.add(R.matmul(x, w), b)
                R.output(y)
            return y

    mod = relax.get_pipeline("zero")(Mod)
    tune(mod, target, trials=trials, db_dir=cache, trials_per_iter=16)
    ex = tvm.compile(apply(mod, target, cache), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(s, dtype=np.float32))
            for s in ((M, K), (K, N), (N,))]
    return vm, args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--m", type=int, nargs="+", default=[128])
    ap.add_argument("--shapes", nargs="+", default=["minilm", "bert"], choices=list(SHAPES))
    ap.add_argument("--isa", choices=["auto", "avx512", "avx2", "generic"], default="auto")
    ap.add_argument("--search", action="store_true", help="grid-search the tile per shape")
    ap.add_argument("--ms-trials", type=int, default=0, help="MetaSchedule trials per shape")
    ap.add_argument("--tuning-db", help="tuning database directory (default: lamina compile's)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating numpy / TVM blocks")
    ap.add_argument("--calls", type=int, default=20, help="calls per timed block")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--attention", action="store_true",
                    help="also time the fused attention kernel (batches = --m / 128)")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import numpy as np

    from lamina.backends.tvm.build import default_tuning_db
    from lamina.backends.tvm.kernels import host_target, isa_of, resolve_config
    from lamina.backends.tvm.tuning.kernel_search import best_dense_config

    db = str(args.tuning_db or default_tuning_db())

    target = host_target(args.threads, None if args.isa == "auto" else args.isa)
    shapes = [(M, K, N) for M in args.m for s in args.shapes for K, N in SHAPES[s]]
    print(f"# target {target.attrs['mcpu']} ({isa_of(target)}), {args.threads} threads, "
          f"{args.rounds} rounds x {args.calls} calls, medians", flush=True)

    engines: dict[str, list] = {"ours": [], "ours_tuned": [], "ms": []}
    tiles: dict[str, list[str]] = {"ours": [], "ours_tuned": []}
    for M, K, N in shapes:
        cfg = resolve_config(M, K, N, target)
        engines["ours"].append(kernel_timer(M, K, N, target, cfg))
        tiles["ours"].append(cfg.key())
        if args.search:
            t0 = time.monotonic()
            best = best_dense_config(M, K, N, target, cache=db)
            print(f"# searched {M}x{K}x{N} in {time.monotonic() - t0:.0f} s: {best.key()}",
                  flush=True)
            engines["ours_tuned"].append(kernel_timer(M, K, N, target, best))
            tiles["ours_tuned"].append(best.key())
        if args.ms_trials:
            t0 = time.monotonic()
            engines["ms"].append(ms_timer(M, K, N, target, args.ms_trials, db))
            print(f"# MetaSchedule {M}x{K}x{N}: {time.monotonic() - t0:.0f} s", flush=True)

    times: dict[str, list[list[float]]] = {k: [] for k in ["numpy", *engines]}
    for _ in range(args.rounds):
        times["numpy"].append(numpy_times(shapes, args.threads, args.calls, 3))
        for name, items in engines.items():
            if not items:
                continue
            row = []
            for mod, targs in items:
                fn = mod.time_evaluator("main", _dev(), number=args.calls, repeat=3)
                row.append(float(np.median(fn(*targs).results)))
            times[name].append(row)

    cols = [k for k in times if times[k]]
    head = "| M | K | N | " + " | ".join(f"{c} GF/s" for c in cols) + " | ours/numpy | tile |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    rows = []
    for i, (M, K, N) in enumerate(shapes):
        gf = {c: 2.0 * M * K * N / float(np.median([r[i] for r in times[c]])) / 1e9 for c in cols}
        best_ours = max(gf.get("ours", 0), gf.get("ours_tuned", 0))
        tile = tiles["ours_tuned"][i] if tiles["ours_tuned"] else tiles["ours"][i]
        print(f"| {M} | {K} | {N} | " + " | ".join(f"{gf[c]:.0f}" for c in cols)
              + f" | {best_ours / gf['numpy']:.2f} | {tile} |", flush=True)
        rows.append({"M": M, "K": K, "N": N, "gflops": gf, "tile": tile})
    if args.attention:
        attention_table(
            target,
            args.threads,
            [128, 512],
            sorted({max(1, m // 128) for m in args.m}),
            args.rounds,
            args.calls,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"target": str(target), "threads": args.threads,
                                               "rows": rows}, indent=1))
    return 0


def _dev():
    import tvm

    return tvm.cpu()


if __name__ == "__main__":
    raise SystemExit(main())

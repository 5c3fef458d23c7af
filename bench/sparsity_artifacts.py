"""Pruned models' Lamina artifacts against the dense model's, timed in one process in alternating
blocks.

    python bench/sparsity_artifacts.py DENSE.lamina PRUNED.lamina [PRUNED2.lamina ...] \
        [--rounds 8] [--calls 10] [--threads 2] [--seq 128]

Both artifacts run the same real-text feeds (batch 1). Each round times a block of ``--calls`` calls
of every artifact, one after the other (rotating the order), so a shared machine's slow phases hit
all of them; the table gives each artifact's best and median block and its speed-up over the dense
artifact: the median of the per-round ratios and their range. ``lamina bench PRUNED --baseline
DENSE`` is the cross-process form of the same comparison (plus ONNX Runtime); use it on an idle
machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dense")
    ap.add_argument("pruned", nargs="+")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args(argv)

    import lamina.backends.tvm as lamina_tvm
    from lamina.compiler.frontend.text import tokenize
    from lamina.zoo import SAMPLE_TEXTS, minilm_tokenizer_dir

    paths = [args.dense, *args.pruned]
    models = [lamina_tvm.load(p, threads=args.threads) for p in paths]
    names = [i.name for i in models[0].inputs]
    text = " ".join([SAMPLE_TEXTS[0]] * (1 + args.seq // 12))
    feeds = tokenize([text], minilm_tokenizer_dir(), names, seq=args.seq)
    for m in models:
        for _ in range(3):
            m.run(feeds)
    blocks: list[list[float]] = [[] for _ in models]
    for r in range(args.rounds):
        order = list(range(len(models)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                models[i].run(feeds)
            blocks[i].append(1e3 * (time.perf_counter() - t0) / args.calls)
    dense = np.array(blocks[0])
    print(
        f"b1 s{args.seq}, {args.threads} threads, {args.rounds} rounds x {args.calls} calls; ms "
        "per call"
    )
    print(f"{'artifact':<44} {'best':>8} {'median':>8} {'speed-up vs dense (by round)':>32}")
    for p, b in zip(paths, blocks, strict=True):
        ratios = dense / np.array(b)
        print(
            f"{Path(p).name:<44} {min(b):8.2f} {np.median(b):8.2f} "
            f"{np.median(ratios):10.2f}x [{ratios.min():.2f}-{ratios.max():.2f}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Concurrent calls on one loaded MiniLM artifact: correctness and throughput by calling threads.

1. Correctness: 8 threads x 50 calls of mixed shapes (real sentences, one to four a request, their
   own lengths, so requests land in different buckets), every output equal to the serial call's.
2. Throughput: the same request mix from 1, 2 and 4 calling threads, rounds interleaved
   (``--rounds``), requests/s and tokens/s per round, median reported. With 1 calling thread a
   call runs on the artifact's ``threads``; concurrent calls share the cores (see
   ``lamina/backends/tvm/runtime.py``).

Usage: python bench/threads_runtime.py [--artifact DIR] [--calls 120] [--rounds 3] [--json OUT]
Without --artifact it compiles the packaged MiniLM (O1, buckets 1x16,1x32,1x64,4x32,4x64) into a
temporary directory first (a minute or two).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

BUCKETS = [(1, 16), (1, 32), (1, 64), (4, 32), (4, 64)]


def requests(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from lamina.zoo import real_text_inputs

    lines = [s for s in (REPO / "data/corpus/heldout.txt").read_text().splitlines() if s.strip()]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.choice([1, 1, 2, 4]))
        texts = [lines[int(i)] for i in rng.integers(0, len(lines), n)]
        feeds = real_text_inputs(texts)
        if feeds["input_ids"].shape[1] > 64:
            feeds = real_text_inputs(texts, seq=64)
        out.append(feeds)
    return out


def run_threads(model, reqs: list[dict[str, np.ndarray]], threads: int, calls: int
                ) -> tuple[float, dict[int, dict[str, np.ndarray]]]:
    """Seconds for ``calls`` requests taken from a shared counter by ``threads`` threads."""
    lock = threading.Lock()
    nxt = [0]
    results: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= calls:
                return
            try:
                results[i] = model.run(reqs[i % len(reqs)])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact")
    ap.add_argument("--threads", type=int, default=2, help="the artifact's threads per call")
    ap.add_argument("--calls", type=int, default=120, help="requests per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    from lamina.backends.tvm import load

    tmp = None
    art = args.artifact
    if art is None:
        from lamina.compiler.driver import api
        from lamina.zoo import export_model

        tmp = tempfile.TemporaryDirectory()
        src = export_model("minilm", "torchscript", 17)
        t0 = time.perf_counter()
        art = str(api.compile(src, Path(tmp.name) / "minilm.lamina", buckets=BUCKETS))
        print(f"compiled {art} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    model = load(art, threads=args.threads)
    reqs = requests(50, seed=1)
    tokens = [int(r["attention_mask"].sum()) for r in reqs]
    serial = [model.run(r) for r in reqs]  # also the warm-up

    # 1. correctness: 8 threads x 50 calls
    _, got = run_threads(model, reqs, 8, 400)
    mismatches = sum(
        any(not np.array_equal(got[i][k], serial[i % len(reqs)][k]) for k in got[i])
        for i in got)
    print(f"8 threads x 50 calls, mixed shapes: {len(got)} calls, {mismatches} outputs differ "
          "from the serial calls")

    # 2. throughput by calling threads, rounds interleaved
    per: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for _ in range(args.rounds):
        for n in per:
            seconds, _ = run_threads(model, reqs, n, args.calls)
            per[n].append(seconds)
    tok = sum(tokens[i % len(reqs)] for i in range(args.calls))
    rows = {}
    for n, secs in per.items():
        med = statistics.median(secs)
        rows[n] = {"requests_per_s": round(args.calls / med, 1),
                   "tokens_per_s": round(tok / med, 0),
                   "rounds_s": [round(s, 3) for s in secs]}
        print(f"{n} calling thread{'s' if n > 1 else ' '}: {args.calls / med:7.1f} requests/s "
              f"{tok / med:9.0f} tokens/s (median of {len(secs)} rounds: "
              f"{', '.join(f'{s:.2f}' for s in secs)} s)")
    base = rows[1]["requests_per_s"]
    for n in (2, 4):
        print(f"  {n} threads / 1 thread: {rows[n]['requests_per_s'] / base:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"artifact": art, "threads": args.threads,
                                               "calls": args.calls, "mismatches": mismatches,
                                               "throughput": rows}, indent=2))
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

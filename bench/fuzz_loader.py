"""Fuzz the loader and O0 (and compile, on a sample) with mutants of two tiny exports.

Each mutant runs in a forked child with a time limit and a 4 GiB address-space limit
(``lamina.fuzz``); outcomes: ok, error (a one-line LaminaError), internal (any other exception),
multiline, memory (MemoryError at the limit), crash (a signal), hang. Findings are kept under
``--out`` for replay (``lamina opt OUT/mutant-NNNNN.onnx -o x.onnx``).

Usage: python bench/fuzz_loader.py [--count 1000] [--models bert,distilbert] [--compile-sample 10]
       [--jobs 2] [--seed 0] [--out fuzz-out] [--json summary.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000, help="mutants per model")
    ap.add_argument("--models", default="bert,distilbert", help="tiny zoo architectures")
    ap.add_argument("--compile-sample", type=int, default=10,
                    help="mutants per model that passed O0 to compile as well")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", default="fuzz-out")
    ap.add_argument("--json")
    args = ap.parse_args()

    import lamina.backends.tvm.api  # noqa: F401 - children fork with everything imported
    import lamina.passes  # noqa: F401
    from lamina import fuzz
    from lamina.compiler.driver import api  # noqa: F401
    from lamina.zoo import export_model

    report: dict[str, object] = {"count": args.count, "seed": args.seed}
    findings = 0
    for arch in args.models.split(","):
        src = export_model(arch, "torchscript", 17, tiny=True)
        out = Path(args.out) / arch
        t0 = time.perf_counter()
        done = [0]

        def progress(o: fuzz.Outcome, arch: str = arch, done: list[int] = done) -> None:
            done[0] += 1
            if done[0] % 100 == 0 or not o.clean:
                print(f"{arch}: {done[0]}/{args.count}"
                      + ("" if o.clean else f"  FINDING {o.kind} #{o.index} {o.mutation}: "
                         f"{o.detail[:160]}"), file=sys.stderr)

        outcomes = fuzz.run_mutants(fuzz.mutants(src, args.count, seed=args.seed), out,
                                    jobs=args.jobs, time_limit=args.time_limit,
                                    on_outcome=progress)
        o0_seconds = time.perf_counter() - t0
        summary = fuzz.summarize(outcomes)
        ok = [o.index for o in outcomes if o.kind == "ok"]
        sample = sorted(random.Random(args.seed).sample(ok, min(args.compile_sample, len(ok))))
        t1 = time.perf_counter()
        compiled = fuzz.run_mutants(
            fuzz.pick(fuzz.mutants(src, args.count, seed=args.seed), sample), out / "compile",
            stages=("load", "O0", "compile"), jobs=args.jobs, time_limit=600)
        csum = fuzz.summarize(compiled)
        findings += len(summary["findings"]) + len(csum["findings"])
        report[arch] = {"load_O0": summary, "load_O0_seconds": round(o0_seconds, 1),
                        "compile_sample": csum,
                        "compile_seconds": round(time.perf_counter() - t1, 1)}
        print(f"{arch}: {args.count} mutants through load + O0 in {o0_seconds:.0f} s: "
              f"{summary['kinds']}; peak child RSS {summary['max_rss_mb']} MB, slowest "
              f"{summary['max_seconds']} s; compile of {len(sample)} that passed O0: "
              f"{csum['kinds']}")
        for name, kinds in summary["by_mutation"].items():
            print(f"  {name:<28} {kinds}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"findings: {findings}")
    return 0 if findings == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

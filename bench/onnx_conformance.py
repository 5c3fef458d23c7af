"""ONNX's backend node tests through Lamina: every case whose ops the lowering claims.

    python bench/onnx_conformance.py [--filter SUBSTRING] [--json out.json]

Collects ``onnx.backend.test.case.node.collect_testcases()``, keeps the cases whose ops are all in
``lower.registry.supported_ops()``, compiles each in process (``api.compile``, one static bucket),
runs it on the TVM runtime and compares with ONNX's expected outputs (ONNX's tolerances, at least
1e-5 absolute for float32). Prints the counts: passed; refused, by reason; opset-related
refusals; failed, each named. Exit status 1 if any case failed. The runner lives in
``tests/backends/tvm/onnx_conformance.py`` (the CI test runs a seeded subset of the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--json", help="also write every case's outcome here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")

    import onnx

    from tests.backends.tvm.onnx_conformance import in_scope_cases, run_cases, summary

    cases = [c for c in in_scope_cases() if args.filter in c.name]
    print(f"onnx {onnx.__version__} (opsets up to {onnx.defs.onnx_opset_version()}): "
          f"{len(cases)} in-scope node tests", flush=True)
    t0 = time.perf_counter()
    results = run_cases(cases, progress=True)
    print(summary(results))
    print(f"time: {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n",
                                   encoding="utf-8")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""How long an untuned ``lamina compile`` of the real all-MiniLM-L6-v2 takes (both exporters).

    python bench/compile_time.py [--budget 120] [--buckets 1x16,1x64,1x128,4x128]

Compiles with the default pipeline and an empty tuning database (a temporary one, so earlier
tuning does not change the figure), prints the seconds per exporter and exits 1 when one exceeds
``--budget`` (default 120 s, what an untuned compile should stay under on a 2-core machine). A
benchmark, not a test: the figure depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

EXPORTS = [("torchscript", 17), ("dynamo", 18)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds allowed per compile")
    ap.add_argument("--buckets", default="1x16,1x64,1x128,4x128")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import lamina
    from lamina.zoo import export_model

    buckets = [tuple(int(x) for x in b.split("x")) for b in args.buckets.split(",")]
    over = False
    with tempfile.TemporaryDirectory(prefix="lamina-compile-time-") as tmp:
        for exporter, opset in EXPORTS:
            path = export_model("minilm", exporter, opset)
            t0 = time.perf_counter()
            lamina.compile(path, Path(tmp) / f"minilm-{exporter}.lamina", buckets=buckets,
                           tuning_db=str(Path(tmp) / f"tuning-{exporter}"))
            seconds = time.perf_counter() - t0
            over |= seconds > args.budget
            print(f"minilm {exporter} opset {opset}: compile {seconds:.1f} s "
                  f"(budget {args.budget:.0f} s{', OVER' if seconds > args.budget else ''})")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

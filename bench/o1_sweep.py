"""O1 fusion counts and accuracy on base-size, randomly initialised encoders (and the real MiniLM).

    python bench/o1_sweep.py [--archs bert distilbert roberta electra minilm] [--json out.json]

For each architecture and exporter (TorchScript opset 17, dynamo opset 18) it exports the model
(cached in $LAMINA_TEST_CACHE or ~/.cache/lamina-tests; base sizes take minutes the first time),
runs `O1`, counts the fused ops and compares the O1 graph with the exported file in ONNX Runtime at
batch 2, seq 32 with a padded second row. The tests do the same on tiny configs; this is the
full-size evidence.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LAYERS = {"bert": 12, "distilbert": 6, "roberta": 12, "electra": 12, "minilm": 6}
EXPORTS = [("torchscript", 17), ("dynamo", 18)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    import numpy as np

    import lamina.passes  # noqa: F401  (registers the passes O1 names)
    from lamina.backends.reference import run
    from lamina.compiler.frontend import load_model
    from lamina.compiler.frontend.feeds import make_feeds
    from lamina.compiler.pipeline import PassManager, parse_pipeline
    from lamina.zoo import export_model, fusion_counts

    rows = []
    print("| model | exporter | layers | Attention | GELU | LayerNorm | nodes in -> O1 | "
          "max abs diff vs file | O1 time |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.archs:
        for exporter, opset in EXPORTS:
            path = export_model(arch, exporter, opset, tiny=False)
            src = load_model(path)
            n_in = len(list(src.graph))
            t0 = time.perf_counter()
            m1 = PassManager(parse_pipeline("O1")).run(load_model(path))
            dt = time.perf_counter() - t0
            counts = fusion_counts(m1)
            feeds = make_feeds(src, {"batch": 2, "seq": 32})
            feeds["attention_mask"][:] = 1
            feeds["attention_mask"][1, 20:] = 0
            a, b = run(src, feeds), run(m1, feeds)
            diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
            layers = LAYERS[arch]
            ok = (counts["attention"] == counts["gelu"] == layers
                  and counts["layernorm"] == 2 * layers + 1)
            rows.append({"arch": arch, "exporter": exporter, "opset": opset, "layers": layers,
                         **counts, "nodes_in": n_in, "nodes_o1": len(list(m1.graph)),
                         "max_abs_diff": diff, "o1_seconds": round(dt, 1), "expected": ok})
            print(f"| {arch} | {exporter} op{opset} | {layers} | {counts['attention']} | "
                  f"{counts['gelu']} | {counts['layernorm']} | {n_in} -> {len(list(m1.graph))} | "
                  f"{diff:.1e} | {dt:.1f} s |{'' if ok else ' UNEXPECTED COUNTS'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["expected"] and r["max_abs_diff"] <= 1e-4 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

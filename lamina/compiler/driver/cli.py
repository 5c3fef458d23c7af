"""The ``lamina`` command line: inspect, passes, opt, compile, run, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from lamina._version import __version__
from lamina.compiler.errors import LaminaError, UsageError

log = logging.getLogger("lamina")


def _names(text: str) -> frozenset[str]:
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="static shape of an input, e.g. input_ids=1x128 (repeatable)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="bind a symbolic dim, e.g. --dim batch=1 --dim seq=128 (repeatable)")


def _add_pipeline_args(p: argparse.ArgumentParser, default: str | None,
                       env: tuple[str, ...] = ("LAMINA_PIPELINE",)) -> None:
    # The first of ``env`` that is set overrides ``default`` (None: the verb's own default).
    default = next((os.environ[e] for e in env if os.environ.get(e)), default)
    shown = default or "O1 with the sparsity passes, see --no-sparsity"
    p.add_argument(
        "--pipeline",
        default=default,
        help=f"pass pipeline: a named one (O0, O1) or 'a,b{{key=value}}' (default {shown})",
    )
    p.add_argument("--load-passes", action="append", default=[], metavar="MODULE",
                   help="import a module (or .py file) that registers extra passes (repeatable)")
    g = p.add_argument_group("IR dumps and checks")
    g.add_argument(
        "--print-ir-after-all", action="store_true", help="print the IR after every pass"
    )
    g.add_argument("--print-ir-after", type=_names, default=frozenset(), metavar="PASSES",
                   help="print the IR after these passes (comma separated)")
    g.add_argument("--print-ir-before", type=_names, default=frozenset(), metavar="PASSES",
                   help="print the IR before these passes (comma separated)")
    g.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR after every pass that changed it")
    g.add_argument("--print-ir-after-failure", action="store_true",
                   help="print the IR when a pass fails")
    g.add_argument("--dump-ir", metavar="DIR", default=os.environ.get("LAMINA_DUMP_IR"),
                   help="write NNN_<pass>.{txt,onnx,diff}, pipeline.txt and stats.json to DIR")
    g.add_argument("--pass-timing", action="store_true", help="report the time of each pass")
    g.add_argument("--pass-stats", action="store_true", help="report what each pass did")
    g.add_argument(
        "--verify-each",
        action="store_true",
        help="run the graph before and after each pass on ONNX Runtime and check the error",
    )
    g.add_argument("--debug-match", type=_names, default=frozenset(), metavar="PASSES",
                   help="explain why patterns of these passes did not match (or 'all')")


def _debug_from(args: argparse.Namespace):
    from lamina.compiler.driver.api import Debug

    return Debug(
        print_ir_after_all=args.print_ir_after_all, print_ir_after=args.print_ir_after,
        print_ir_before=args.print_ir_before, print_ir_after_change=args.print_ir_after_change,
        print_ir_after_failure=args.print_ir_after_failure, dump_ir=args.dump_ir,
        pass_timing=args.pass_timing, pass_stats=args.pass_stats, verify_each=args.verify_each,
        debug_match=args.debug_match,
    )


def _shapes_from(args: argparse.Namespace) -> tuple[dict[str, list[int]], dict[str, int]]:
    from lamina.compiler.frontend import parse_dim, parse_input_shape

    shapes = dict(parse_input_shape(t) for t in args.input_shape)
    dims = dict(parse_dim(t) for t in args.dim)
    return shapes, dims


# -----------------------------------------------------------------------------------------------
# verbs

def cmd_inspect(args: argparse.Namespace) -> int:
    from lamina.compiler.driver import api
    from lamina.compiler.driver.inspect import describe, format_description

    shapes, dims = _shapes_from(args)
    model = api.load(args.model, input_shapes=shapes, dims=dims)
    canonical, _ = api.optimize(model.clone(), "O0")
    try:  # the O1 form locates heads and neurons for the sparsity report; optional
        fused, _ = api.optimize(canonical.clone(), "O1")
    except LaminaError as exc:
        log.info("inspect: no O1 form for the head/neuron report (%s)", exc)
        fused = None
    info = describe(model, canonical, fused)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        sys.stdout.write(format_description(args.model, info))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from lamina.compiler.driver import api
    from lamina.compiler.pipeline import registered_passes, registered_pipelines
    from lamina.compiler.pipeline.registry import option_infos

    api.load_passes(args.load_passes)
    out = []
    out.append("Passes:")
    for name, cls in registered_passes().items():
        out.append(f"  {name:<24} {cls.doc_line()}")
        for info in option_infos(cls):
            out.append(f"      {info.name}: {info.type} = {info.default!r}  {info.doc}")
    out.append("")
    out.append("Pipelines:")
    for name, (text, doc) in registered_pipelines().items():
        out.append(f"  {name:<24} {doc}")
        out.append(textwrap.indent(textwrap.fill(text, 96), "      "))
    print("\n".join(out))
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    from lamina.compiler.driver import api
    from lamina.compiler.ir import count_nodes

    api.load_passes(args.load_passes)
    shapes, dims = _shapes_from(args)
    model = api.load(args.model, input_shapes=shapes, dims=dims)
    before = count_nodes(model)
    model, report = api.optimize(model, args.pipeline, _debug_from(args), dims=dims)
    path = api.save(model, args.output)
    print(
        f"lamina: wrote {path} ({before} -> {count_nodes(model)} nodes; "
        f"pipeline {report.pipeline})",
        file=sys.stderr,
    )
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    import time

    from lamina.compiler.driver import api

    api.load_passes(args.load_passes)
    buckets = _parse_buckets(args.buckets) if args.buckets else None
    quantize = None
    prune = None
    if args.prune_tokens:
        if args.quantize:
            raise UsageError("--prune-tokens and --quantize int8 cannot be combined yet; "
                             "compile with one of them")
        prune = _length_config(args)
    elif args.quantize == "int8":
        quantize = _quantize_config(args)
    elif args.report or args.plot or (args.calibration and args.precision == "fp32"):
        raise UsageError("--calibration, --report and --plot belong to --quantize int8 or "
                         "--prune-tokens (--calibration also to --precision bf16)")
    start = time.perf_counter()
    out = api.compile(
        args.model,
        args.output,
        pipeline=args.pipeline,
        buckets=buckets,
        target=args.target,
        threads=args.threads,
        tune_trials=args.tune_trials,
        tuning_db=args.tuning_db,
        debug=_debug_from(args),
        quantize=quantize,
        sparsity=not args.no_sparsity,
        packed=_parse_packed(getattr(args, "packed", None)),
        packed_seqs=getattr(args, "packed_seqs", 32),
        prune_tokens=prune,
        progress=lambda m: print(f"lamina: {m}", file=sys.stderr),
        precision=args.precision,
        precision_texts=args.calibration,
        tokenizer=args.tokenizer,
    )
    if quantize is not None:
        import json as _json

        manifest = _json.loads((Path(out) / "manifest.json").read_text())
        info = manifest.get("extra", {}).get("quantization", {})
        print(
            f"lamina: INT8 ({info.get('pipeline', '')}): {info.get('quantized_ops')} ops "
            "quantized, "
            f"mean cosine {info.get('cosine')}, kept in fp32: "
            f"{', '.join(info.get('fp32_ops') or []) or 'none'}",
            file=sys.stderr,
        )
    print(f"lamina: wrote {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _length_config(args: argparse.Namespace):
    from lamina.compiler.driver.length import LengthSearchConfig, check_max_loss

    check_max_loss(args.max_loss)
    if not args.calibration or not args.tokenizer:
        raise UsageError("the length search needs --calibration FILE (sentences, one a line) and "
                         "--tokenizer DIR")
    if not Path(args.calibration).is_file():
        raise UsageError(f"--calibration {args.calibration}: no such file")
    return LengthSearchConfig(calibration=args.calibration, tokenizer=args.tokenizer,
                              max_loss=args.max_loss, batch=getattr(args, "search_batch", 8),
                              plot=args.plot, report=args.report,
                              max_configs=getattr(args, "max_configs", 4),
                              explore_loss=0.6 if (args.plot or args.report) else 0.0)


def _tune_length(artifact: str | Path, cfg, threads: int | None = None) -> None:
    """Run the length search on ``artifact`` and write its configurations into it."""
    from lamina.compiler.driver import length

    result, configs = length.tune(artifact, cfg, threads,
                                  progress=lambda m: print(f"lamina: {m}", file=sys.stderr))
    print(length.summary(result), file=sys.stderr)
    for path in (cfg.report, cfg.plot):
        if path:
            print(f"lamina: wrote {path}", file=sys.stderr)
    print(f"lamina: {length.describe_configs(artifact, configs)}", file=sys.stderr)


def cmd_tune_length(args: argparse.Namespace) -> int:
    cfg = _length_config(args)
    _tune_length(args.artifact, cfg, threads=args.threads)
    return 0


def _add_quantize_args(p: argparse.ArgumentParser, *, in_compile: bool) -> None:
    g = p.add_argument_group(
        "INT8 quantization" + (" (with --quantize int8)" if in_compile else "")
    )
    g.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration data: a text file (one text a line, with --tokenizer) or an .npz of "
        "feeds",
    )
    g.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="directory with tokenizer.json (for a text --calibration)",
    )
    g.add_argument(
        "--calibration-size",
        type=int,
        default=300,
        metavar="N",
        help="calibration samples (default 300); the next 200 measure accuracy for --target-cos",
    )
    g.add_argument(
        "--mode",
        choices=["static", "dynamic"],
        default="static",
        help="static: activation scales calibrated; dynamic: computed at run time",
    )
    g.add_argument(
        "--method",
        choices=["minmax", "percentile", "entropy", "mse"],
        default="minmax",
        help="calibration range method (static mode)",
    )
    g.add_argument(
        "--activation",
        choices=["u8", "s8"],
        default="u8",
        help="activation type: u8 asymmetric or s8 symmetric (static mode)",
    )
    g.add_argument(
        "--weight-bits",
        type=int,
        choices=[7, 8],
        default=None,
        help="weight bits: 7 is what the AVX2 INT8 kernels run without int16 saturation "
        + ("(default: from the target's INT8 kernels, 7 on AVX2 and 8 elsewhere)" if in_compile
           else "(default 8; lamina compile picks from its target)"),
    )
    g.add_argument(
        "--target-cos",
        type=float,
        default=0.995,
        help="keep the most sensitive ops in fp32 until the mean cosine of the first output to "
        "fp32 reaches this (default 0.995); 0 quantizes everything without measuring",
    )
    g.add_argument(
        "--smooth-quant",
        type=float,
        default=None,
        metavar="ALPHA",
        help="SmoothQuant migration with this alpha before quantizing (exact in fp32; default "
        "0.8 when --calibration is given, 0 turns it off)",
    )
    g.add_argument(
        "--report", metavar="FILE.json", help="write the per-layer sensitivity table and result"
    )
    g.add_argument("--plot", metavar="FILE.png", help="draw per-layer sensitivity (matplotlib)")


def _quantize_config(args: argparse.Namespace):
    from lamina.compiler.driver.quantize import QuantizeConfig

    if not args.calibration and (args.mode == "static" or args.target_cos):
        raise UsageError(
            "INT8 quantization needs --calibration FILE (texts with --tokenizer DIR, or an .npz)"
        )
    if args.calibration_size <= 0:
        raise UsageError(f"--calibration-size must be positive, got {args.calibration_size}")
    return QuantizeConfig(
        calibration=args.calibration,
        tokenizer=args.tokenizer,
        mode=args.mode,
        method=args.method,
        activation=args.activation,
        calibration_size=args.calibration_size,
        target_cos=args.target_cos or None,
        smooth_alpha="auto" if args.smooth_quant is None else (args.smooth_quant or None),
        weight_bits=args.weight_bits,
        always_sensitivity=bool(args.plot or args.report),
        report=args.report,
        plot=args.plot,
    )


def _quantize_outputs(cfg, result) -> None:
    total = len(result.quantized) + len(result.fp32)
    line = f"lamina: INT8 {cfg.mode}: {len(result.quantized)} of {total} ops quantized"
    if result.cosine is not None:
        line += (f"; mean cosine to fp32 {result.cosine:.5f} (target {cfg.target_cos}) on the "
                 "held-out samples")
    if result.fp32:
        line += f"; kept in fp32: {', '.join(result.fp32)}"
    print(line, file=sys.stderr)


def cmd_quantize(args: argparse.Namespace) -> int:
    from lamina.compiler.driver import api
    from lamina.compiler.driver.quantize import quantize_model

    api.load_passes(args.load_passes)
    cfg = _quantize_config(args)
    model = api.load(args.model)
    model, report = api.optimize(model, args.pipeline, _debug_from(args))
    model, result = quantize_model(model, cfg)
    path = api.save(model, args.output)
    _quantize_outputs(cfg, result)
    print(f"lamina: wrote {path} (pipeline {report.pipeline},{result.pipeline})", file=sys.stderr)
    return 0


def _parse_packed(text: str | None) -> list[int] | bool:
    """``--packed``: 'auto' (the default token buckets) or token counts, e.g. 64,128,256."""
    if text is None:
        return False
    if text.strip().lower() == "auto":
        return True
    try:
        tokens = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(
            f"--packed {text!r}: give 'auto' or token counts, e.g. 64,128,256"
        ) from None
    if not tokens or tokens[0] < 1:
        raise UsageError(f"--packed {text!r}: token counts must be positive")
    return tokens


def _parse_buckets(text: str) -> list[tuple[int, int]]:
    buckets = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            b, s = item.split("x")
            bucket = (int(b), int(s))
        except ValueError:
            raise UsageError(
                f"--buckets {text!r}: each bucket is BATCHxSEQ, e.g. 1x128,4x64"
            ) from None
        if bucket[0] <= 0 or bucket[1] <= 0:
            raise UsageError(f"--buckets {text!r}: sizes must be positive")
        buckets.append(bucket)
    if not buckets:
        raise UsageError("--buckets is empty")
    return sorted(set(buckets))


def cmd_run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from lamina.backends import tvm as tvm_backend

    feeds: dict[str, np.ndarray] = {}
    for item in args.input:
        if "=" not in item:
            raise UsageError(f"--input {item!r}: expected NAME=FILE.npy")
        name, file = item.split("=", 1)
        if not Path(file).exists():
            raise UsageError(f"--input {name}: no such file {file!r}")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"--input {name}: {file!r} is not a .npy array ({exc})") from None
    art = tvm_backend.load(args.artifact, threads=args.threads)
    if args.text:
        if not args.tokenizer:
            raise UsageError("--text needs --tokenizer DIR (a directory with tokenizer.json)")
        from lamina.compiler.frontend.text import tokenize

        feeds.update(tokenize(args.text, args.tokenizer, [i.name for i in art.inputs]))
    if not feeds:
        raise UsageError("give inputs with --input NAME=FILE.npy or --text ... --tokenizer DIR")
    kw = {"budget_ms": args.budget_ms, "length_config": args.length_config}
    art.run(feeds, **kw)  # warm-up
    start = time.perf_counter()
    outs = art.run(feeds, **kw)
    ms = 1e3 * (time.perf_counter() - start)
    for name, arr in outs.items():
        flat = np.asarray(arr).reshape(-1)
        preview = np.array2string(flat[:8], precision=5, separator=", ")
        print(f"{name}: {arr.dtype} {list(arr.shape)} {preview}{' ...' if flat.size > 8 else ''}")
        if args.save:
            np.save(Path(args.save) / f"{name}.npy", arr)
    print(f"time: {ms:.2f} ms (one call, after a warm-up)")
    if getattr(art, "last_plan", ""):
        print(f"ran as: {art.last_plan}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import numpy as np

    from lamina.compiler.driver import api
    from lamina.passes.sparsity._analysis import analyze_weight
    from lamina.passes.sparsity._prune import matmul_weight_values, prune_model

    patterns = [p.strip() for p in args.pattern.split(",") if p.strip()]
    model = api.load(args.model)
    reference = model.clone() if args.tokenizer else None
    stats = prune_model(model, args.sparsity, patterns)
    path = api.save(model, args.output)
    zeros = [analyze_weight(v.const_value.numpy()).zeros for v, _ in matmul_weight_values(model)]
    print(
        f"lamina: wrote {path}: pattern {args.pattern}, sparsity {args.sparsity:g}; "
        f"{stats['weights']} weights, {stats['heads']} heads, {stats['neurons']} neurons pruned; "
        f"matmul weights now {100 * float(np.mean(zeros)) if zeros else 0:.1f}% zeros",
        file=sys.stderr,
    )
    if args.tokenizer:
        from lamina.compiler.driver.prune import accuracy_cost, read_texts

        acc = accuracy_cost(reference, model, read_texts(args.corpus, args.texts), args.tokenizer)
        print(
            f"accuracy cost on {acc['texts']} held-out sentences (no fine-tuning): mean cosine "
            f"{acc['mean_cosine']:.4f} (min {acc['min_cosine']:.4f}) vs the unpruned model, top-1 "
            f"neighbour agreement {100 * acc['top1_neighbour_agreement']:.1f}%"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lamina.compiler.driver.bench import main as bench_main

    return bench_main(args)


# -----------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina",
        description="Lamina: a graph compiler for Transformer encoders (ONNX -> tuned CPU code)",
    )
    parser.add_argument("--version", action="version", version=f"lamina {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("inspect", help="describe a model: I/O, ops, parameters, architecture")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("passes", help="list registered passes, their options, and named pipelines")
    p.add_argument("--load-passes", action="append", default=[], metavar="MODULE")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("opt", help="run a pass pipeline on a model (graph level); writes ONNX")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, help="output .onnx file (runs in ONNX Runtime)")
    _add_model_args(p)
    _add_pipeline_args(p, "O0")
    p.set_defaults(func=cmd_opt)

    p = sub.add_parser("compile", help="compile a model into a .lamina artifact (TVM, host CPU)")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, help="the artifact directory, NAME.lamina")
    p.add_argument("--buckets", help="(batch x seq) shapes to compile, e.g. 1x32,1x128,4x128")
    p.add_argument(
        "--target",
        default=os.environ.get("LAMINA_TARGET", "auto"),
        help="auto (detect the host), a preset (x86-avx2, x86-avx512, x86-avx512-vnni, "
        "x86-avx512-bf16, x86-avx512-amx), or TVM target JSON",
    )
    p.add_argument("--threads", type=int, default=None, help="threads the artifact runs with")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="what dense layers compute in: fp32 (default) or bf16 (bf16 inputs, fp32 "
        "accumulation; needs AVX512-BF16 or AMX-BF16; the accuracy cost is measured on "
        "--calibration texts, default data/corpus/calibration.txt, with --tokenizer)",
    )
    p.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        help="MetaSchedule trials to spend (0: use database records and default schedules)",
    )
    p.add_argument(
        "--tuning-db",
        default=os.environ.get("LAMINA_TUNING_DB"),
        help="tuning database directory (default: a per-user cache directory)",
    )
    p.add_argument(
        "--no-sparsity",
        action="store_true",
        help="leave pruned weights dense (no shrink-structured / encode-sparsity; with --quantize "
        "int8, no block-sparse INT8 kernels)",
    )
    p.add_argument(
        "--packed",
        nargs="?",
        const="auto",
        default=None,
        metavar="TOKENS",
        help="also compile padding-free functions (uneven batches run without padding): "
        "'auto' (token buckets 32..1024) or token counts, e.g. 64,128,256",
    )
    p.add_argument(
        "--packed-seqs",
        type=int,
        default=32,
        help="with --packed: the most sequences one packed call holds (default 32)",
    )
    _add_pipeline_args(p, None, env=("LAMINA_COMPILE_PIPELINE", "LAMINA_PIPELINE"))
    p.add_argument(
        "--quantize", choices=["int8"], help="INT8: O1 then quantize-int8 with accuracy fallback"
    )
    _add_quantize_args(p, in_compile=True)
    g = p.add_argument_group("token pruning (with --prune-tokens; --calibration, --tokenizer, "
                             "--report and --plot as above)")
    g.add_argument("--prune-tokens", action="store_true",
                   help="compile layer-by-layer padding-free functions and search per-layer "
                   "token keep ratios against --max-loss on --calibration sentences")
    g.add_argument("--max-loss", type=float, default=0.08,
                   help="largest loss of top-1 neighbour agreement allowed (default 0.08)")
    g.add_argument("--max-configs", type=int, default=4,
                   help="length configurations kept for run(budget_ms=) (default 4; 0: all)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "tune-length",
        help="search token pruning's per-layer keep ratios for an artifact compiled with "
        "--prune-tokens; writes its length configurations (and a Pareto plot / report)",
    )
    p.add_argument("artifact", help="a NAME.lamina directory compiled with --prune-tokens")
    p.add_argument("--calibration", required=True, metavar="FILE",
                   help="sentences, one a line (the last third is held out)")
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="directory with tokenizer.json")
    p.add_argument("--max-loss", type=float, default=0.08,
                   help="largest loss of top-1 neighbour agreement allowed (default 0.08)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the latency-vs-agreement Pareto curve")
    p.add_argument("--report", metavar="FILE.json", help="write every searched point as JSON")
    p.add_argument("--max-configs", type=int, default=4,
                   help="length configurations kept for run(budget_ms=) (default 4; 0: all)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_tune_length)

    p = sub.add_parser(
        "quantize", help="quantize a model to INT8 (QDQ ONNX that ONNX Runtime runs)"
    )
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, help="output .onnx file (QDQ form)")
    _add_quantize_args(p, in_compile=False)
    _add_pipeline_args(p, "O1")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("run", help="run a .lamina artifact")
    p.add_argument("artifact", help="a NAME.lamina directory")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--text", action="append", help="text to tokenize (repeatable: a batch)")
    p.add_argument("--tokenizer", help="directory with tokenizer.json (for --text)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save", metavar="DIR", help="save the outputs as DIR/<name>.npy")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="token-pruned artifacts: run the most accurate length configuration "
                   "expected to finish within this many milliseconds")
    p.add_argument("--length-config", default=None, metavar="NAME",
                   help="token-pruned artifacts: run this length configuration (or 'unpruned')")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "prune", help="magnitude-prune matmul weights (makes sparse models to study)"
    )
    p.add_argument("model", help="an .onnx file")
    p.add_argument("-o", "--output", required=True, help="the pruned .onnx file")
    p.add_argument("--sparsity", type=float, required=True, help="fraction to zero, e.g. 0.9")
    p.add_argument(
        "--pattern",
        default="unstructured",
        help="unstructured, RxC blocks in [out, in] order (4x1, 1x4, 16x1...), 2:4, heads, "
        "neurons, or heads,neurons (default unstructured)",
    )
    p.add_argument(
        "--tokenizer", help="directory with tokenizer.json: print the accuracy cost on real text"
    )
    p.add_argument(
        "--corpus", help="sentences for the accuracy figures (default data/corpus/heldout.txt)"
    )
    p.add_argument("--texts", type=int, default=64, help="how many sentences (default 64)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "bench", help="benchmark Lamina against ONNX Runtime and PyTorch, side by side"
    )
    from lamina.compiler.driver.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    _debug_anywhere(parser, sub)
    return parser


def _debug_anywhere(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """``--debug`` before or after the verb; no option abbreviations (``--debug`` must never be
    read as a prefix of ``--debug-match``)."""
    parser.allow_abbrev = False
    for p in sub.choices.values():
        p.allow_abbrev = False
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks and debug logs",
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("LAMINA_DEBUG") == "1"
    from lamina.compiler.driver.logs import setup_logging, silence_native_stderr

    setup_logging(debug)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LaminaError as exc:
        if debug:
            raise
        print(f"lamina: error: {exc}", file=sys.stderr)
        if argv is None:  # a process of its own: TVM's C++ teardown warnings must not follow
            silence_native_stderr()
        return exc.exit_code
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"lamina: internal error: {type(exc).__name__}: {first}; rerun with --debug for the "
            "traceback and report it",
            file=sys.stderr,
        )
        if argv is None:
            silence_native_stderr()
        return 3


if __name__ == "__main__":
    sys.exit(main())

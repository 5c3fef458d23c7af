"""The ``lamina`` command line: inspect, passes, opt, compile, run, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from lamina import __version__
from lamina.compiler.errors import LaminaError, UsageError

log = logging.getLogger("lamina")


def _names(text: str) -> frozenset[str]:
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="static shape of an input, e.g. input_ids=1x128 (repeatable)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="bind a symbolic dim, e.g. --dim batch=1 --dim seq=128 (repeatable)")


def _add_pipeline_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--pipeline", default=os.environ.get("LAMINA_PIPELINE", default),
                   help=f"pass pipeline: a named one (O0, O1) or 'a,b{{key=value}}' (default {default})")
    p.add_argument("--load-passes", action="append", default=[], metavar="MODULE",
                   help="import a module (or .py file) that registers extra passes (repeatable)")
    g = p.add_argument_group("IR dumps and checks")
    g.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
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
    g.add_argument("--verify-each", action="store_true",
                   help="run the graph before and after each pass on ONNX Runtime and check the error")
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


# ----------------------------------------------------------------------------------------------- verbs

def cmd_inspect(args: argparse.Namespace) -> int:
    from lamina.compiler.driver import api
    from lamina.compiler.driver.inspect import describe, format_description

    shapes, dims = _shapes_from(args)
    model = api.load(args.model, input_shapes=shapes, dims=dims)
    canonical, _ = api.optimize(model.clone(), "O0")
    info = describe(model, canonical)
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
    print(f"lamina: wrote {path} ({before} -> {count_nodes(model)} nodes; pipeline {report.pipeline})",
          file=sys.stderr)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    import time

    from lamina.compiler.driver import api

    api.load_passes(args.load_passes)
    buckets = _parse_buckets(args.buckets) if args.buckets else None
    start = time.perf_counter()
    out = api.compile(
        args.model, args.output, pipeline=args.pipeline, buckets=buckets, target=args.target,
        threads=args.threads, tune_trials=args.tune_trials, tuning_db=args.tuning_db,
        debug=_debug_from(args), packed=_parse_packed(getattr(args, "packed", None)),
        packed_seqs=getattr(args, "packed_seqs", 32),
    )
    print(f"lamina: wrote {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
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
        raise UsageError(f"--packed {text!r}: give 'auto' or token counts, e.g. 64,128,256") from None
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
            raise UsageError(f"--buckets {text!r}: each bucket is BATCHxSEQ, e.g. 1x128,4x64") from None
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
        from lamina.compiler.driver.text import tokenize

        feeds.update(tokenize(args.text, args.tokenizer, [i.name for i in art.inputs]))
    if not feeds:
        raise UsageError("give inputs with --input NAME=FILE.npy or --text ... --tokenizer DIR")
    art.run(feeds)  # warm-up
    start = time.perf_counter()
    outs = art.run(feeds)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from lamina.compiler.driver.bench import main as bench_main

    return bench_main(args)


# ----------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina", description="Lamina: a graph compiler for Transformer encoders (ONNX -> tuned CPU code)")
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
    p.add_argument("--target", default=os.environ.get("LAMINA_TARGET", "auto"),
                   help="auto (detect the host), a preset (x86-avx2, x86-avx512, x86-avx512-vnni), or TVM "
                        "target JSON")
    p.add_argument("--threads", type=int, default=None, help="threads the artifact runs with")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule trials to spend (0: use database records and default schedules)")
    p.add_argument("--tuning-db", default=os.environ.get("LAMINA_TUNING_DB"),
                   help="tuning database directory (default: a per-user cache directory)")
    p.add_argument("--packed", nargs="?", const="auto", default=None, metavar="TOKENS",
                   help="also compile padding-free functions (uneven batches run without padding): "
                        "'auto' (token buckets 32..1024) or token counts, e.g. 64,128,256")
    p.add_argument("--packed-seqs", type=int, default=32,
                   help="with --packed: the most sequences one packed call holds (default 32)")
    _add_pipeline_args(p, os.environ.get("LAMINA_COMPILE_PIPELINE", "O1"))
    p.set_defaults(func=cmd_compile, pipeline=None)

    p = sub.add_parser("run", help="run a .lamina artifact")
    p.add_argument("artifact", help="a NAME.lamina directory")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    p.add_argument("--text", action="append", help="text to tokenize (repeatable: a batch)")
    p.add_argument("--tokenizer", help="directory with tokenizer.json (for --text)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save", metavar="DIR", help="save the outputs as DIR/<name>.npy")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="benchmark Lamina against ONNX Runtime and PyTorch, side by side")
    from lamina.compiler.driver.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("LAMINA_DEBUG") == "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="lamina: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LaminaError as exc:
        if debug:
            raise
        print(f"lamina: error: {exc}", file=sys.stderr)
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
        print(f"lamina: internal error: {type(exc).__name__}: {first}; rerun with --debug for the "
              "traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())

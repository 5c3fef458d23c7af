"""Lamina's Python API: load, optimize, compile, run.

    from lamina.compiler.driver import api
    model = api.load("minilm.onnx")
    model = api.optimize(model, "O1", verify_each=True)
    api.save(model, "minilm.opt.onnx")
    api.compile("minilm.onnx", "minilm.lamina", buckets=[(1, 128)])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.compiler.frontend import apply_shapes, load_model, save_model
from lamina.compiler.frontend.shapes import max_positions
from lamina.compiler.pipeline import PassContext, PassManager, format_pipeline, parse_pipeline
from lamina.compiler.pipeline.instruments import DumpIR, Instrument, PrintIR, Recorder, VerifyEach
from lamina.compiler.pipeline.plugins import load_entry_points, load_module
from lamina.compiler.pipeline.registry import flatten

if TYPE_CHECKING:  # pragma: no cover
    from lamina.compiler.driver.length import LengthSearchConfig
    from lamina.compiler.driver.quantize import QuantizeConfig

DEFAULT_COMPILE_PIPELINE = "O1"
# What the default compile adds after O1 unless ``sparsity=False`` (``--no-sparsity``): exact
# rewrites that
# only fire on pruned weights; encode-sparsity gets the target's measured cost table.
SPARSITY_PASSES = "shrink-structured,encode-sparsity{{costs={costs}}}"


@dataclass
class Debug:
    """IR printing, dumps and checks around a pipeline (the ``--print-ir-*``, ``--dump-ir``...
    flags)."""

    print_ir_after_all: bool = False
    print_ir_after: frozenset[str] = frozenset()
    print_ir_before: frozenset[str] = frozenset()
    print_ir_after_change: bool = False
    print_ir_after_failure: bool = False
    dump_ir: str | None = None
    pass_timing: bool = False
    pass_stats: bool = False
    verify_each: bool = False
    debug_match: frozenset[str] = frozenset()
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    report_stream: TextIO = field(default_factory=lambda: sys.stderr)


@dataclass
class OptimizeReport:
    recorder: Recorder
    explanations: list[str]
    pipeline: str


def load(
    path: str | os.PathLike,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
) -> ir.Model:
    model = load_model(path)
    if input_shapes or dims:
        apply_shapes(model, input_shapes, dims)
    return model


def save(model: ir.Model, path: str | os.PathLike) -> Path:
    return save_model(model, path)


_passes_registered = False


def register_passes() -> None:
    """Register the passes the driver offers: the built-in ones (:mod:`lamina.passes`, with the
    named pipelines) and those of installed ``lamina.passes`` entry points. The core registry
    imports neither: whoever assembles a pipeline decides which passes exist."""
    global _passes_registered
    if _passes_registered:
        return
    _passes_registered = True
    import lamina.passes  # noqa: F401  (registers the built-in passes and pipelines)

    load_entry_points()


def load_passes(modules: list[str]) -> None:
    """Register the built-in passes, then import each of ``modules`` (a module name or a ``.py``
    file)."""
    register_passes()
    for module in modules:
        load_module(module)


def optimize(
    model: ir.Model,
    pipeline: str = "O0",
    debug: Debug | None = None,
    dims: dict[str, int] | None = None,
) -> tuple[ir.Model, OptimizeReport]:
    """Run ``pipeline`` (text or named) on ``model`` under the instruments ``debug`` asks for."""
    debug = debug or Debug()
    register_passes()
    passes = parse_pipeline(pipeline)
    recorder = Recorder()
    instruments: list[Instrument] = [recorder]
    if (debug.print_ir_after_all or debug.print_ir_after or debug.print_ir_before
            or debug.print_ir_after_change or debug.print_ir_after_failure):
        known = {p.name for p in passes} | {p.name for p in flatten(passes)}
        for name in debug.print_ir_after | debug.print_ir_before:
            if name not in known:
                raise UsageError(
                    f"--print-ir-after/--print-ir-before name {name!r}, which is not in the "
                    f"pipeline ({format_pipeline(passes)})"
                )
        instruments.append(
            PrintIR(
                debug.print_ir_after_all,
                debug.print_ir_after,
                debug.print_ir_before,
                debug.print_ir_after_change,
                debug.print_ir_after_failure,
                debug.stream,
            )
        )
    if debug.verify_each:
        from lamina.backends.reference import run as reference_run

        instruments.append(
            VerifyEach(recorder, reference_run, dims=dims, stream=debug.report_stream)
        )
    if debug.dump_ir:
        instruments.append(DumpIR(debug.dump_ir, recorder))
    ctx = PassContext(debug_match=debug.debug_match, dims=dict(dims or {}))
    crash_dir = Path(debug.dump_ir) / "crash" if debug.dump_ir else None
    model = PassManager(passes, instruments, ctx, crash_dir=crash_dir).run(model)
    if debug.pass_timing:
        debug.report_stream.write(recorder.timing_report())
    if debug.pass_stats:
        debug.report_stream.write(recorder.stats_report())
    if ctx.explanations:
        debug.report_stream.write("\n".join(ctx.explanations) + "\n")
    return model, OptimizeReport(recorder, ctx.explanations, format_pipeline(passes))


def compile(  # noqa: A001 - the verb users expect
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    pipeline: str | None = None,
    buckets: list[tuple[int, int]] | None = None,
    target: str = "auto",
    threads: int | None = None,
    tune_trials: int = 0,
    tuning_db: str | None = None,
    debug: Debug | None = None,
    quantize: QuantizeConfig | None = None,
    sparsity: bool = True,
    packed: bool | list[int] = False,
    packed_seqs: int = 32,
    staged: bool | list[int] = False,
    prune_tokens: LengthSearchConfig | None = None,
    progress: Callable[[str], None] | None = None,
    precision: str = "fp32",
    precision_texts: str | None = None,
    tokenizer: str | None = None,
) -> Path:
    """Compile an ONNX file into a ``.lamina`` artifact for the TVM backend.

    Without ``pipeline`` it runs O1 and, unless ``sparsity=False``, the sparsity passes (they change
    nothing in a dense model). ``quantize``: INT8 after the pipeline (``quantize-int8``, with
    accuracy-driven fallback, see :mod:`lamina.compiler.driver.quantize`); the manifest records what
    was quantized and the cosine reached.

    ``packed``: also compile padding-free functions, one per token bucket (True: the default
    buckets, or a list of token counts), each holding up to ``packed_seqs`` sequences; the runtime
    runs uneven batches through them when that computes fewer tokens (``backends/tvm/varlen.py``).

    ``staged``: also compile the packed functions cut layer by layer (same token buckets), which
    token pruning runs (``backends/tvm/staged.py``).

    ``prune_tokens``: a :class:`lamina.compiler.driver.length.LengthSearchConfig`: compile the
    staged and the packed functions (``packed`` or the default token buckets), then search per-layer
    keep ratios against ``max_loss`` on the calibration sentences and store the length
    configurations in the artifact (``CompiledModel.run(feeds, budget_ms=...)`` picks one);
    ``progress`` receives the search's steps and summary.

    ``precision``: ``fp32`` (default) or ``bf16``: dense layers on constant weights run on the BF16
    kernels (AVX512-BF16 ``vdpbf16ps``, AMX-BF16 tiles), bf16-rounded activations and weights with
    fp32 accumulation, everything else in fp32; the target must have AVX512-BF16 or AMX-BF16 (a
    one-line error otherwise). After the build the accuracy cost against ONNX Runtime fp32 is
    measured on ``precision_texts`` (or this checkout's calibration corpus) with ``tokenizer`` and
    stored as ``extra.precision_cost`` (:mod:`lamina.compiler.driver.precision`); ``progress``
    receives its line.
    """
    from lamina.backends import tvm as tvm_backend
    from lamina.backends.tvm.artifact import sha256_file
    from lamina.backends.tvm.buckets import check_buckets
    from lamina.compiler.frontend import specialize

    model_path = Path(model_path)
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"unknown precision {precision!r}; use fp32 or bf16")
    if precision != "fp32":
        if quantize is not None:
            raise UsageError("--precision bf16 and --quantize int8 cannot be combined yet; "
                             "compile with one of them")
        # Before any work: a target without BF16 instructions is a one-line error.
        tvm_backend.check_precision_target(precision, target, threads)
    if prune_tokens is not None:
        from lamina.compiler.driver.length import check_max_loss

        check_max_loss(prune_tokens.max_loss)
        staged = staged or packed or True
        packed = packed or staged
        if quantize is not None:
            raise UsageError("token pruning and INT8 cannot be combined yet; compile with one")
    model = load_model(model_path)
    if pipeline is None:
        pipeline = DEFAULT_COMPILE_PIPELINE
        if sparsity and _has_pruned_weights(model):
            # The cost table is measured (once per target) only for models with pruned weights.
            from lamina.backends.tvm.kernels.sparse_calibrate import cost_table_for

            if quantize is None:
                costs = cost_table_for(target, threads, tuning_db)
                pipeline += "," + SPARSITY_PASSES.format(costs=costs)
            else:
                # INT8: pruned matmuls stay dense Linear ops for quantize-int8; the lowering runs
                # the block-sparse INT8 kernel on the pruned int8 weights.
                pipeline += ",shrink-structured"
    model, report = optimize(model, pipeline, debug)
    if any(n.op_type == "SelectTokens" and n.domain == "lamina" for n in model.graph):
        raise UsageError("the pipeline prunes tokens (prune-tokens), which fixed-shape functions "
                         "cannot do: compile with --prune-tokens (layer-by-layer functions and "
                         "a length search) and a pipeline without prune-tokens")
    quant_info = None
    if quantize is not None:
        from lamina.compiler.driver.quantize import quantize_model

        if quantize.weight_bits is None:
            # The target's INT8 kernels decide: 7-bit weights for AVX2's vpmaddubsw, quantized
            # (and their accuracy measured) here rather than re-rounded in the lowering.
            quantize = replace(quantize, weight_bits=tvm_backend.int8_weight_bits(target, threads))
        model, qres = quantize_model(model, quantize)
        quant_info = qres.summary()
        report.pipeline += "," + qres.pipeline
    _report_sparsity(report, (debug or Debug()).report_stream)
    positions = max_positions(model)
    buckets = buckets or tvm_backend.default_buckets(positions)
    check_buckets(buckets, positions)
    specialized = {}
    for batch, seq in buckets:
        dims = _bucket_dims(model, batch, seq)
        specialized[(batch, seq)], _ = optimize(specialize(model, dims), "O0", dims=dims)
    extra = {"pipeline": report.pipeline, "source_model": str(model_path.resolve()),
             "source_model_sha256": sha256_file(model_path)}
    if quant_info is not None:
        extra["quantization"] = quant_info
    dump_dir = Path(debug.dump_ir) if debug and debug.dump_ir else None
    packed_graphs = _packed_graphs(model, packed, packed_seqs, positions) if packed else None
    staged_graphs = None
    if staged:
        from lamina.backends.tvm.staged import stage_model
        from lamina.backends.tvm.varlen import NotPackable

        try:
            staged_graphs = [stage_model(p) for p in _packed_graphs(
                model, staged, packed_seqs, positions, flag="--prune-tokens")]
        except NotPackable as e:
            raise UsageError(f"--prune-tokens: this model cannot run layer by layer ({e})") \
                from None
    out = tvm_backend.build_artifact(
        specialized,
        output,
        target=target,
        threads=threads,
        manifest_extra=extra,
        dump_dir=dump_dir,
        io_dims=tvm_backend.io_dims_from_model(model),
        tune_trials=tune_trials,
        tuning_db=tuning_db,
        packed=packed_graphs,
        staged=staged_graphs,
        precision=precision,
        int8_sparse=sparsity,
    )
    if quantize is not None:
        _report_int8_sparsity(out, (debug or Debug()).report_stream)
    if precision != "fp32":
        from lamina.compiler.driver.precision import report_precision_cost

        report_precision_cost(out, model, model_path, texts=precision_texts, tokenizer=tokenizer,
                              threads=threads, progress=progress)
    if prune_tokens is not None:
        from lamina.compiler.driver import length

        result, configs = length.tune(out, prune_tokens, threads, remove_on_error=True,
                                      progress=progress)
        if progress:
            progress(length.summary(result))
            progress(length.describe_configs(out, configs))
    return out


def canonicalize(model: ir.Model, dims: dict[str, int]) -> ir.Model:
    """O0 on a specialized copy (what compile runs on each bucket and packed graph)."""
    return optimize(model, "O0", dims=dims)[0]


def _packed_graphs(
    model: ir.Model, packed: bool | list[int], seqs: int, positions: int | None,
    flag: str = "--packed",
) -> list:
    """The packed graphs for the token buckets ``packed`` asks for; a clear error if the model
    cannot run packed."""
    from lamina.backends.tvm.varlen import NotPackable, default_token_buckets, pack_model

    if seqs < 1:
        raise UsageError(f"--packed-seqs must be >= 1, got {seqs}")
    tokens = default_token_buckets() if packed is True else list(packed)
    out = []
    for t in tokens:
        try:
            out.append(pack_model(model, t, min(seqs, t), positions, canonicalize=canonicalize))
        except NotPackable as e:
            raise UsageError(
                f"{flag}: this model cannot run padding-free ({e}); compile without {flag}"
            ) from None
    return out


def _has_pruned_weights(model: ir.Model, min_zeros: float = 0.05) -> bool:
    """Whether some MatMul / Gemm weight is at least ``min_zeros`` exact zeros."""
    import numpy as np

    from lamina.passes.sparsity._prune import matmul_weight_values

    return any(
        float(np.mean(v.const_value.numpy() == 0)) >= min_zeros
        for v, _ in matmul_weight_values(model)
    )


def _report_sparsity(report: OptimizeReport, stream: TextIO) -> None:
    """The compile log of encode-sparsity: one line per matmul with its decision and predicted
    gain."""
    for rec in report.recorder.records:
        decisions = rec.stats.get("decisions") if rec.name == "encode-sparsity" else None
        if decisions and rec.stats.get("encoded"):
            stream.write(
                f"lamina: encode-sparsity: {rec.stats['encoded']} of {len(decisions)} pruned "
                "matmuls run sparse\n"
            )
            stream.writelines(f"  {line}\n" for line in decisions)
        elif decisions:
            stream.write(
                f"lamina: encode-sparsity: all {len(decisions)} matmuls with zeros stay dense "
                f"(predicted gains {min(_gains(decisions)):.2f}-{max(_gains(decisions)):.2f}x)\n"
            )


def _report_int8_sparsity(artifact: Path, stream: TextIO) -> None:
    """The compile log of the block-sparse INT8 decisions (the lowering's cost model, recorded in
    the manifest): one line per pruned INT8 matmul."""
    from lamina.backends.tvm.artifact import read_manifest

    info = read_manifest(artifact)[1].get("extra", {}).get("int8_sparse")
    if not info:
        return
    stream.write(f"lamina: sparse INT8: {info['sparse']} of {info['pruned']} pruned INT8 matmuls "
                 "run block-sparse\n")
    stream.writelines(f"  {line}\n" for line in info["decisions"])


def _gains(lines: list[str]) -> list[float]:
    return [float(line.rsplit("predicted gain ", 1)[1].rstrip("x")) for line in lines]


def _bucket_dims(model: ir.Model, batch: int, seq: int) -> dict[str, int]:
    """Map a (batch, seq) bucket onto the model's symbolic input dims (dim 0 is batch, dim 1
    sequence)."""
    dims: dict[str, int] = {}
    for value in model.graph.inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, int) or not dim.value:
                continue
            if axis == 0:
                dims[dim.value] = batch
            elif axis == 1:
                dims[dim.value] = seq
    return dims

"""``build_artifact``: static bucket graphs -> a verified artifact directory (the driver's
entry)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.ir.core import indexed_gathers

from ._errors import BackendError
from .artifact import FORMAT, FORMAT_VERSION, LIBRARY, PARAMS, versions, write_artifact
from .buckets import Bucket, parse_buckets
from .build import ScheduleFn, build_module, default_tuning_db, tuning_schedule
from .lower import FunctionInfo, TensorSpec, lower_buckets
from .lower.ops.quant_dense import SparseInt8Policy
from .runtime import BATCH, SEQ
from .target import TargetSpec, resolve_target

if TYPE_CHECKING:
    from lamina.passes.sparsity._cost import Int8CostTable

log = logging.getLogger(__name__)

Dims = Sequence[int | str]
_RESERVED = {"format", "format_version", "lamina_version", "tvm_version", "tvm_ffi_version",
             "created_utc", "target", "threads", "buckets", "inputs", "outputs", "files",
             "staged", "length_configs",
             "manifest_sha256", "build_seconds", "extra", "tuning", "index_checks", "precision"}
# Ops an index passes through unchanged on its way from an input to a Gather (for index_checks).
_INDEX_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})


def io_dims_from_model(model: ir.Model, batch_dim: str | int = 0, seq_dim: str | int = 1
                       ) -> dict[str, list[int | str]]:
    """Roles of the dims of a *dynamic* model's inputs and outputs, for ``build_artifact``.

    A symbolic dim becomes ``"batch"`` or ``"seq"`` when its name is ``batch_dim`` /
    ``seq_dim`` (strings), or when it sits at that position (ints) in an input; outputs reuse
    the roles their symbol names got from the inputs. Static dims stay ints. A tensor with any
    other symbol is left out (``build_artifact`` then infers its dims from the bucket shapes).
    """
    names: dict[str, str] = {}
    for v in model.graph.inputs:
        for i, d in enumerate(v.shape.dims if v.shape is not None else ()):
            if isinstance(d, int):
                continue
            sym = str(d)
            if batch_dim == sym or batch_dim == i:
                names.setdefault(sym, BATCH)
            elif seq_dim == sym or seq_dim == i:
                names.setdefault(sym, SEQ)
    out: dict[str, list[int | str]] = {}
    for v in [*model.graph.inputs, *model.graph.outputs]:
        if v.shape is None:
            continue
        dims: list[int | str] = []
        for d in v.shape.dims:
            if isinstance(d, int):
                dims.append(d)
            elif str(d) in names:
                dims.append(names[str(d)])
            else:  # an exporter's own symbol (unk__0...): leave it to inference from buckets
                log.debug("%r: dim %r has no known role; inferring it from the buckets",
                          v.name, str(d))
                break
        else:
            out[v.name or ""] = dims
    return out


def index_checks(model: ir.Model) -> list[dict[str, Any]]:
    """Inputs whose values index a constant table: ``[{input, size, table}]`` for the manifest.

    An integer graph input that reaches the index operand of a standard ``Gather`` whose data is
    a constant (an embedding table) through shape-only ops (Cast, Reshape, Unsqueeze, ...) must
    hold values in ``[0, size)``, ``size`` being the table's extent on the gathered axis (the
    smallest such table when it feeds several). The runtime checks this with one min/max per
    input before a call (:meth:`CompiledModel.run`).
    """
    checks: dict[str, dict[str, Any]] = {}
    for inp in model.graph.inputs:
        if inp.dtype is None or not inp.dtype.is_integer():
            continue
        for node in indexed_gathers(inp, _INDEX_PASS_THROUGH):
            table = node.inputs[0]
            if table is None or table.shape is None or (
                    table.const_value is None and table.name not in model.graph.initializers):
                continue
            attr = node.attributes.get("axis")
            axis = int(attr.value) if attr is not None else 0
            rank = len(table.shape)
            axis = axis + rank if axis < 0 else axis
            if not 0 <= axis < rank or not isinstance(table.shape[axis], int):
                continue
            size = int(table.shape[axis])
            if inp.name not in checks or size < checks[inp.name]["size"]:
                checks[inp.name or ""] = {"input": inp.name, "size": size,
                                          "table": table.name or ""}
    return [checks[k] for k in sorted(checks)]


def _infer_dims(specs: dict[Bucket, TensorSpec], is_input: bool) -> list[int | str]:
    """Roles from the static shapes alone (see ``build_artifact``)."""
    keys = sorted(specs)
    ranks = {len(s.shape) for s in specs.values()}
    if len(ranks) != 1:
        name = next(iter(specs.values())).name
        raise BackendError(f"{name!r} has a different rank in different buckets")
    many_b = len({b for b, _ in keys}) > 1
    many_s = len({s for _, s in keys}) > 1
    dims: list[int | str] = []
    for i in range(ranks.pop()):
        vals = [specs[k].shape[i] for k in keys]
        is_b = all(v == b for v, (b, _) in zip(vals, keys, strict=True))
        is_s = all(v == s for v, (_, s) in zip(vals, keys, strict=True))
        # A dim that merely equals the bucket's batch/seq in every bucket is trusted when those
        # vary between buckets, or when it sits where encoders put them (batch 0, seq 1).
        if is_b and (many_b or i == 0) and not (is_s and i == 1):
            dims.append(BATCH)
        elif is_s and (many_s or i == 1):
            dims.append(SEQ)
        elif len(set(vals)) == 1:
            dims.append(vals[0])
        else:
            name = next(iter(specs.values())).name
            raise BackendError(f"{name!r} dim {i} varies between buckets ({vals}) but is "
                               "neither the batch nor the sequence dim")
    return dims


def _io_specs(functions: dict[Bucket, FunctionInfo], io_dims: Mapping[str, Dims] | None,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    keys = sorted(functions)
    first = functions[keys[0]]
    result = []
    for kind in ("inputs", "outputs"):
        ref: list[TensorSpec] = getattr(first, kind)
        specs = []
        for idx, t in enumerate(ref):
            per_bucket = {}
            for k in keys:
                other = getattr(functions[k], kind)
                if len(other) != len(ref) or other[idx].name != t.name \
                        or other[idx].dtype != t.dtype:
                    raise BackendError(f"bucket {k[0]}x{k[1]}: {kind} differ from bucket "
                                       f"{keys[0][0]}x{keys[0][1]}'s")
                per_bucket[k] = other[idx]
            if io_dims is not None and t.name in io_dims:
                dims = list(io_dims[t.name])
                for k, s in per_bucket.items():
                    want = [k[0] if d == BATCH else k[1] if d == SEQ else d for d in dims]
                    if list(s.shape) != want:
                        raise BackendError(f"{t.name!r}: io_dims {dims} do not match its shape "
                                           f"{list(s.shape)} in bucket {k[0]}x{k[1]}")
            else:
                dims = _infer_dims(per_bucket, kind == "inputs")
            specs.append({"name": t.name, "dtype": t.dtype, "dims": dims})
        result.append(specs)
    return result[0], result[1]


def _report_tile_search(what: str, best: str, seconds: float, candidates: int,
                        elapsed: float) -> None:
    """Progress of the kernel tile search (tuning), one line per searched kernel shape."""
    sys.stderr.write(f"lamina: tuning kernel tiles: {what}: {best} ({seconds * 1e6:.0f} us, "
                     f"{candidates} candidates, {elapsed:.1f} s)\n")
    sys.stderr.flush()


def _int8_sparse_policy(int8_sparse: bool | SparseInt8Policy, spec: TargetSpec,
                        db: Path) -> SparseInt8Policy | None:
    """The block-sparse INT8 policy of a build: the target's cost table from the tuning database,
    measured there on first use; a host that cannot run the target's VNNI code (a cross-compile)
    uses the table shipped with Lamina instead, and says so."""
    if isinstance(int8_sparse, SparseInt8Policy):
        return int8_sparse
    if not int8_sparse:
        return None

    def table() -> Int8CostTable:
        from lamina.passes.sparsity._cost import SHIPPED_INT8_COSTS, Int8CostTable

        from .kernels.isa import INT8_FEATURES
        from .kernels.sparse_calibrate import int8_cost_table
        from .target import missing_features

        lacks = missing_features(("avx512f", "avx512bw", *INT8_FEATURES["vnni"]))
        if lacks:
            log.warning("sparse INT8: this host lacks %s and cannot measure the target's kernels;"
                        " deciding from the table shipped with Lamina (%s)", ", ".join(lacks),
                        SHIPPED_INT8_COSTS.name)
            return Int8CostTable.load(SHIPPED_INT8_COSTS)
        return Int8CostTable.load(int8_cost_table(spec.tvm_target, db))

    return SparseInt8Policy(table)


def build_artifact(models: Mapping[Bucket, ir.Model], out_path: str | os.PathLike[str], *,
                   target: str | dict[str, Any] | TargetSpec = "auto",
                   threads: int | None = None,
                   manifest_extra: Mapping[str, Any] | None = None,
                   dump_dir: str | os.PathLike[str] | None = None,
                   io_dims: Mapping[str, Dims] | None = None,
                   schedule: str | ScheduleFn | None = "database",
                   kernels: bool = True,
                   tune_trials: int = 0,
                   tuning_db: str | os.PathLike[str] | None = None,
                   packed: Sequence[Any] | None = None,
                   staged: Sequence[Any] | None = None,
                   precision: str = "fp32",
                   int8_sparse: bool | SparseInt8Policy = True) -> Path:
    """Compile one static canonical graph per (batch, seq) bucket into the artifact ``out_path``.

    - ``models``: ``{(batch, seq): model}``, each the canonical graph specialized to its bucket
      (all from one source model, so weights are shared by name).
    - ``target``: ``auto`` | ``host`` | an ISA preset | TVM target JSON (see :mod:`.target`).
    - ``threads``: runtime threads recorded in the manifest (default: the loading host's cores).
    - ``manifest_extra``: recorded verbatim; ``pipeline`` (text), ``source_model_sha256`` and
      ``source_model`` (path, used in error hints) go to the top level, the rest under ``extra``.
    - ``dump_dir``: write the Relax module after every TVM stage to ``dump_dir/tvm/``.
    - ``io_dims``: ``{name: [dim, ...]}`` with ints or ``"batch"`` / ``"seq"`` for every graph
      input and output (see :func:`io_dims_from_model`). Without it, roles are inferred from the
      static shapes: reliable when the buckets vary in batch and seq, positional (batch at dim
      0, seq at dim 1) otherwise.
    - ``schedule``: TIR schedule hook applied after fusion: ``"database"`` (default: the tuning
      database's records where they exist, dlight's defaults elsewhere), ``"dlight"``, ``"none"``
      or a callable ``(mod, target) -> mod``.
    - ``tune_trials`` / ``tuning_db``: stage 3 first tunes that many MetaSchedule trials (0: none,
      reuse records) into the database directory (default :func:`.build.default_tuning_db`, seeded
      from the records shipped in ``backends/tvm/records`` for the same target key).
    - ``packed``: ``varlen.PackedGraph`` s, one padding-free function per token bucket (manifest
      ``packed``; the runtime runs uneven batches through them, see ``packed_runtime.py``).
    - ``staged``: ``staged.StagedGraph`` s, the packed functions cut layer by layer (manifest
      ``staged``; the runtime prunes tokens between layers, see ``pruned_runtime.py``).
    - ``precision``: ``fp32``, or ``bf16`` (dense layers on constant weights take bf16-rounded
      activations and weights with fp32 accumulation, ``lower/ops/bf16_dense.py``; the target must
      have AVX512-BF16 or AMX-BF16, and ``auto`` then picks ``x86-avx512-bf16``). Manifest
      ``precision``.
    - ``int8_sparse``: INT8 layers on pruned weights (4x1 blocks of zeros) run the block-sparse
      INT8 kernel where the target's cost table (measured once per tuning database, the first
      time a pruned INT8 layer is lowered) predicts it faster: ``lower/ops/quant_dense``'s
      ``sparse_choice``. False: never; a ``SparseInt8Policy``: its table. The decisions go to the
      log and the manifest (``extra.int8_sparse``).
    """
    t0 = time.perf_counter()
    buckets = parse_buckets(list(models))
    int8 = any(n.op_type == "DequantizeLinear" for m in models.values() for n in m.graph)
    spec = check_precision_target(precision, target, threads, int8)
    if precision == "bf16" and not kernels:
        raise BackendError("precision bf16 needs the hand-written kernels (kernels=True)")
    extra = dict(manifest_extra or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise BackendError(f"manifest_extra may not set {', '.join(clash)}")
    if tune_trials < 0:
        raise BackendError(f"tune_trials must be >= 0, got {tune_trials}")
    db = Path(tuning_db) if tuning_db is not None else default_tuning_db()
    tuning = None
    if schedule == "database" or tune_trials:
        schedule = tuning_schedule(tune_trials, db)
        tuning = {"trials": tune_trials,
                  "db": str(db)}
    tiles = None
    if kernels and schedule is not None and not isinstance(schedule, str):
        # Kernel tiles: searched (seconds a shape) when tuning, else reused from the database.
        from .tuning.kernel_search import KernelTiles

        tiles = KernelTiles(db, measure=tune_trials > 0, on_search=_report_tile_search)
    packed_funcs = {f"packed_t{p.tokens}_n{p.seqs}": p for p in packed or ()}
    extra_models = {n: p.model for n, p in packed_funcs.items()}
    for sg in staged or ():
        for st in sg.stages:
            extra_models[f"staged_t{sg.tokens}_n{sg.seqs}_{st.name}"] = st.model
    policy = _int8_sparse_policy(int8_sparse, spec, db) if kernels else None
    lowered = lower_buckets({k: models[k] for k in buckets},
                            target=spec.tvm_target if kernels else None, tiles=tiles,
                            extra=extra_models, precision=precision,
                            int8_sparse=policy)
    if policy is not None and policy.decisions:
        extra["int8_sparse"] = {"sparse": policy.sparse, "pruned": len(policy.decisions),
                                "decisions": policy.lines}
        log.info("sparse INT8: %d of %d pruned INT8 matmuls run block-sparse", policy.sparse,
                 len(policy.decisions))
    if lowered.bf16 is not None:
        extra["bf16"] = {"dense_layers": lowered.bf16.layers,
                         "fp32_dense_layers": sorted(set(lowered.bf16.fp32_layers))}
        log.info("bf16: %d dense layers in BF16 kernels, %d kept in fp32", lowered.bf16.layers,
                 len(set(lowered.bf16.fp32_layers)))
    t_lower = time.perf_counter() - t0
    # Build and require only the extra features the kernels use (VNNI only for INT8 kernels...).
    spec = spec.narrowed(lowered.features)
    inputs, outputs = _io_specs(lowered.functions, io_dims)
    ex = build_module(lowered.mod, spec, dump_dir=Path(dump_dir) if dump_dir else None,
                      schedule=schedule)
    t_build = time.perf_counter() - t0 - t_lower

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": spec.to_manifest(),
        # int8 / bf16 when any dense layer runs as an INT8 / BF16 kernel (lossy vs fp32).
        "precision": _precision(lowered),
        "threads": threads,
        "buckets": [{"batch": b, "seq": s, "function": lowered.functions[(b, s)].name,
                     "params": lowered.functions[(b, s)].params} for b, s in buckets],
        "inputs": inputs,
        "outputs": outputs,
        "index_checks": index_checks(models[buckets[0]]),
        "packed": [{"tokens": p.tokens, "seqs": p.seqs, "function": n,
                    "params": lowered.extra[n].params, "inputs": p.inputs,
                    "token_outputs": p.token_outputs, "seq_outputs": p.seq_outputs}
                   for n, p in packed_funcs.items()],
        "staged": _staged_manifest(staged, lowered.extra) if staged else None,
        "pipeline": extra.pop("pipeline", None),
        "source_model_sha256": extra.pop("source_model_sha256", None),
        "source_model": extra.pop("source_model", None),
        "tuning": tuning,
        "build_seconds": {"lower": round(t_lower, 3), "build": round(t_build, 3)},
        "extra": extra,
    }
    if manifest["source_model"] is not None:
        manifest["source_model"] = str(manifest["source_model"])

    def write_lib(p: Path) -> None:
        ex.export_library(str(p))

    def write_params(p: Path) -> None:
        import tvm

        tvm.runtime.save_param_dict_to_file(
            {
                k: tvm.runtime.tensor(np.require(v, requirements="C"))
                for k, v in lowered.params.items()
            },
            str(p),
        )

    out = write_artifact(out_path, manifest, {LIBRARY: write_lib, PARAMS: write_params})
    log.info(
        "built %s (%d buckets, %s) in %.1fs",
        out,
        len(buckets),
        spec.isa_level,
        time.perf_counter() - t0,
    )
    return out


def _precision(lowered: Any) -> str:
    if any(f.int8_layers for f in lowered.functions.values()):
        return "int8"
    if lowered.bf16 is not None and lowered.bf16.layers:
        return "bf16"
    return "fp32"


def check_precision_target(precision: str, target: str | dict[str, Any] | TargetSpec = "auto",
                           threads: int | None = None, int8: bool = False) -> TargetSpec:
    """The resolved target for ``precision`` (``int8``: the model has INT8 layers); a one-line
    error when it cannot run BF16 kernels."""
    from .kernels.isa import bf16_isa
    from .target import host_cpu, host_features

    spec = resolve_target(target, threads, precision, int8)
    if precision == "bf16" and bf16_isa(spec.tvm_target) is None:
        if spec.requested == "auto":
            have = ", ".join(f for f in sorted(host_features()) if f.startswith(("avx512", "amx")))
            raise BackendError(
                "--precision bf16 needs a CPU with AVX512-BF16 or AMX-BF16; this host "
                f"({host_cpu()}) has {have or 'no AVX-512'}")
        raise BackendError(
            f"--precision bf16 needs a target with AVX512-BF16 or AMX-BF16; target "
            f"{spec.requested} ({spec.isa_level}) has neither: use --target auto or "
            "x86-avx512-bf16")
    return spec


def int8_weight_bits(target: str | dict[str, Any] | TargetSpec = "auto",
                     threads: int | None = None) -> int:
    """Weight bits for INT8 on ``target``: 7 where its INT8 family is AVX2 (``vpmaddubsw``
    saturates int16 pair sums of 8-bit weights; 255 * 63 * 2 cannot), else 8."""
    from .kernels.isa import int8_isa

    return 7 if int8_isa(resolve_target(target, threads, int8=True).tvm_target) == "avx2" else 8


def _staged_manifest(staged: Sequence[Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``staged`` entry: the layer structure once, the functions per bucket."""
    first = staged[0]
    return {
        "layers": first.layers,
        "heads": first.heads,
        "scales": first.scales,
        "token_output": first.token_output,
        "seq_outputs": first.seq_outputs,
        "functions": [
            {"tokens": sg.tokens, "seqs": sg.seqs,
             "stages": [{"name": st.name, "function": (fn := f"staged_t{sg.tokens}_n{sg.seqs}_"
                                                               f"{st.name}"),
                         "params": extra[fn].params, "inputs": st.inputs,
                         "outputs": st.outputs} for st in sg.stages]}
            for sg in staged
        ],
    }

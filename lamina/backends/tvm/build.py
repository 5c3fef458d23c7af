"""Relax module -> executable for the host CPU, in named stages that can be dumped.

Stages (each dumped as ``dump_dir/tvm/NN_<stage>.py`` with ``mod.script()`` when asked):

``00_lowered``      the module as lowering produced it (one function per bucket)
``01_legalized``    library dispatch, ``LegalizeOps`` (Relax ops -> TIR), constant folding
``02_fused``        ``FuseOps`` + ``FuseTIR`` (elementwise epilogues merged into producers)
``03_scheduled``    TIR schedules: the ``schedule`` hook (kernels / tuning database / dlight)
``04_dataflow``     ``RewriteDataflowReshape``, ``ToNonDataflow``, ``CallTIRRewrite``...
``05_final``        memory planning and VM lowering, right before code generation

then TIR lowering and LLVM code generation (``tvm.compile`` with no further Relax pipeline).
This is TVM's CPU default pipeline split at its seams, so that tuned kernels and MetaSchedule
databases plug in at stage 3 without copying the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax

from ._errors import BackendError
from .target import TargetSpec

log = logging.getLogger(__name__)

# A schedule hook gets the fused module and the target and returns the scheduled module.
ScheduleFn = Callable[[tvm.IRModule, tvm.target.Target], tvm.IRModule]


def _dlight_cpu(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """TVM's generic CPU rules (reductions, GEMV) on whatever they match; the rest untouched."""
    from tvm.s_tir import dlight

    rules = [dlight.cpu.GEMV(), dlight.cpu.Reduction()]
    with target:
        return dlight.ApplyDefaultSchedule(*rules)(mod)


SCHEDULES: dict[str, ScheduleFn | None] = {"none": None, "dlight": _dlight_cpu}



def default_tuning_db() -> Path:
    """The tuning database used when none is given: ``$LAMINA_TUNING_DB`` (what ``--tuning-db``
    defaults to; the test suite points it at a fresh directory per session), else
    ``$XDG_CACHE_HOME/lamina/tuning`` (``~/.cache/lamina/tuning``). Read at each call, not at
    import."""
    env = os.environ.get("LAMINA_TUNING_DB")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lamina" / "tuning"

SHIPPED_RECORDS = Path(__file__).parent / "records"


def seed_database(db: Path, target: tvm.target.Target) -> bool:
    """Copy the records shipped with Lamina for ``target`` into ``db`` when it has none for it
    yet."""
    from .tuning.meta import target_key

    key = target_key(target)
    src, dst = SHIPPED_RECORDS / key, db / key
    if not src.is_dir():
        # The same CPU level, ISA family and thread count with other extra features (an artifact's
        # target keeps only the features its kernels use, e.g. +avx512vnni for INT8): MetaSchedule's
        # schedules of the remaining ops do not depend on those, so the records apply as they are.
        prefix = key.rsplit("-", 1)[0] + "-"
        src = next((d for d in sorted(SHIPPED_RECORDS.glob(prefix + "*")) if d.is_dir()), src)
    if not src.is_dir() or (dst / "database_tuning_record.json").exists():
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
    log.info("seeded tuning database %s from the shipped records", dst)
    return True


def tuning_schedule(trials: int, db_dir: str | Path | None) -> ScheduleFn:
    """Stage-3 hook: tune ``trials`` MetaSchedule trials into ``db_dir`` (0: reuse records only),
    then apply the database's best schedules, dlight defaults elsewhere (``tuning/``)."""
    db = Path(db_dir) if db_dir is not None else default_tuning_db()

    def schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
        from .tuning import apply, tune

        db.mkdir(parents=True, exist_ok=True)
        seed_database(db, target)
        if trials > 0:
            tune(mod, target, trials=trials, db_dir=db, on_progress=_print_progress)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
        return apply(mod, target, db)

    return schedule


def _print_progress(p: object) -> None:
    """Tuning progress on stderr: one updating line on a terminal, one line per event otherwise."""
    line = "lamina: tuning " + p.line()  # type: ignore[attr-defined]
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line[:160].ljust(160))
    elif getattr(p, "event", "batch") != "batch" or p.task_trials == p.task_budget:  # type: ignore[attr-defined]
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _stages(target: tvm.target.Target, schedule: ScheduleFn | None
            ) -> list[tuple[str, Callable[[tvm.IRModule], tvm.IRModule]]]:
    def seq(*passes: tvm.transform.Pass) -> Callable[[tvm.IRModule], tvm.IRModule]:
        return tvm.transform.Sequential(list(passes))

    t = relax.transform
    return [
        ("legalized", seq(t.RemoveRedundantReshape(), t.CanonicalizeBindings(),
                          relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
                          t.LegalizeOps(), t.AnnotateTIROpPattern(), t.FoldConstant())),
        ("fused", seq(t.FuseOps(), t.FuseTIR(), t.DeadCodeElimination())),
        ("scheduled", (lambda m: schedule(m, target)) if schedule else (lambda m: m)),
        ("dataflow", seq(t.RewriteDataflowReshape(), t.ToNonDataflow(),
                         t.RemovePurityChecking(), t.CallTIRRewrite())),
        ("final", seq(t.StaticPlanBlockMemory(), t.LowerAllocTensor(), t.KillAfterLastUse(),
                      t.LowerRuntimeBuiltin(), t.ComputePrimValue(), t.VMShapeLower(),
                      t.AttachGlobalSymbol())),
    ]


def build_module(mod: tvm.IRModule, target: TargetSpec, *, dump_dir: Path | None = None,
                 schedule: str | ScheduleFn | None = "dlight") -> relax.VMExecutable:
    """Compile ``mod`` for ``target``; with ``dump_dir``, write each stage to ``dump_dir/tvm``."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise BackendError(f"unknown schedule {schedule!r}; use one of {sorted(SCHEDULES)}")
        schedule = SCHEDULES[schedule]
    tgt = target.tvm_target
    tvm_dir = None
    if dump_dir is not None:
        tvm_dir = Path(dump_dir) / "tvm"
        tvm_dir.mkdir(parents=True, exist_ok=True)
        (tvm_dir / "00_lowered.py").write_text(mod.script(), encoding="utf-8")
    with tgt, tvm.transform.PassContext(opt_level=3):
        for i, (name, stage) in enumerate(_stages(tgt, schedule), start=1):
            t0 = time.perf_counter()
            try:
                mod = stage(mod)
            except Exception as e:
                raise BackendError(f"TVM stage {i:02d}_{name} failed: {type(e).__name__}: "
                                   f"{str(e).strip()[:800]}") from e
            log.debug("tvm stage %02d_%s: %.2fs", i, name, time.perf_counter() - t0)
            if tvm_dir is not None:
                (tvm_dir / f"{i:02d}_{name}.py").write_text(mod.script(), encoding="utf-8")
        t0 = time.perf_counter()
        try:
            ex = tvm.compile(mod, tgt, relax_pipeline=None)
        except Exception as e:
            raise BackendError(f"TVM code generation failed: {type(e).__name__}: "
                               f"{str(e).strip()[:800]}") from e
        log.debug("tvm codegen: %.2fs", time.perf_counter() - t0)
    return ex

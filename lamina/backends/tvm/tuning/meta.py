"""Robust MetaSchedule tuning of a legalized Relax module, with a persistent JSON database.

``tune(mod, target, trials=..., db_dir=...)`` tunes every TIR task of ``mod`` that is not already
scheduled (our hand-written kernels carry ``tirx.is_scheduled`` and are skipped), task by task:

* trials are shared out by each task's FLOPs x occurrences, so the few matmul tasks get the budget;
* each task runs in its own ``tune_tasks`` call with our builder (no 40 s import, 60 s time-out)
  and a bounded runner; a task that raises is logged and skipped, the run goes on;
* the database lives in ``db_dir/<target key>/`` (``ms.database.JSONDatabase``) and a ledger
  (``ledger.json``) counts the trials spent per workload, failed ones included, so a second
  compile of the same model and target spends no new trial, and a larger budget only tops up;
* ``on_progress`` receives a :class:`TuneProgress` after every measured batch;
* Ctrl-C stops tuning and keeps every record measured so far (the JSON database appends as it
  measures).

``apply(mod, target, db_dir)`` rewrites the module's PrimFuncs with the best records
(``MetaScheduleApplyDatabase``) and gives the rest CPU default schedules (dlight).

Preconditions (TVM_NOTES.md): static shapes (tuning a symbolic length crashes: tune one module per
bucket), and TIR already legalized (``relax.get_pipeline("zero")`` or ``LegalizeOps``), since
``extract_tasks`` only sees TIR that exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..kernels.isa import isa_of
from .builder import DEFAULT_BUILD_TIMEOUT_S, DEFAULT_RUN_TIMEOUT_S, make_builder, make_runner

log = logging.getLogger(__name__)

LEDGER = "ledger.json"


@dataclass
class TuneProgress:
    """What :func:`tune` reports after each measured batch and at each task boundary."""

    task_index: int
    num_tasks: int
    task_name: str
    task_trials: int
    task_budget: int
    trials_done: int
    trials_total: int
    best_us: float | None
    elapsed_s: float
    eta_s: float | None
    event: str = "batch"  # "start", "batch", "task-done", "task-failed"

    def line(self) -> str:
        best = f"{self.best_us:.1f} us" if self.best_us is not None else "-"
        eta = f"{self.eta_s:.0f} s" if self.eta_s is not None else "?"
        return (f"[{self.task_index + 1}/{self.num_tasks}] {self.task_name}: "
                f"{self.task_trials}/{self.task_budget} trials, best {best}; total "
                f"{self.trials_done}/{self.trials_total}, {self.elapsed_s:.0f} s, ETA {eta}")


@dataclass
class TaskPlan:
    name: str
    key: str
    flops: float
    weight: int
    budget: int
    done_before: int
    mod: tvm.IRModule = field(repr=False)
    extracted: object = field(repr=False)


def target_key(target: tvm.target.Target) -> str:
    """Directory name keying records by CPU, ISA, thread count and the full target string."""
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "generic")) if "mcpu" in attrs else "generic"
    cores = int(attrs["num-cores"]) if "num-cores" in attrs else 0
    digest = hashlib.sha1(str(target).encode()).hexdigest()[:8]
    return f"{mcpu}-{isa_of(target)}-t{cores}-{digest}"


def database_dir(db_dir: str | os.PathLike[str], target: tvm.target.Target) -> Path:
    return Path(db_dir) / target_key(target)


def open_database(db_dir: str | os.PathLike[str], target: tvm.target.Target) -> ms.Database:
    """The JSON database for ``target`` under ``db_dir`` (created when missing)."""
    d = database_dir(db_dir, target)
    d.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(d / "database_workload.json"),
        path_tuning_record=str(d / "database_tuning_record.json"),
        module_equality="structural",
    )


def workload_key(mod: tvm.IRModule) -> str:
    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def _read_ledger(d: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads((d / LEDGER).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _write_ledger(d: Path, ledger: dict[str, int]) -> None:
    tmp = d / (LEDGER + ".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    os.replace(tmp, d / LEDGER)


def _flops(mod: tvm.IRModule) -> float:
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(mod))
    except Exception:
        return 1.0


def _share(total: int, weights: list[float], floor: int) -> list[int]:
    """Split ``total`` trials proportionally to ``weights`` (largest remainder), each >= floor."""
    if not weights:
        return []
    s = sum(weights) or 1.0
    raw = [total * w / s for w in weights]
    out = [max(floor, int(r)) for r in raw]
    rest = total - sum(out)
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order:
        if rest <= 0:
            break
        out[i] += 1
        rest -= 1
    return out


def plan_tasks(mod: tvm.IRModule, target: tvm.target.Target, trials: int,
               db_dir: str | os.PathLike[str], max_trials_per_task: int | None = None,
               min_trials_per_task: int = 0) -> list[TaskPlan]:
    """Extract tasks (skipping scheduled kernels) and share ``trials`` by FLOPs x occurrences."""
    tasks = ms.relax_integration.extract_tasks(mod, target)
    ledger = _read_ledger(database_dir(db_dir, target))
    plans: list[TaskPlan] = []
    for t in tasks:
        tmod = t.dispatched[0]
        if t.mod.attrs.get("tirx.is_scheduled", False) or _is_scheduled(tmod):
            continue
        if _is_symbolic(tmod):  # MetaSchedule crashes on these (parallel_for_dynamic)
            log.warning("not tuning %s: symbolic shapes; tune a static bucket", t.task_name)
            continue
        key = workload_key(tmod)
        plans.append(TaskPlan(t.task_name, key, _flops(tmod), int(t.weight), 0,
                              ledger.get(key, 0), tmod, t))
    budgets = _share(trials, [p.flops * p.weight for p in plans], min_trials_per_task)
    for p, b in zip(plans, budgets, strict=True):
        p.budget = min(b, max_trials_per_task) if max_trials_per_task else b
    return plans


def _is_symbolic(mod: tvm.IRModule) -> bool:
    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc):
            for param in f.params:
                shape = getattr(param.ty, "shape", None) or ()
                if any(not isinstance(d, int | tvm.tirx.IntImm) for d in shape):
                    return True
    return False


def _is_scheduled(mod: tvm.IRModule) -> bool:
    for f in mod.functions.values():
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None \
                and f.attrs.get("tirx.is_scheduled", False):
            return True
    return False


@derived_object
class _ProgressCallback(ms.measure_callback.PyMeasureCallback):
    def __init__(self, hook: Callable[[int, float | None], None]) -> None:
        super().__init__()
        self._hook = hook

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:  # noqa: ANN001 (MetaSchedule's signature)
        best = None
        for r in runner_results:
            if r.run_secs:
                sec = sum(float(x) for x in r.run_secs) / len(r.run_secs)
                best = sec if best is None else min(best, sec)
        self._hook(len(measure_candidates), best)


def tune(mod: tvm.IRModule, target: tvm.target.Target, *, trials: int,
         db_dir: str | os.PathLike[str],
         on_progress: Callable[[TuneProgress], None] | None = None,
         max_trials_per_task: int | None = None, min_trials_per_task: int = 0,
         trials_per_iter: int = 16, build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
         run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S, seed: int | None = 0) -> ms.Database:
    """Tune the TIR tasks of a legalized, static-shape Relax module; returns the database.

    ``trials`` is the budget for this model (not per task). Work already in the database's ledger
    counts towards it, so calling ``tune`` again with the same arguments measures nothing.
    """
    d = database_dir(db_dir, target)
    database = open_database(db_dir, target)
    plans = plan_tasks(mod, target, trials, db_dir, max_trials_per_task, min_trials_per_task)
    ledger = _read_ledger(d)
    todo = [p for p in plans if p.budget - p.done_before > 0]
    total = sum(p.budget - p.done_before for p in todo)
    log.info("tuning %d of %d tasks, %d new trials, database %s", len(todo), len(plans), total, d)
    t0 = time.monotonic()
    done = 0
    guard = _Interrupts()
    try:
        guard.__enter__()
        for i, p in enumerate(todo):
            remaining = p.budget - p.done_before
            state = {"trials": 0, "best": _best_us(database, p.mod)}

            def report(event: str, p: TaskPlan = p, i: int = i,
                       state: dict = state) -> None:
                if on_progress is None:
                    return
                try:
                    _report(event, p, i, state)
                except KeyboardInterrupt:
                    guard.seen = True
                    raise

            def _report(event: str, p: TaskPlan, i: int, state: dict) -> None:
                elapsed = time.monotonic() - t0
                eta = elapsed / done * (total - done) if done else None
                on_progress(TuneProgress(i, len(todo), p.name, state["trials"],
                                         p.budget - p.done_before, done, total, state["best"],
                                         elapsed, eta, event))

            def hook(n: int, best_s: float | None, state: dict = state,
                     report: Callable[[str], None] = report) -> None:
                nonlocal done
                state["trials"] += n
                done += n
                if best_s is not None:
                    us = best_s * 1e6
                    state["best"] = us if state["best"] is None else min(state["best"], us)
                report("batch")

            report("start")
            spent = remaining  # a finished or failed task counts its whole budget: no retry
            try:
                _tune_one(p, target, database, remaining, trials_per_iter, hook,
                          build_timeout_s, run_timeout_s, seed, str(d))
            except KeyboardInterrupt:
                spent = state["trials"]
                raise
            except Exception as err:  # one failing task must not end the run
                if guard.interrupted(err):
                    spent = state["trials"]
                    raise KeyboardInterrupt from err
                msg = str(err).strip().splitlines()
                log.warning("tuning task %s failed, keeping its default schedule: %s", p.name,
                            msg[-1] if msg else type(err).__name__)
                log.debug("tuning task %s failed", p.name, exc_info=True)
                report("task-failed")
            else:
                report("task-done")
            finally:
                # Interrupted: charge only what was measured, so the next run tops up the rest.
                ledger[p.key] = p.done_before + max(state["trials"], spent)
                _write_ledger(d, ledger)
    except KeyboardInterrupt:
        log.warning("tuning interrupted; %d trials kept in %s", done, d)
    finally:
        guard.__exit__()
    return database


class _Interrupts:
    """Remembers a Ctrl-C: MetaSchedule's C++ loop re-raises it as a plain RuntimeError."""

    def __init__(self) -> None:
        self.seen = False
        self._old = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:  # noqa: ANN001
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def interrupted(self, err: BaseException) -> bool:
        return (self.seen or "KeyboardInterrupt" in str(err)
                or isinstance(err.__cause__, KeyboardInterrupt))


def _best_us(database: ms.Database, mod: tvm.IRModule) -> float | None:
    try:
        if not database.has_workload(mod):
            return None
        wl = database.commit_workload(mod)
        recs = database.get_top_k(wl, 1)
        if recs and recs[0].run_secs:
            return sum(float(x) for x in recs[0].run_secs) / len(recs[0].run_secs) * 1e6
    except Exception:
        return None
    return None


def _tune_one(p: TaskPlan, target: tvm.target.Target, database: ms.Database, trials: int,
              per_iter: int, hook: Callable[[int, float | None], None], build_timeout_s: float,
              run_timeout_s: float, seed: int | None, log_dir: str) -> None:
    # MetaSchedule rebuilds its logging config from the names of the handlers already on its
    # logger; an unnamed one (pytest's capture handler, an app's own) makes that crash.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
    for h in unnamed:
        ms_logger.removeHandler(h)
    try:
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [p.extracted], work_dir=log_dir, seed=seed)
    finally:
        for h in unnamed:
            ms_logger.addHandler(h)
    # MetaSchedule logs every batch to the console at INFO; Lamina shows its own progress line, so
    # its console handlers only pass warnings (the per-task files in ``log_dir`` keep everything).
    quiet = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING
    for h in ms_logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(quiet)
    if not ctxs:
        return
    callbacks = [*ms.MeasureCallback.create("default"), _ProgressCallback(hook)]
    ms.tune.tune_tasks(
        tasks=ctxs, task_weights=weights, work_dir=log_dir, max_trials_global=trials,
        max_trials_per_task=trials, num_trials_per_iter=min(per_iter, trials),
        builder=make_builder(build_timeout_s), runner=make_runner(run_timeout_s),
        database=database, measure_callbacks=callbacks, task_scheduler="round-robin")


def apply(mod: tvm.IRModule, target: tvm.target.Target,
          db_dir: str | os.PathLike[str] | None) -> tvm.IRModule:
    """Schedule ``mod``'s PrimFuncs from the database; the rest get dlight's CPU defaults."""
    from tvm.s_tir import dlight as dl

    with target:
        if db_dir is not None and database_dir(db_dir, target).exists():
            database = open_database(db_dir, target)
            with database, tvm.transform.PassContext(opt_level=3):
                mod = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod)
    return mod

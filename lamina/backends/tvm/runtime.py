"""Run an artifact: verify it, pick a length bucket per request, pad, run, strip the padding.

Needs TVM and NumPy only (no ONNX). Padding: every input is zero-padded along its ``batch``
and ``seq`` dims, i.e. ``input_ids`` / ``token_type_ids`` get id 0 and ``attention_mask`` gets
0 (masked), so padded positions do not influence real ones; outputs are sliced back.

A batch is split into several calls when that computes fewer tokens (three short rows run as
three 1x16 calls rather than one padded 4x128 call) or when it exceeds every bucket's batch;
a sequence longer than every bucket is an error.

Feeds: names must match the artifact's inputs exactly. Integer inputs accept any integer dtype
(cast to the compiled one, e.g. int32 token ids to int64); float inputs need float32.

Threads: TVM sizes its thread pool from ``TVM_NUM_THREADS`` when the pool first starts and
``runtime.config_threadpool`` can only lower the count afterwards; the pool is per calling
thread. So :func:`load` raises the ceiling through the environment while it still can, and
each thread that calls :meth:`CompiledModel.run` sets its own count when it needs another.

Concurrency: :meth:`CompiledModel.run` may be called from any number of threads at once. A Relax
VM is not reentrant, so each call in flight takes a VM of its own from a small pool (VMs share
the loaded library and the weights; a VM holds only its call's registers and scratch memory, and the
input tensors of its bound calls, see :class:`_BoundCall`).
Concurrent calls share the cores instead of each starting ``threads`` workers: at most
``cores // threads`` calls run at once (at least one), each on its ``threads``, and the others wait
for one to finish; the pool never holds more VMs than that. Measured on an idle 2-core Zen5 with
MiniLM (``bench/threads_runtime.py``): with ``threads=2`` two calling threads reach 0.96x and four
0.93x the throughput of one, where running two 1-thread calls side by side reached only 0.65x
(cause not established: TVM's per-thread pools may bind to the same core); with ``threads=1``
two calls run side by side, 1.31x one caller.

Checks besides the feeds: ids fed to an embedding-style lookup (a Gather on a constant table,
recorded at compile time as ``index_checks`` in the manifest) must lie in ``[0, rows)``, and a
request is padded along ``seq`` only when the model has an attention-mask input (padding
without a mask would change the outputs silently).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ArtifactError, BackendError, UsageError
from .artifact import LIBRARY, PARAMS, check_permissions, read_manifest
from .buckets import Bucket, format_buckets, plan_request

log = logging.getLogger(__name__)

BATCH, SEQ = "batch", "seq"


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str
    dims: tuple[int | str, ...]  # ints, or "batch" / "seq"

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.dims)}]"


_pool_started = False
_thread_state = threading.local()  # the calling thread's TVM pool size (TVM's pool is per thread)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _prepare_thread_pool(threads: int) -> None:
    """Make sure the TVM pool can grow to ``threads`` (only possible before it starts)."""
    global _pool_started
    if not _pool_started:
        cur = int(os.environ.get("TVM_NUM_THREADS", "0") or 0)
        if threads > cur:
            os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
        _pool_started = True


def use_threads(threads: int) -> int:
    """Run this thread's TVM kernels on ``threads`` threads (kernel timing in the compiler);
    returns the count TVM really uses."""
    _prepare_thread_pool(threads)
    return _set_threads(threads)


def _set_threads(threads: int) -> int:
    import tvm
    import tvm_ffi

    tvm_ffi.get_global_func("runtime.config_threadpool")(0, int(threads))
    _thread_state.threads = int(threads)
    return int(tvm.runtime.num_threads())


class CompiledModel:
    """A loaded artifact. ``run(feeds) -> outputs``; see the module docstring for the rules."""

    def __init__(self, root: Path, manifest: dict[str, Any], threads: int | None) -> None:
        import tvm
        from tvm import relax

        self.path = root
        self.manifest = manifest
        self.inputs = [IOSpec(i["name"], i["dtype"], tuple(i["dims"])) for i in manifest["inputs"]]
        self.outputs = [IOSpec(o["name"], o["dtype"], tuple(o["dims"]))
                        for o in manifest["outputs"]]
        self._functions: dict[Bucket, tuple[str, list[str]]] = {
            (int(b["batch"]), int(b["seq"])): (b["function"], list(b["params"]))
            for b in manifest["buckets"]}
        self.threads = int(threads or manifest.get("threads") or os.cpu_count() or 1)
        _prepare_thread_pool(self.threads)
        try:
            lib = tvm.runtime.load_module(str(root / LIBRARY))
            params = tvm.runtime.load_param_dict_from_file(str(root / PARAMS))
        except Exception as e:
            raise ArtifactError(f"{root}: cannot load the library or weights ({e}); recompile "
                                "it on this machine with `lamina compile`") from e
        self._dev = tvm.cpu()
        self._lib = lib
        self._idle_vms = [relax.VirtualMachine(lib, self._dev)]
        self._bound: dict[tuple[int, str], _BoundCall] = {}  # see _call
        self._params = {k: params[k] for k in {p for _, ps in self._functions.values()
                                                 for p in ps}}
        self._local = threading.local()
        from .packed_runtime import PackedRunner

        # Padding-free functions for uneven batches (``varlen.py``), when the artifact has them.
        self._packed = PackedRunner.create(self, manifest, params)
        # Layer-by-layer functions and length configurations for token pruning, when compiled in.
        self._staged = None
        if manifest.get("staged"):
            from .pruned_runtime import StagedRunner

            lc = manifest.get("length_configs") or {}
            self._staged = StagedRunner(self, manifest["staged"], lc.get("configs", []),
                                        lc.get("default"), params)
        self.last_config: str | None = None  # the length configuration the last request ran
        self.last_plan = ""  # how the last request ran: "packed ..." or "bucket ..."
        # A batch may be split into chunks only if every input and output has a batch dim.
        self._can_split = all(BATCH in s.dims for s in [*self.inputs, *self.outputs])
        # Concurrent calls: see the module docstring.
        self._cores = _cores()
        self._max_active = max(1, self._cores // self.threads)
        self._active = 0
        self._cv = threading.Condition()
        self._index_checks = [(str(c["input"]), int(c["size"]), str(c.get("table", "")))
                              for c in manifest.get("index_checks", [])]
        self._mask_input = next((s.name for s in self.inputs
                                 if "mask" in s.name.lower() and SEQ in s.dims), None)

    @property
    def buckets(self) -> list[Bucket]:
        return sorted(self._functions)

    def __repr__(self) -> str:
        return (f"CompiledModel({str(self.path)!r}, buckets={format_buckets(self.buckets)}, "
                f"isa={self.manifest['target']['isa_level']}, threads={self.threads})")

    # -- feeds ------------------------------------------------------------------------------
    def _check_feeds(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int, int]:
        if not isinstance(feeds, Mapping):
            raise UsageError(f"feeds must be a dict of input name -> array, got "
                             f"{type(feeds).__name__}")
        expected = {s.name for s in self.inputs}
        unknown = sorted(set(feeds) - expected)
        if unknown:
            raise UsageError(f"unknown input {unknown[0]!r}; the model takes "
                             f"{', '.join(str(s) for s in self.inputs)}")
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise UsageError(f"missing input {missing[0]!r}; the model takes "
                             f"{', '.join(str(s) for s in self.inputs)}")
        arrays: dict[str, np.ndarray] = {}
        roles: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            a = np.asarray(feeds[spec.name])
            want = np.dtype(spec.dtype)
            if a.dtype != want:
                if want.kind in "iu" and a.dtype.kind in "iu":
                    a = a.astype(want)
                else:
                    raise UsageError(f"input {spec.name!r} has dtype {a.dtype}, expected "
                                     f"{spec.dtype} (pass np.asarray(x, dtype=np.{spec.dtype}))")
            if a.ndim != len(spec.dims):
                raise UsageError(f"input {spec.name!r} has rank {a.ndim} (shape {list(a.shape)})"
                                 f", expected rank {len(spec.dims)} ({spec})")
            for axis, (have, dim) in enumerate(zip(a.shape, spec.dims, strict=True)):
                if isinstance(dim, int):
                    if have != dim:
                        raise UsageError(f"input {spec.name!r} dim {axis} is {have}, expected "
                                         f"{dim} ({spec})")
                    continue
                if have < 1:
                    raise UsageError(f"input {spec.name!r} has an empty {dim} dim")
                if dim in roles and roles[dim][0] != have:
                    other = roles[dim][1]
                    raise UsageError(f"input {spec.name!r} has {dim} {have} but input "
                                     f"{other!r} has {roles[dim][0]}; they must agree")
                roles.setdefault(dim, (have, spec.name))
            arrays[spec.name] = a
        batch = roles.get(BATCH, (1, ""))[0]
        seq = roles.get(SEQ, (1, ""))[0]
        return arrays, batch, seq

    def _check_indices(self, arrays: dict[str, np.ndarray]) -> None:
        """Ids that index a constant table must lie in [0, rows): one min/max per checked input."""
        for name, size, table in self._index_checks:
            a = arrays.get(name)
            if a is None or a.size == 0:
                continue
            lo, hi = int(a.min()), int(a.max())
            if lo >= 0 and hi < size:
                continue
            bad = lo if lo < 0 else hi
            where = tuple(int(i) for i in np.argwhere(a == bad)[0])
            raise UsageError(
                f"input {name!r} holds {bad} at {list(where)}, outside [0, {size}) of the table "
                f"{table or 'it indexes'} ({size} rows); ids must come from the tokenizer the "
                "model was trained with")

    def _check_padding(self, bucket: Bucket, seq: int) -> None:
        """Padding ``seq`` is only invisible to a model that masks the padded positions."""
        if seq == bucket[1] or self._mask_input is not None or not any(
                SEQ in s.dims for s in self.inputs):
            return
        raise UsageError(
            f"sequence length {seq} would run in bucket {bucket[0]}x{bucket[1]} padded to "
            f"{bucket[1]}, but the model has no attention-mask input, so padding would change "
            f"its outputs; feed sequences of exactly a bucket's length "
            f"({', '.join(str(s) for s in sorted({s for _, s in self._functions}))}) or "
            f"recompile with `--buckets {format_buckets([*self._functions, (bucket[0], seq)])}`")

    @property
    def _vm(self) -> Any:
        """The VM of the calling thread's call in flight (taken from the pool by ``_slot``)."""
        return self._local.vm

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Admit one call (at most ``cores`` at once), lend it a VM and size its thread pool."""
        with self._cv:
            while self._active >= self._max_active:
                self._cv.wait()
            self._active += 1
            active = self._active
            vm = self._idle_vms.pop() if self._idle_vms else None
        threads = self.threads if active == 1 else max(1, min(self.threads,
                                                               self._cores // active))
        try:
            if vm is None:
                from tvm import relax

                vm = relax.VirtualMachine(self._lib, self._dev)
            if getattr(_thread_state, "threads", None) != threads:
                got = _set_threads(threads)
                if got != threads:
                    log.warning("TVM runs %d threads, not %d: its thread pool started before "
                                "load(); set TVM_NUM_THREADS=%d before the first TVM call",
                                got, threads, threads)
            self._local.vm = vm
            yield
        finally:
            self._local.vm = None
            with self._cv:
                if vm is not None:
                    self._idle_vms.append(vm)
                self._active -= 1
                self._cv.notify()

    def plan(self, batch: int, seq: int) -> tuple[Bucket, int]:
        """(bucket, calls) a request of ``batch`` x ``seq`` runs as; a clear error if none."""
        plan = plan_request(self._functions, batch, seq, split_batch=self._can_split)
        if plan is None:
            max_seq = max(s for _, s in self._functions)
            max_batch = max(b for b, _ in self._functions)
            if seq > max_seq:
                why = f"sequence length {seq} exceeds the longest bucket (seq {max_seq})"
            elif batch > max_batch:
                why = f"batch {batch} exceeds the largest bucket batch ({max_batch})"
            else:
                why = f"no bucket holds batch {batch} at seq {seq}"
            raise UsageError(f"{why}; buckets are {format_buckets(self._functions)}: truncate "
                             f"or split the request, or recompile with e.g. `--buckets "
                             f"{format_buckets([*self._functions, (batch, seq)])}`")
        return plan

    # -- run ----------------------------------------------------------------------------------
    @property
    def last_depth(self) -> np.ndarray | None:
        """After a token-pruned request: ``[batch, seq]``, how many layers ran each token (the
        layer count for tokens kept to the end, 0 at padding); None otherwise."""
        if self._staged is None or self.last_config is None:
            return None
        return self._staged.last_depth

    @property
    def length_configs(self) -> list[Any]:
        """The token-pruning length configurations (``pruned_runtime.LengthConfig``), if any."""
        return list(self._staged.configs) if self._staged is not None else []

    def run(self, feeds: Mapping[str, Any], budget_ms: float | None = None,
            length_config: str | Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Run one request; returns one array per output, padding removed.

        Artifacts compiled with token pruning (``--prune-tokens``) run their default length
        configuration; ``budget_ms`` picks the most accurate one expected to finish within that
        many milliseconds (the fastest, with a warning, when none is), ``length_config`` names one
        (``"unpruned"`` runs every token) or gives per-layer keep ratios. ``last_config`` /
        ``last_plan`` say which ran.
        """
        if budget_ms is not None and not budget_ms > 0:
            raise UsageError(f"budget_ms must be > 0, got {budget_ms}")
        if (budget_ms is not None and not self.length_configs) or (
                length_config is not None and self._staged is None):
            raise UsageError(f"{self.path}: has no length configurations (budget_ms and "
                             "length_config need an artifact compiled with --prune-tokens)")
        arrays, batch, seq = self._check_feeds(feeds)
        self._check_indices(arrays)
        self.last_config = None
        if self._staged is not None:
            from .packed_runtime import right_padded_lengths

            lens = right_padded_lengths(arrays.get(self._mask_input)) if self._mask_input else None
            chunks = self._staged.plan(lens) if lens is not None else None
            if chunks is not None:
                if length_config is not None:
                    cfg, why = self._staged.config(length_config), "asked for"
                else:
                    cfg, why = self._staged.choose(budget_ms, int(lens.sum()))
                self.last_config = cfg.name
                self.last_plan = f"pruned {cfg.describe()}: {why}"
                packed = None
                if all(r == 1 for r in cfg.keep) and self._packed is not None:
                    # every token kept: the whole-model packed functions (one call, no
                    # importance computed) give the same result faster
                    packed = self._packed.choose(arrays, self._functions, self._can_split)
                with self._slot():
                    if packed is not None:
                        self._staged.last_depth = np.where(
                            arrays[self._mask_input] != 0, self._staged.layers, 0)
                        return self._packed.run(arrays, *packed)
                    return self._staged.run(arrays, lens, chunks, cfg)
            log.info("%s: the request is not right-padded (or too long for the staged "
                     "functions); it runs unpruned", self.path)
        # Packed (padding-free) when it computes fewer tokens than the fixed buckets
        # (packed_runtime).
        packed = self._packed.choose(arrays, self._functions, self._can_split) \
            if self._packed is not None else None
        if packed is not None:
            self.last_plan = "packed " + "+".join(f"{f.tokens}" for *_, f in packed[1])
            with self._slot():
                return self._packed.run(arrays, *packed)
        bucket, calls = self.plan(batch, seq)
        self._check_padding(bucket, seq)
        self.last_plan = f"bucket {bucket[0]}x{bucket[1]}" + (f" x{calls}" if calls > 1 else "")
        if calls == 1:
            with self._slot():
                return self._run_bucket(arrays, bucket, batch, seq)
        parts = []
        with self._slot():
            for lo in range(0, batch, bucket[0]):
                hi = min(batch, lo + bucket[0])
                chunk = {n: self._rows(n, a, lo, hi) for n, a in arrays.items()}
                parts.append(self._run_bucket(chunk, bucket, hi - lo, seq))
        return {spec.name: np.concatenate([p[spec.name] for p in parts],
                                          axis=spec.dims.index(BATCH))
                for spec in self.outputs}

    def _rows(self, name: str, a: np.ndarray, lo: int, hi: int) -> np.ndarray:
        axis = next(s.dims.index(BATCH) for s in self.inputs if s.name == name)
        return a[(slice(None),) * axis + (slice(lo, hi),)]

    def _run_bucket(self, arrays: dict[str, np.ndarray], bucket: Bucket, batch: int, seq: int
                    ) -> dict[str, np.ndarray]:
        fname, pnames = self._functions[bucket]
        size = {BATCH: bucket[0], SEQ: bucket[1]}
        shapes = [tuple(size.get(d, d) if isinstance(d, str) else d for d in spec.dims)
                  for spec in self.inputs]
        result = self._call(fname, shapes, [arrays[spec.name] for spec in self.inputs], pnames)
        real = {BATCH: batch, SEQ: seq}
        outs: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self.outputs):
            arr = _to_numpy(result[i])
            sl = tuple(slice(0, real[d]) if isinstance(d, str) else slice(None)
                       for d in spec.dims)
            outs[spec.name] = _contiguous(arr[sl])
        return outs

    def _call(self, fname: str, shapes: Sequence[tuple[int, ...]], arrays: Sequence[np.ndarray],
              pnames: Sequence[str], params: Mapping[str, Any] | None = None) -> Any:
        """Call ``fname`` on this thread's VM with ``arrays`` (each zero-padded to its shape in
        ``shapes``) and the weights ``pnames`` (of ``params``, default the buckets' weights):
        through a :class:`_BoundCall` made the first time this VM calls ``fname``."""
        vm = self._vm
        key = (id(vm), fname)
        try:
            bound = self._bound.get(key)
            if bound is None:
                bound = self._bound[key] = _BoundCall(
                    vm, fname, [(shape, a.dtype) for shape, a in zip(shapes, arrays, strict=True)],
                    [(params or self._params)[p] for p in pnames], self._dev)
            return bound(arrays)
        except Exception as e:
            raise BackendError(f"{self.path}: {fname} failed: {type(e).__name__}: "
                               f"{str(e).strip()[:500]}") from e

    __call__ = run


class _BoundCall:
    """One function of one VM with its arguments bound once (``VirtualMachine.save_function``):
    input tensors allocated once and written through NumPy views of them, and the weights. A call
    then copies the feeds in and passes nothing through the FFI; making three input tensors and
    passing them with 150 weights cost about 55 us a call (MiniLM b1 INT8, 2.2 ms a call; Zen5).
    A VM runs one call at a time, so its tensors are reused only after the outputs (copied out by
    the caller) no longer need them."""

    def __init__(self, vm: Any, fname: str, inputs: Sequence[tuple[tuple[int, ...], np.dtype]],
                 params: Sequence[Any], dev: Any) -> None:
        import tvm

        self.tensors = [tvm.runtime.empty(shape, str(dtype), dev) for shape, dtype in inputs]
        self.views = [np.from_dlpack(t) for t in self.tensors]
        self.name = f"__lamina_bound_{fname}"
        vm.save_function(fname, self.name, *self.tensors, *params)
        self.fn = vm[self.name]

    def __call__(self, arrays: Sequence[np.ndarray]) -> Any:
        for view, a in zip(self.views, arrays, strict=True):
            if a.shape == view.shape:
                view[...] = a
            else:  # zero-padded, as the module docstring says
                view.fill(0)
                view[tuple(slice(0, n) for n in a.shape)] = a
        return self.fn()


def _to_numpy(t: Any) -> np.ndarray:
    """A NumPy copy of an output tensor (through DLPack: 4 us for MiniLM's two outputs against
    15 us for ``Tensor.numpy``); a copy, since an output may share memory with a bound input or a
    weight."""
    try:
        return np.from_dlpack(t).copy()
    except (TypeError, BufferError, RuntimeError):
        return t.numpy()


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy or view of ``a`` with its shape (``np.ascontiguousarray`` turns a
    rank-0 array into shape (1,), which the compiled function rejects)."""
    return np.require(a, requirements="C")


def load(path: str | os.PathLike[str], threads: int | None = None, *,
         allow_writable: bool | None = None) -> CompiledModel:
    """Verify and load the artifact at ``path`` (see :func:`artifact.read_manifest`).

    Loading runs the artifact's native code, so an artifact whose directory or files other users
    may write is refused (:func:`artifact.check_permissions`). ``allow_writable=True``, or the
    environment variable ``LAMINA_ALLOW_WRITABLE_ARTIFACTS=1`` when it is None, skips that check
    (container images whose files are all group-writable by design).
    """
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if allow_writable is None:
        allow_writable = os.environ.get("LAMINA_ALLOW_WRITABLE_ARTIFACTS", "") == "1"
    if not allow_writable:
        check_permissions(path)
    root, manifest = read_manifest(path)
    if any(f.startswith("amx") for f in manifest.get("target", {}).get("required_features", [])):
        # AMX code: Linux must grant the tile state before the first call, or the process dies.
        from .amx import request_amx

        if not request_amx():
            raise ArtifactError(f"{root}: uses AMX tiles, but Linux refused this process the AMX "
                                "tile state (arch_prctl ARCH_REQ_XCOMP_PERM); recompile it with "
                                "`--target x86-avx512-vnni`")
    return CompiledModel(root, manifest, threads)

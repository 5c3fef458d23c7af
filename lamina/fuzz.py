"""A model fuzzer for the loader and the pipeline: mutants of small valid ONNX models, each run in a
forked child with a time limit and an address-space limit, and an outcome per mutant.

Used by ``tests/compiler/test_fuzz_loader.py`` (a seeded few hundred) and ``bench/fuzz_loader.py``
(thousands). The rule it checks: every mutant either goes through (load, ``O0``, and ``compile``
where asked) or raises a :class:`~lamina.compiler.errors.LaminaError` with a one-line message.
Anything else is a finding: an internal error (another exception type), a crash (the child died of
a signal), a hang (past the time limit), or a memory blow-up (``MemoryError`` under the limit).

Mutations (:data:`MUTATIONS`): byte flips, truncation, shuffled chunks of the serialized file, and
rewritten fields of the parsed model: tensor dims, op types, attribute values, initializer sizes,
graph input dims (0, -1, 2**20, 2**31, 2**40...), values of small integer constants (shape
arithmetic), and the 2**40-batch model with a bad initializer.

Children are forked from a parent that has already imported what they run, so a mutant costs
milliseconds of start-up; they never touch the parent's state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import select
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

Mutation = Callable[[bytes, onnx.ModelProto, random.Random], bytes]
BAD_DIMS = (0, -1, 3, 4096, 2**20, 2**31, 2**40)
OP_TYPES = ("Add", "MatMul", "Reshape", "Gather", "Softmax", "Transpose", "Concat", "Expand",
            "ConstantOfShape", "Range", "Tile", "Where", "Unknown", "")


# -- mutations ------------------------------------------------------------------------------------

def _flip(data: bytes, _: onnx.ModelProto, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 2, 8, 32))):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _flip_head(data: bytes, proto: onnx.ModelProto, rng: random.Random) -> bytes:
    """Flips within the first 4 KiB, where the graph structure (not the weights) usually is."""
    buf = bytearray(data)
    head = min(len(buf), 4096)
    for _ in range(rng.choice((1, 2, 4))):
        buf[rng.randrange(head)] = rng.randrange(256)
    return bytes(buf)


def _truncate(data: bytes, _: onnx.ModelProto, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _shuffle(data: bytes, _: onnx.ModelProto, rng: random.Random) -> bytes:
    n = rng.choice((4, 8, 16))
    size = max(1, len(data) // n)
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
    chunks[i], chunks[j] = chunks[j], chunks[i]
    return b"".join(chunks)


def _edit(edit: Callable[[onnx.ModelProto, random.Random], None]) -> Mutation:
    def mutate(_: bytes, proto: onnx.ModelProto, rng: random.Random) -> bytes:
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        edit(m, rng)
        return m.SerializeToString()

    mutate.__name__ = edit.__name__
    return mutate


def _tensor_dims(m: onnx.ModelProto, rng: random.Random) -> None:
    t = rng.choice(list(m.graph.initializer))
    if t.dims:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice((0, 1, t.dims[i] + 1, t.dims[i] * 2, 2**31, 2**40))
    else:
        t.dims.append(rng.choice((2, 2**40)))


def _op_type(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    node.op_type = rng.choice(OP_TYPES)


def _attribute(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return
    attr = rng.choice(list(rng.choice(nodes).attribute))
    value = rng.choice((-(2**40), -1, 0, 1, 7, 2**31, 2**40))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.type == onnx.AttributeProto.INTS:
        del attr.ints[:]
        attr.ints.extend([value] * rng.choice((0, 1, 3)))
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice((float("nan"), float("inf"), -1.0, 0.0, 1e30))
    elif attr.type == onnx.AttributeProto.TENSOR:
        attr.t.dims.append(rng.choice((0, 3, 2**40)))
    else:
        attr.type = onnx.AttributeProto.INT
        attr.i = value


def _initializer_size(m: onnx.ModelProto, rng: random.Random) -> None:
    t = rng.choice(list(m.graph.initializer))
    if t.raw_data:
        cut = rng.choice((1, 4, len(t.raw_data) // 2, len(t.raw_data)))
        t.raw_data = t.raw_data[:-cut] if rng.random() < 0.7 else t.raw_data + b"\0" * cut
    else:
        t.int64_data.append(7)


def _input_dim(m: onnx.ModelProto, rng: random.Random) -> None:
    vi = rng.choice(list(m.graph.input))
    dims = vi.type.tensor_type.shape.dim
    if dims:
        rng.choice(list(dims)).dim_value = rng.choice(BAD_DIMS)


def _constant_values(m: onnx.ModelProto, rng: random.Random) -> None:
    """Rewrite one value of a small integer constant (shape arithmetic: Reshape targets, axes,
    ConstantOfShape and Expand shapes, Slice bounds)."""
    from onnx import numpy_helper

    tensors = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT64
               and 0 < len(t.raw_data or b"") <= 64]
    tensors += [a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value" and a.t.data_type == onnx.TensorProto.INT64
                and 0 < len(a.t.raw_data or b"") <= 64]
    if not tensors:
        return
    t = rng.choice(tensors)
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[rng.randrange(arr.size)] = rng.choice((2**40, -(2**40), 2**20, 0, -1, 3))
    t.raw_data = arr.tobytes()


def _big_batch_bad_initializer(m: onnx.ModelProto, rng: random.Random) -> None:
    """The mutant of the report: input_ids with a 2**40 batch dim and an initializer whose dims
    disagree with its data."""
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2**40
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    t.dims[0] = t.dims[0] * rng.choice((2, 3, 1000))


MUTATIONS: dict[str, Mutation] = {
    "byte-flip": _flip,
    "head-flip": _flip_head,
    "truncate": _truncate,
    "shuffle": _shuffle,
    "tensor-dims": _edit(_tensor_dims),
    "op-type": _edit(_op_type),
    "attribute": _edit(_attribute),
    "initializer-size": _edit(_initializer_size),
    "input-dim": _edit(_input_dim),
    "constant-values": _edit(_constant_values),
    "big-batch-bad-initializer": _edit(_big_batch_bad_initializer),
}


def mutants(model: str | os.PathLike[str], count: int, seed: int = 0
            ) -> Iterator[tuple[int, str, bytes]]:
    """``count`` seeded mutants of the model file: ``(index, mutation, bytes)``; mutations
    rotate."""
    data = Path(model).read_bytes()
    proto = onnx.load_from_string(data)
    names = list(MUTATIONS)
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        name = names[i % len(names)]
        yield i, name, MUTATIONS[name](data, proto, rng)


# -- the harness ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    mutation: str
    kind: str  # ok | error | internal | multiline | memory | crash | hang
    stage: str  # the stage reached: load, O0, compile
    detail: str
    seconds: float
    rss_mb: float  # the child's peak resident set (pages shared with the parent included)

    @property
    def clean(self) -> bool:
        return self.kind in ("ok", "error")


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(
    path: Path, stages: tuple[str, ...], mem_limit: int, time_limit: float, out_fd: int
) -> None:
    """Runs in the forked child: never returns."""
    from lamina.compiler.errors import LaminaError

    stage, kind, detail = "load", "ok", ""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        logging.disable(logging.CRITICAL)
        limit = _vm_size() + mem_limit
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = int(time_limit) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        from lamina.compiler.driver import api

        model = api.load(path)
        if "O0" in stages:
            stage = "O0"
            api.optimize(model, "O0")
        if "compile" in stages:
            stage = "compile"
            api.compile(path, path.with_suffix(".lamina"), pipeline="O0", buckets=[(1, 8)])
    except LaminaError as e:
        text = str(e)
        kind, detail = ("multiline" if "\n" in text.strip() else "error"), text
    except MemoryError as e:
        kind, detail = "memory", f"MemoryError: {e}"
    except BaseException as e:  # noqa: BLE001 - the finding this harness looks for
        kind, detail = "internal", f"{type(e).__name__}: {str(e).strip()[:300]}"
    try:
        os.write(
            out_fd,
            json.dumps(
                {"kind": kind, "stage": stage, "detail": detail[:500], "rss_kb": _rss_kb()}
            ).encode(),
        )
    finally:
        os._exit(0)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _Running:
    def __init__(self, index: int, mutation: str, pid: int, fd: int, start: float) -> None:
        self.index, self.mutation, self.pid, self.fd, self.start = index, mutation, pid, fd, start
        self.data = b""


def run_mutants(
    items: Iterable[tuple[int, str, bytes]],
    workdir: str | os.PathLike[str],
    *,
    stages: tuple[str, ...] = ("load", "O0"),
    jobs: int = 2,
    time_limit: float = 60.0,
    mem_limit: int = 4 << 30,
    keep: Callable[[Outcome], bool] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run each mutant in a forked child (``jobs`` at once), ``time_limit`` seconds and
    ``mem_limit`` bytes of address space beyond the parent's each. A mutant file is kept in
    ``workdir`` when ``keep(outcome)`` says so (default: the findings), else removed."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    keep = keep or (lambda o: not o.clean)
    outcomes: list[Outcome] = []
    running: dict[int, _Running] = {}
    pending = iter(items)
    exhausted = False

    def finish(r: _Running, status: int | None, usage: resource.struct_rusage | None) -> None:
        seconds = time.monotonic() - r.start
        rss = (usage.ru_maxrss if usage else 0) / 1024
        if status is None:
            o = Outcome(r.index, r.mutation, "hang", "?", f"over {time_limit:.0f} s", seconds, rss)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            kind = "hang" if sig == signal.SIGXCPU else "crash"
            o = Outcome(r.index, r.mutation, kind, "?", _signal_name(sig), seconds, rss)
        else:
            try:
                msg = json.loads(r.data.decode() or "{}")
            except ValueError:
                msg = {}
            if not msg:
                o = Outcome(
                    r.index,
                    r.mutation,
                    "crash",
                    "?",
                    f"exit {os.WEXITSTATUS(status)} without a report",
                    seconds,
                    rss,
                )
            else:
                o = Outcome(
                    r.index, r.mutation, msg["kind"], msg["stage"], msg["detail"], seconds, rss
                )
        path = work / f"mutant-{r.index:05d}.onnx"
        if not keep(o):
            path.unlink(missing_ok=True)
        shutil.rmtree(path.with_suffix(".lamina"), ignore_errors=True)
        os.close(r.fd)
        outcomes.append(o)
        if on_outcome:
            on_outcome(o)

    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            try:
                index, mutation, data = next(pending)
            except StopIteration:
                exhausted = True
                break
            path = work / f"mutant-{index:05d}.onnx"
            path.write_bytes(data)
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(rfd)
                _child(path, stages, mem_limit, time_limit, wfd)
            os.close(wfd)
            running[pid] = _Running(index, mutation, pid, rfd, time.monotonic())
        if not running:
            break
        ready, _, _ = select.select([r.fd for r in running.values()], [], [], 0.05)
        for r in running.values():
            if r.fd in ready:
                chunk = os.read(r.fd, 65536)
                r.data += chunk
        for pid, r in list(running.items()):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                # drain what is left in the pipe
                while True:
                    ready, _, _ = select.select([r.fd], [], [], 0)
                    if not ready:
                        break
                    chunk = os.read(r.fd, 65536)
                    if not chunk:
                        break
                    r.data += chunk
                del running[pid]
                finish(r, status, usage)
            elif time.monotonic() - r.start > time_limit:
                os.kill(pid, signal.SIGKILL)
                _, _, usage = os.wait4(pid, 0)
                del running[pid]
                finish(r, None, usage)
    outcomes.sort(key=lambda o: o.index)
    return outcomes


def pick(
    items: Iterable[tuple[int, str, bytes]], indices: Iterable[int]
) -> Iterator[tuple[int, str, bytes]]:
    """The mutants of ``items`` whose index is in ``indices`` (to rerun some with more stages)."""
    wanted = set(indices)
    return (m for m in items if m[0] in wanted)


def summarize(outcomes: list[Outcome]) -> dict[str, object]:
    """Counts by kind and by mutation, the peak RSS, and the findings (not clean)."""
    kinds = Counter(o.kind for o in outcomes)
    return {
        "mutants": len(outcomes),
        "kinds": dict(sorted(kinds.items())),
        "by_mutation": {
            m: dict(sorted(Counter(o.kind for o in outcomes if o.mutation == m).items()))
            for m in sorted({o.mutation for o in outcomes})
        },
        "max_rss_mb": round(max((o.rss_mb for o in outcomes), default=0.0), 1),
        "over_1gb_rss": sum(o.rss_mb > 1024 for o in outcomes),
        "max_seconds": round(max((o.seconds for o in outcomes), default=0.0), 2),
        "findings": [asdict(o) for o in outcomes if not o.clean],
    }

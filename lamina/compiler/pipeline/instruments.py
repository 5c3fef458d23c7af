"""Pass instruments: IR printing, dumps, timing, statistics and numeric verification.

Instruments observe the pass manager through hooks; passes never print or dump anything themselves.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import VerifyError
from lamina.compiler.ir import count_nodes, print_ir, to_proto
from lamina.compiler.pipeline.registry import Pass, PassContext, PassResult


class Instrument:
    """Hooks called by :class:`lamina.compiler.pipeline.manager.PassManager`; all optional."""

    def on_start(self, model: ir.Model, passes: list[Pass], ctx: PassContext) -> None: ...

    def before_pass(self, index: int, p: Pass, model: ir.Model, ctx: PassContext) -> None: ...

    def after_pass(
        self, index: int, p: Pass, model: ir.Model, result: PassResult, ctx: PassContext
    ) -> None: ...

    def on_failure(self, index: int, p: Pass, model: ir.Model, exc: BaseException) -> None: ...

    def on_end(self, model: ir.Model) -> None: ...


def _header(kind: str, p: Pass | None, index: int | None = None) -> str:
    what = p.spec() if p is not None else "input"
    return (
        f"// -----// IR {kind} {what} ({index}) //----- //"
        if index
        else f"// -----// IR {kind} //----- //"
    )


@dataclass
class PrintIR(Instrument):
    """``--print-ir-after-all``, ``--print-ir-after=``, ``--print-ir-before=``,
    ``--print-ir-after-change``,
    ``--print-ir-after-failure``."""

    after_all: bool = False
    after: frozenset[str] = frozenset()
    before: frozenset[str] = frozenset()
    after_change: bool = False
    after_failure: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def before_pass(self, index: int, p: Pass, model: ir.Model, ctx: PassContext) -> None:
        if p.name in self.before:
            self.stream.write(_header("Dump Before", p, index) + "\n" + print_ir(model))

    def after_pass(self, index, p, model, result, ctx) -> None:
        if self.after_all or p.name in self.after or (self.after_change and result.changed):
            self.stream.write(_header("Dump After", p, index) + "\n" + print_ir(model))

    def on_failure(self, index, p, model, exc) -> None:
        if self.after_failure:
            self.stream.write(_header("Dump After Failure of", p, index) + "\n" + print_ir(model))


@dataclass
class PassRecord:
    index: int
    name: str
    spec: str
    seconds: float = 0.0
    changed: bool = False
    nodes_before: int = 0
    nodes_after: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    max_abs_error: float | None = None


class Recorder(Instrument):
    """Collects per-pass timing, node counts and statistics (``--pass-timing``, ``--pass-stats``,
    stats.json)."""

    def __init__(self) -> None:
        self.records: list[PassRecord] = []
        self._t0 = 0.0
        self._nodes = 0

    def before_pass(self, index, p, model, ctx) -> None:
        self._nodes = count_nodes(model)
        self._t0 = time.perf_counter()

    def after_pass(self, index, p, model, result, ctx) -> None:
        self.records.append(
            PassRecord(index, p.name, p.spec(), time.perf_counter() - self._t0, result.changed,
                       self._nodes, count_nodes(model), dict(result.stats))
        )

    def timing_report(self) -> str:
        total = sum(r.seconds for r in self.records) or 1e-12
        lines = ["===-------------------------------------------------------------===",
                 "                     Pass execution timing report",
                 "===-------------------------------------------------------------===",
                 f"  Total: {total:.4f} s", "   Wall time (s)   (%)   Name"]
        for r in self.records:
            lines.append(f"   {r.seconds:12.4f}  {100 * r.seconds / total:5.1f}   {r.spec}")
        return "\n".join(lines) + "\n"

    def stats_report(self) -> str:
        lines = []
        for r in self.records:
            change = "changed" if r.changed else "no change"
            stats = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items()))
            lines.append(
                f"{r.index:3d} {r.spec}: {change}, nodes {r.nodes_before} -> {r.nodes_after}"
                + (f"; {stats}" if stats else "")
            )
        return "\n".join(lines) + "\n"

    def as_json(self) -> list[dict[str, Any]]:
        return [r.__dict__ for r in self.records]


class DumpIR(Instrument):
    """``--dump-ir DIR``: ``000_input.{txt,onnx}``, ``NNN_<pass>.{txt,onnx}``, ``.diff`` when
    changed,
    ``pipeline.txt`` and ``stats.json``."""

    def __init__(self, directory: str | Path, recorder: Recorder, write_onnx: bool = True) -> None:
        self.dir = Path(directory)
        self.recorder = recorder
        self.write_onnx = write_onnx
        self._last_text = ""
        self._last_name = "000_input"

    def _save(self, stem: str, model: ir.Model, text: str) -> None:
        (self.dir / f"{stem}.txt").write_text(text)
        if self.write_onnx:
            proto = to_proto(model)
            data = proto.SerializeToString() if proto.ByteSize() < 2**31 - 1 else None
            if data is not None:
                (self.dir / f"{stem}.onnx").write_bytes(data)
            else:
                ir.save(model, self.dir / f"{stem}.onnx", external_data=f"{stem}.onnx.data")

    def on_start(self, model, passes, ctx) -> None:
        from lamina.compiler.pipeline.textual import format_pipeline

        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("[0-9][0-9][0-9]_*"):
            stale.unlink()
        (self.dir / "pipeline.txt").write_text(format_pipeline(passes) + "\n")
        self._last_text = print_ir(model)
        self._save("000_input", model, self._last_text)

    def after_pass(self, index, p, model, result, ctx) -> None:
        stem = f"{index:03d}_{p.name}"
        text = print_ir(model)
        self._save(stem, model, text)
        if text != self._last_text:
            diff = difflib.unified_diff(
                self._last_text.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{self._last_name}.txt", tofile=f"{stem}.txt",
            )
            (self.dir / f"{stem}.diff").write_text("".join(diff))
        self._last_text, self._last_name = text, stem
        self._write_stats()

    def on_failure(self, index, p, model, exc) -> None:
        self._write_stats(failed=f"{p.spec()}: {exc}")

    def _write_stats(self, failed: str | None = None) -> None:
        data: dict[str, Any] = {"passes": self.recorder.as_json()}
        if failed:
            data["failed"] = failed
        (self.dir / "stats.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def max_abs_error(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for name, r in ref.items():
        if name not in got:
            return float("inf"), f"output {name!r} disappeared"
        g = got[name]
        if r.shape != g.shape:
            return float("inf"), f"output {name!r} changed shape {r.shape} -> {g.shape}"
        if r.size == 0:
            continue
        err = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
        if err > worst or not where:
            worst, where = err, name
    return worst, where


# Runs a model on feeds and returns its outputs by name: the numeric oracle VerifyEach compares
# against (the driver passes the reference backend's ``run``; the core imports no backend).
Oracle = Callable[[ir.Model, dict[str, np.ndarray]], dict[str, np.ndarray]]


class VerifyEach(Instrument):
    """``--verify-each``: run the graph before and after every pass on ``oracle`` with seeded inputs
    and fail when the max abs error exceeds the pass's tolerance (``atol + rtol * max|reference|``).

    What changed is decided by comparing the printed IR before and after the pass, not by the pass's
    own ``changed`` flag, so a pass that rewrites the graph and says it did not is still checked."""

    def __init__(self, recorder: Recorder, oracle: Oracle, dims: dict[str, int] | None = None,
                 seed: int = 0, stream: TextIO | None = None) -> None:
        self.recorder = recorder
        self.oracle = oracle
        self.dims = dims or {}
        self.seed = seed
        self.stream = stream
        self._feeds: dict[str, np.ndarray] | None = None
        self._before: dict[str, np.ndarray] | None = None
        self._text = ""

    def on_start(self, model, passes, ctx) -> None:
        from lamina.compiler.frontend.feeds import make_feeds

        self._feeds = make_feeds(model, {**self.dims, **ctx.dims}, self.seed)
        self._before = self.oracle(model, self._feeds)
        self._text = print_ir(model)

    def after_pass(self, index, p, model, result, ctx) -> None:
        assert self._feeds is not None and self._before is not None
        text = print_ir(model)
        changed = text != self._text
        if not changed:
            err, where = 0.0, ""
        else:
            after = self.oracle(model, self._feeds)
            err, where = max_abs_error(self._before, after)
        if self.recorder.records and self.recorder.records[-1].index == index:
            self.recorder.records[-1].max_abs_error = err
        if self.stream is not None:
            self.stream.write(f"verify {index:3d} {p.spec()}: max abs error {err:.3g}\n")
        scale = max(
            (float(np.max(np.abs(v))) for v in self._before.values() if v.size), default=0.0
        )
        bound = p.atol + p.rtol * scale
        if not err <= bound:
            raise VerifyError(
                f"pass {p.name!r} changed the outputs beyond its tolerance: max abs error "
                f"{err:.3g} on {where!r} (allowed {bound:.3g})"
            )
        if changed:
            self._before, self._text = after, text

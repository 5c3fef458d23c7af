"""The pass manager: runs passes in order under instruments, and turns a failure into a
reproducer."""

from __future__ import annotations

import logging
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir

from lamina.compiler.errors import LaminaError, PassError, VerifyError
from lamina.compiler.ir import print_ir, to_proto
from lamina.compiler.pipeline.instruments import Instrument
from lamina.compiler.pipeline.plugins import load_passes_argument
from lamina.compiler.pipeline.registry import (
    Pass,
    PassContext,
    PassGroup,
    PassResult,
    check_contracts,
)

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "") or type(exc).__name__


class PassManager:
    """Run ``passes`` on a model. A failing pass raises :class:`PassError` naming the passes before
    it, after writing the IR it got and a one-line reproducer (in ``crash_dir``, or a fresh
    temporary directory)."""

    def __init__(
        self,
        passes: Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        ctx: PassContext | None = None,
        crash_dir: str | Path | None = None,
    ) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.ctx = ctx or PassContext()
        self.crash_dir = Path(crash_dir) if crash_dir else None

    def run(self, model: ir.Model) -> ir.Model:
        check_contracts(self.passes, model)
        for inst in self.instruments:
            inst.on_start(model, self.passes, self.ctx)
        self._done: list[Pass] = []
        for p in self.passes:
            if isinstance(p, PassGroup):
                model, _ = self._run_group(p, model)
            else:
                model, _ = self._run_pass(p, model)
        for inst in self.instruments:
            inst.on_end(model)
        return model

    def _run_group(self, group: PassGroup, model: ir.Model) -> tuple[ir.Model, bool]:
        """The group's members, each run as a pass of its own, cycled until every member has run
        once since the last change (a fixed point), at most ``max_rounds`` rounds."""
        members = group.member_passes()
        changed_any, quiet = False, 0
        for _ in range(group.max_rounds):
            for p in members:
                if isinstance(p, PassGroup):
                    model, changed = self._run_group(p, model)
                else:
                    model, result = self._run_pass(p, model)
                    changed = result.changed
                changed_any |= changed
                quiet = 0 if changed else quiet + 1
                if quiet >= len(members):
                    return model, changed_any
        return model, changed_any

    def _run_pass(self, p: Pass, model: ir.Model) -> tuple[ir.Model, PassResult]:
        index = len(self._done) + 1
        snapshot = model.clone()
        self.ctx.current_pass = p.name
        try:
            for inst in self.instruments:
                inst.before_pass(index, p, model, self.ctx)
            result = p.run(model, self.ctx)
            model = result.model
            for inst in self.instruments:
                inst.after_pass(index, p, model, result, self.ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a pass becomes a PassError
            for inst in self.instruments:
                try:
                    inst.on_failure(index, p, model, exc)
                except Exception:  # noqa: BLE001 - never mask the real failure
                    log.exception("instrument failed while reporting a pass failure")
            where = self._write_reproducer(snapshot, p)
            before = ", ".join(q.name for q in self._done)
            cls = VerifyError if isinstance(exc, VerifyError) else PassError
            msg = f"pass {p.name!r} failed after [{before}]: {_first_line(exc)}"
            if not isinstance(exc, LaminaError):
                msg += f" ({type(exc).__name__})"
            raise cls(msg + where) from exc
        self._done.append(p)
        log.debug("pass %s: changed=%s stats=%s", p.name, result.changed, result.stats)
        return model, result

    def _write_reproducer(self, model: ir.Model, p: Pass) -> str:
        try:
            if self.crash_dir is not None:
                directory = self.crash_dir
                directory.mkdir(parents=True, exist_ok=True)
            else:
                directory = Path(tempfile.mkdtemp(prefix=f"lamina-crash-{p.name}-"))
            onnx_path = directory / "input.onnx"
            proto = to_proto(model)
            if proto.ByteSize() < 2**31 - 1:
                onnx_path.write_bytes(proto.SerializeToString())
            else:
                ir.save(model, onnx_path, external_data="input.onnx.data")
            (directory / "input.txt").write_text(print_ir(model))
            # --debug is a flag of ``lamina`` itself: after the verb, argparse would take it for a
            # prefix of --debug-match.
            cmd = ["lamina", "--debug", "opt", str(onnx_path), "-o", str(directory / "output.onnx"),
                   "--pipeline", p.spec()]
            load = load_passes_argument(type(p).__module__)
            if load is not None:
                cmd[3:3] = ["--load-passes", load]
            line = shlex.join(cmd)
            (directory / "reproducer.sh").write_text(line + "\n")
            return f"; input IR in {directory}, reproduce with: {line}"
        except Exception as exc:  # noqa: BLE001
            log.warning("could not write the reproducer: %s", exc)
            return ""

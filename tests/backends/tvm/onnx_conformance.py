"""ONNX's own backend node tests, run through Lamina's compile path and the TVM runtime.

``onnx.backend.test.case.node.collect_testcases()`` yields small models written by the ONNX
project, each with inputs and expected outputs. A case is *in scope* when every node of its graph
is an op the lowering claims (``lower.registry.supported_ops()``), so the runner and the claimed
op list stay in sync by construction: registering a converter brings its node tests in.

Each case is compiled in process with ``lamina.compiler.driver.api.compile`` (the same load,
pipeline, specialization and ``build_artifact`` as ``lamina compile``; the graphs are static, so
one bucket), loaded with ``lamina.backends.tvm.load`` and run on every data set of the case. The
outcome is one of:

- ``passed``: every output has the expected shape and dtype and is within ONNX's tolerances (at
  least 1e-5 absolute for float32);
- ``refused``: Lamina raised a :class:`LaminaError`, one clean line (the reason is that line with
  the node/file prefix stripped, see :func:`refusal_reason`);
- ``failed``: a wrong shape, dtype or value, or any other exception (an internal error).

Used by ``tests/backends/tvm/test_onnx_conformance.py`` (a seeded subset in CI) and
``bench/onnx_conformance.py`` (the full set, with counts).
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

F32_MIN_ATOL = 1e-5


@dataclass
class Outcome:
    name: str
    status: str  # "passed" | "refused" | "failed"
    detail: str = ""
    ops: list[str] = field(default_factory=list)
    opset: int = 0


def _collect() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        return collect_testcases()


def case_ops(model: onnx.ModelProto) -> set[str]:
    """``op`` / ``domain::op`` names of every node, subgraphs and local functions included."""
    ops: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            dom = "" if node.domain in ("", "ai.onnx") else node.domain
            ops.add(f"{dom}::{node.op_type}" if dom else node.op_type)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    return ops


def case_opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


def in_scope_cases() -> list:
    """The node test cases whose ops the lowering all claims, sorted by name."""
    from lamina.backends.tvm.lower.registry import supported_ops

    claimed = set(supported_ops())
    cases = [c for c in _collect() if c.model is not None and case_ops(c.model) <= claimed]
    return sorted(cases, key=lambda c: c.name)


def refusal_reason(message: str) -> str:
    """The reason of a refusal line, without the file / node prefix and per-case details."""
    msg = message.strip().splitlines()[0] if message.strip() else ""
    msg = re.sub(r"^\S*?\.onnx: ", "", msg)
    msg = re.sub(r"^node '[^']*' \(([^)]*)\): ", r"\1: ", msg)
    msg = re.sub(r"^(graph input|input|output) '[^']*'", r"\1", msg)
    msg = re.sub(r"\[[^\]]*\]", "[...]", msg)
    msg = re.sub(r"\b\d+\b", "N", msg)
    return msg[:160]


def _compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``want``; else what differs."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"output {name!r}: shape {got.shape}, expected {want.shape}"
    if got.dtype != want.dtype:
        return f"output {name!r}: dtype {got.dtype}, expected {want.dtype}"
    if want.dtype.kind in "fc":
        if want.dtype == np.float32:
            atol = max(atol, F32_MIN_ATOL)
        ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            g, w = got.astype(np.float64), want.astype(np.float64)
            with np.errstate(invalid="ignore"):
                err = np.nanmax(np.where(ok, 0, np.abs(g - w)))
            return f"output {name!r}: {int((~ok).sum())} of {ok.size} values differ (max {err:.3g})"
        return ""
    if not np.array_equal(got, want):
        return f"output {name!r}: {int((got != want).sum())} of {got.size} values differ"
    return ""


def _array(a) -> np.ndarray:
    """A data set's tensor as NumPy (some cases give ``TensorProto`` objects, e.g. Cast's)."""
    if isinstance(a, onnx.TensorProto):
        return onnx.numpy_helper.to_array(a)
    return np.asarray(a)


def run_case(case, workdir: Path) -> Outcome:
    """Compile ``case`` with Lamina, run its data sets on the TVM runtime, compare."""
    from lamina.backends import tvm as tvm_backend
    from lamina.compiler.driver import api
    from lamina.compiler.errors import LaminaError

    model = case.model
    out = Outcome(case.name, "passed", ops=sorted(case_ops(model)), opset=case_opset(model))
    src = workdir / f"{case.name}.onnx"
    art = workdir / f"{case.name}.lamina"
    onnx.save(model, str(src))
    try:
        api.compile(src, art, buckets=[(1, 1)])
    except LaminaError as e:
        out.status, out.detail = "refused", str(e)
        return out
    except Exception as e:  # noqa: BLE001 - an internal error is a failure of the case
        out.status, out.detail = "failed", f"internal error: {type(e).__name__}: {e}"
        return out
    try:  # once compiled, any error is a failure: refusals happen at compile time
        compiled = tvm_backend.load(art, threads=1)
        init_names = {t.name for t in model.graph.initializer}
        in_names = [v.name for v in model.graph.input if v.name not in init_names]
        out_names = [v.name for v in model.graph.output]
        for inputs, expected in case.data_sets:
            feeds = {n: _array(a) for n, a in zip(in_names, inputs, strict=False)}
            got = compiled.run(feeds)
            for n, want in zip(out_names, map(_array, expected), strict=False):
                diff = _compare(n, got[n], want, case.rtol, case.atol)
                if diff:
                    out.status, out.detail = "failed", diff
                    return out
    except Exception as e:  # noqa: BLE001
        out.status, out.detail = "failed", f"run: {type(e).__name__}: {e}"
    return out


def run_cases(cases: Iterable, progress: bool = False) -> list[Outcome]:
    cases = list(cases)
    results = []
    with tempfile.TemporaryDirectory(prefix="lamina-onnx-node-") as tmp:
        it = cases
        if progress:
            from tqdm import tqdm

            it = tqdm(cases, unit="case")
        for case in it:
            r = run_case(case, Path(tmp))
            log.info("%s: %s %s", r.name, r.status, r.detail)
            results.append(r)
            for p in Path(tmp).iterdir():  # keep the temporary directory small
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
    return results


def is_opset_refusal(o: Outcome) -> bool:
    # The reason after the file name (node tests such as test_split_..._opset13 name their opset).
    return o.status == "refused" and "opset" in o.detail.split(".onnx: ", 1)[-1].lower()


def summary(results: list[Outcome]) -> str:
    """Counts: passed; refused by reason; failed (each named); opset-related refusals."""
    from collections import Counter

    passed = [r for r in results if r.status == "passed"]
    refused = [r for r in results if r.status == "refused"]
    failed = [r for r in results if r.status == "failed"]
    lines = [f"in scope: {len(results)}", f"passed: {len(passed)}", f"refused: {len(refused)}"]
    for reason, n in Counter(refusal_reason(r.detail) for r in refused).most_common():
        lines.append(f"  {n:4d}  {reason}")
    lines.append(f"opset-related refusals: {sum(is_opset_refusal(r) for r in results)}")
    lines.append(f"failed: {len(failed)}")
    for r in failed:
        lines.append(f"  {r.name}: {r.detail[:300]}")
    return "\n".join(lines)

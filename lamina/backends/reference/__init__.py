"""The reference backend: ONNX Runtime with graph optimizations off, Lamina's numeric oracle.

It runs any graph Lamina holds, including ``lamina``-domain ops through their reference functions.
It is never a fallback for compiled artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lamina.compiler.errors import BackendError


def _serialize(model: ir.Model | onnx.ModelProto | str | os.PathLike) -> bytes | str:
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model))
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    from lamina.compiler.ir import to_proto

    return to_proto(model).SerializeToString()


def session(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    *,
    threads: int | None = None,
    optimize: bool = False,
) -> Any:
    """An ONNX Runtime session (optimizations off unless ``optimize``: then ORT_ENABLE_ALL, for
    benchmarks)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(_serialize(model), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"ONNX Runtime cannot load the graph: {first}") from exc


def run(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    feeds: dict[str, np.ndarray],
    *,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds``; returns outputs by name."""
    sess = session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    try:
        outs = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0]
        raise BackendError(f"ONNX Runtime failed to run the graph: {first}") from exc
    return dict(zip(names, outs, strict=True))

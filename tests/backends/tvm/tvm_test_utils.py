"""Helpers for the TVM backend tests: static graphs and ONNX Runtime references.

:func:`static_canonical` makes a static graph independently of Lamina's own canonicalization (O0):
it writes the static dims into the graph inputs, then runs ONNX Runtime's offline optimizer at the
basic level (constant folding of the shape and mask arithmetic), so the lowering tests do not
depend on Lamina's passes. The driver path (``lamina compile``: O0/O1 then lowering) is tested
end to end elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort


def specialize_proto(model: onnx.ModelProto, batch: int, seq: int) -> onnx.ModelProto:
    """Copy of ``model`` whose inputs (and outputs) have static [batch, seq, ...] dims."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                continue
            if i == 0:
                d.dim_value = batch
            elif i == 1:
                d.dim_value = seq
    return m


def static_canonical(path: str | os.PathLike[str], batch: int, seq: int) -> ir.Model:
    """The model at ``path`` with static dims, shape arithmetic folded by ORT (basic level)."""
    model = onnx.load(str(path))
    spec = specialize_proto(model, batch, seq)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "static.onnx"
        dst = Path(tmp) / "canonical.onnx"
        onnx.save(spec, str(src))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        return ir.load(str(dst))


def ort_run(path_or_proto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Reference outputs: ONNX Runtime with graph optimizations off."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = path_or_proto if isinstance(path_or_proto, (str, os.PathLike)) \
        else path_or_proto.SerializeToString()
    sess = ort.InferenceSession(str(src) if isinstance(src, os.PathLike) else src, so,
                                providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def run_tvm(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray],
            schedule: str = "none", kernels: bool = False) -> list[np.ndarray]:
    """Lower ``model`` (static shapes) to one Relax function, build it, run it in the VM.

    ``kernels``: lower for a generic x86-64 target, so constant-weight matmuls and attention take
    the hand-written kernels (ISA-neutral: the generic tile runs on any x86-64 host)."""
    import tvm
    from tvm import relax

    from lamina.backends.tvm.build import build_module
    from lamina.backends.tvm.lower import lower_buckets
    from lamina.backends.tvm.target import resolve_target

    m = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    target = resolve_target("x86-64", threads=1)
    low = lower_buckets({(1, 1): m}, target=target.tvm_target if kernels else None)
    info = low.functions[(1, 1)]
    ex = build_module(low.mod, target, schedule=schedule)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i.name])) for i in info.inputs]
    args += [tvm.runtime.tensor(low.params[p]) for p in info.params]
    out = vm[info.name](*args)
    return [out[i].numpy() for i in range(len(info.outputs))]

"""A zoo model raised to the newest opset the installed ``onnx`` knows (its version converter)
compiles through the default pipeline, fuses as at its export opset, and matches ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tvm_test_utils import ort_run

pytestmark = pytest.mark.tvm


@pytest.mark.parametrize("arch,exporter,opset", [("bert", "torchscript", 17),
                                                 ("roberta", "dynamo", 18)])
def test_zoo_model_at_newest_opset(tiny_model, tmp_path: Path, arch, exporter, opset):
    from onnx import version_converter

    from lamina.backends.tvm import load
    from lamina.compiler.driver import api
    from lamina.zoo import make_inputs

    newest = onnx.defs.onnx_opset_version()
    src = tiny_model(arch, exporter, opset)
    raised = version_converter.convert_version(onnx.load(str(src)), newest)
    path = tmp_path / f"{arch}-op{newest}.onnx"
    onnx.save(raised, str(path))
    assert next(i.version for i in onnx.load(str(path)).opset_import if i.domain == "") == newest

    out = api.compile(path, tmp_path / "m.lamina", buckets=[(1, 16)])
    assert b"lamina_attention" in out.joinpath("model.so").read_bytes()
    model = load(out, threads=1)
    for seq in (9, 16):
        feeds = make_inputs(path, 1, seq, seed=seq)
        got = model.run(feeds)["last_hidden_state"]
        np.testing.assert_allclose(got, ort_run(path, feeds)[0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got, ort_run(src, feeds)[0], atol=1e-4, rtol=0)

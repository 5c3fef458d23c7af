"""Tiny encoders of every architecture through ``lamina compile`` (default pipeline, fused
``lamina`` ops) on the TVM backend, against ONNX Runtime on the original export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tvm_test_utils import ort_run

pytestmark = pytest.mark.tvm

CASES = [
    ("bert", "torchscript", 17, "eager"),
    ("roberta", "dynamo", 18, "eager"),
    ("electra", "dynamo", 18, "sdpa"),
    pytest.param("distilbert", "torchscript", 17, "sdpa", marks=pytest.mark.slow),
    pytest.param("electra", "dynamo", 18, "eager", marks=pytest.mark.slow),
    pytest.param("bert", "torchscript", 14, "eager", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,exporter,opset,attn", CASES)
def test_tiny_zoo_compiles_and_matches(tiny_model, tmp_path: Path, arch, exporter, opset, attn):
    from lamina.backends.tvm import load
    from lamina.compiler.driver import api
    from lamina.zoo import make_inputs

    path = tiny_model(arch, exporter, opset, attn)
    out = api.compile(path, tmp_path / "m.lamina", buckets=[(1, 16), (2, 32)])
    # attention runs as the fused kernel: no batched-matmul kernels, no score tensor
    library = out.joinpath("model.so").read_bytes()
    assert b"lamina_attention" in library and b"lamina_bmm" not in library
    model = load(out, threads=1)
    for batch, seq in [(1, 7), (2, 20), (3, 16)]:
        feeds = make_inputs(path, batch, seq, seed=seq)
        got = model.run(feeds)["last_hidden_state"]
        np.testing.assert_allclose(got, ort_run(path, feeds)[0], atol=1e-4, rtol=0)

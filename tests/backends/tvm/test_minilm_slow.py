"""The real all-MiniLM-L6-v2 through ``lamina compile`` (default pipeline) on the TVM backend
matches ONNX Runtime on the original file, for both exporters. Untuned: minutes, hence slow.
How long the compile takes is a benchmark, not a test: ``bench/compile_time.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tvm_test_utils import ort_run

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

BUCKETS = [(1, 16), (1, 64), (1, 128), (4, 128)]


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_minilm_matches_onnxruntime(minilm_model, tmp_path: Path, exporter: str, opset: int):
    from lamina.backends.tvm import load
    from lamina.compiler.driver import api
    from lamina.zoo import make_inputs

    path = minilm_model(exporter, opset)
    out = api.compile(path, tmp_path / "minilm.lamina", buckets=BUCKETS)
    model = load(out)
    for batch in (1, 3):
        for seq in (7, 64, 128):
            feeds = make_inputs(path, batch, seq, seed=batch * 1000 + seq)
            got = model.run(feeds)["last_hidden_state"]
            want = ort_run(path, feeds)[0]
            err = float(np.abs(got - want).max())
            assert err < 1e-4, f"batch {batch} seq {seq}: max abs error {err:.2e}"

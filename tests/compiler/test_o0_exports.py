"""Done-when of the backbone: O0 on real and random exports keeps outputs and removes nodes."""

from __future__ import annotations

import numpy as np
import pytest

import lamina.backends.reference as reference
from lamina.compiler.driver import api
from lamina.compiler.ir import count_nodes

CASES = [
    ("minilm", "torchscript", 14), ("minilm", "torchscript", 17), ("minilm", "dynamo", 18),
    ("bert", "torchscript", 17), ("bert", "dynamo", 18), ("distilbert", "torchscript", 17),
    ("distilbert", "dynamo", 18), ("roberta", "torchscript", 17), ("roberta", "dynamo", 18),
    ("electra", "torchscript", 17), ("electra", "dynamo", 18), ("bert", "torchscript", 14),
    ("minilm", "dynamo", 17), ("roberta", "torchscript", 15),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch, exporter, opset", CASES)
def test_o0_matches_and_shrinks(arch, exporter, opset, tmp_path):
    from lamina.zoo import export_model, make_inputs
    from tests.conftest import require_export_stack

    require_export_stack(minilm=arch == "minilm")
    path = export_model(arch, exporter, opset, tiny=True)
    model = api.load(path)
    before = count_nodes(model)
    out_path = tmp_path / "o0.onnx"
    optimized, _ = api.optimize(model, "O0")
    api.save(optimized, out_path)
    assert count_nodes(optimized) < before
    for batch in (1, 4):
        for seq in (8, 128):
            feeds = make_inputs(path, batch, seq, seed=batch * 1000 + seq)
            ref = reference.run(path, feeds)
            got = reference.run(out_path, feeds)
            for name, value in ref.items():
                np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0)

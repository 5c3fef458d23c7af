"""O1 on real exports: every layer's attention and GELU fused once, 2 x layers + 1 layer norms, same
outputs.

Representative exports (tiny random models, plus the real MiniLM): each exporter, decomposed (opset
14) and native LayerNormalization, eager and SDPA attention.
"""

from __future__ import annotations

import numpy as np
import pytest

from lamina.zoo import fusion_counts
from tests.conftest import require_export_stack

CASES = [  # arch, exporter, opset, attention implementation, layers
    ("bert", "torchscript", 14, "eager", 2),
    ("distilbert", "dynamo", 18, "eager", 2),
    ("roberta", "torchscript", 17, "sdpa", 2),
    ("electra", "dynamo", 18, "sdpa", 2),
]
MINILM = [("minilm", "dynamo", 18, "eager", 6), ("minilm", "torchscript", 14, "eager", 6)]


def _check(arch: str, exporter: str, opset: int, attn: str, layers: int) -> None:
    require_export_stack(minilm=arch == "minilm")
    from lamina.backends.reference import run
    from lamina.compiler.frontend import load_model
    from lamina.compiler.frontend.feeds import make_feeds
    from lamina.compiler.ir import clone
    from lamina.compiler.pipeline import PassManager, parse_pipeline
    from lamina.zoo import export_model

    path = export_model(arch, exporter, opset, tiny=True, attn_implementation=attn)
    m0 = PassManager(parse_pipeline("O0")).run(load_model(path))
    before = clone(m0)
    m1 = PassManager(parse_pipeline("O1")).run(m0)
    assert fusion_counts(m1) == {"attention": layers, "gelu": layers, "layernorm": 2 * layers + 1,
                                 "key_padding": layers}
    assert not any(n.op_type in ("Softmax", "Erf", "ReduceMean", "MatMul") for n in m1.graph)
    feeds = make_feeds(before, {"batch": 2, "seq": 12})
    feeds["attention_mask"][:] = 1
    feeds["attention_mask"][1, 7:] = 0
    a, b = run(before, feeds), run(m1, feeds)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("arch", "exporter", "opset", "attn", "layers"), CASES,
                         ids=[f"{c[0]}-{c[1]}-op{c[2]}-{c[3]}" for c in CASES])
def test_o1_fuses_every_layer(arch: str, exporter: str, opset: int, attn: str, layers: int) -> None:
    _check(arch, exporter, opset, attn, layers)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "exporter", "opset", "attn", "layers"), MINILM,
                         ids=[f"{c[0]}-{c[1]}-op{c[2]}" for c in MINILM])
def test_o1_fuses_real_minilm(arch: str, exporter: str, opset: int, attn: str, layers: int) -> None:
    _check(arch, exporter, opset, attn, layers)

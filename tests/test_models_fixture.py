"""The model zoo itself: every tiny export runs in ONNX Runtime and matches PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_export_stack

TINY_ARCHS = ("bert", "distilbert", "roberta", "electra")
COMBOS = [
    *[(a, "torchscript", 17) for a in TINY_ARCHS],
    *[(a, "dynamo", 18) for a in TINY_ARCHS],
    *[(a, "torchscript", 14) for a in TINY_ARCHS],
]


def _run_ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["last_hidden_state"], feeds)[0]


@pytest.mark.parametrize(("arch", "exporter", "opset"), COMBOS,
                         ids=[f"{a}-{e}-op{o}" for a, e, o in COMBOS])
def test_tiny_export_matches_pytorch(tiny_model: Callable[..., Path], arch: str, exporter: str,
                                     opset: int) -> None:
    import onnx

    from lamina.zoo import input_names, make_inputs, pytorch_reference

    path = tiny_model(arch, exporter, opset)
    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == input_names(arch)
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
    # Two shapes other than the export's example (2, 16): the axes really are dynamic.
    for batch, seq in ((3, 11), (1, 5)):
        feeds = make_inputs(path, batch, seq, seed=1)
        got = _run_ort(path, feeds)
        assert got.shape == (batch, seq, 64)
        np.testing.assert_allclose(got, pytorch_reference(arch, feeds), rtol=1e-4, atol=1e-4)


def test_make_inputs_is_realistic() -> None:
    require_export_stack()
    from lamina.zoo import make_inputs

    feeds = make_inputs("bert", batch=4, seq=12, seed=0)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    mask, ids = feeds["attention_mask"], feeds["input_ids"]
    assert all(a.dtype == np.int64 and a.shape == (4, 12) for a in feeds.values())
    assert mask[0].all() and not mask[1:].all()  # first row full, others padded
    assert (np.diff(mask, axis=1) <= 0).all()  # 1s then trailing 0s
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all() and ids.max() < 1000
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}
    assert (make_inputs("bert", 4, 12, seed=0)["input_ids"] == ids).all()  # seeded
    assert "token_type_ids" not in make_inputs("distilbert", 2, 8)
    rob = make_inputs("roberta", 2, 8)
    assert (rob["token_type_ids"] == 0).all()
    assert (rob["input_ids"][rob["attention_mask"] == 0] == 1).all()


def test_real_text_inputs() -> None:
    require_export_stack(minilm=True)
    from lamina.zoo import SAMPLE_TEXTS, real_text_inputs

    feeds = real_text_inputs()
    assert feeds["input_ids"].shape[0] == len(SAMPLE_TEXTS) >= 16
    assert (feeds["input_ids"][:, 0] == 101).all()  # [CLS]
    fixed = real_text_inputs(SAMPLE_TEXTS[:2], seq=32)
    assert fixed["input_ids"].shape == (2, 32)


@pytest.mark.slow
def test_minilm_export_matches_pytorch(minilm_ts17: Path, real_text_feeds: dict) -> None:
    from lamina.zoo import pytorch_reference

    got = _run_ort(minilm_ts17, real_text_feeds)
    np.testing.assert_allclose(got, pytorch_reference("minilm", real_text_feeds),
                               rtol=1e-4, atol=1e-4)

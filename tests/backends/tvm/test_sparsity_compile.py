"""Default compile on a pruned model: encode-sparsity picks the block-sparse kernel where the
(given) cost table says so, and the artifact matches ONNX Runtime on the pruned file; --no-sparsity
stays
dense."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tvm


def test_pruned_tiny_bert_compiles_sparse(tiny_bert: Path, tmp_path: Path):
    from lamina.backends.reference import run
    from lamina.backends.tvm import load
    from lamina.backends.tvm.target import resolve_target
    from lamina.backends.tvm.tuning.meta import database_dir
    from lamina.compiler.driver import api
    from lamina.passes.sparsity._prune import prune_model
    from lamina.zoo import make_inputs

    model = api.load(tiny_bert)
    prune_model(model, 0.9, ["4x1"])
    pruned = api.save(model, tmp_path / "pruned.onnx")
    db = tmp_path / "db"
    # A cost table in place of the measurement (which takes a minute): sparse pays at 90%.
    from lamina.passes.sparsity._cost import COSTS_FILE

    table = database_dir(db, resolve_target("auto", 1).tvm_target) / COSTS_FILE
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps({"target": "test", "dense": {"ns_per_mac": 0.03},
                                 "sparse": {"4": {"ns_per_block": 0.2, "ns_per_dim": 0.1}}}))
    log = io.StringIO()
    out = api.compile(
        pruned,
        tmp_path / "s.lamina",
        buckets=[(1, 16)],
        threads=1,
        tuning_db=str(db),
        debug=api.Debug(report_stream=log),
    )
    assert "pruned matmuls run sparse" in log.getvalue() and "predicted gain" in log.getvalue()
    assert b"lamina_sparse_dense" in out.joinpath("model.so").read_bytes()
    dense = api.compile(
        pruned,
        tmp_path / "d.lamina",
        buckets=[(1, 16)],
        threads=1,
        tuning_db=str(db),
        sparsity=False,
    )
    assert b"lamina_sparse_dense" not in dense.joinpath("model.so").read_bytes()
    feeds = make_inputs(pruned, 1, 12, seed=3)
    want = run(pruned, feeds)
    for art in (out, dense):
        got = load(art, threads=1).run(feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-4, rtol=1e-4)

"""``--precision bf16``: dense layers lowered to the BF16 kernels (``lower/ops/bf16_dense.py``),
the manifest, the accuracy cost, and the one-line errors on CPUs and targets without BF16.

Building for ``x86-avx512-bf16`` works on any host (LLVM has the instructions); running needs
AVX512-BF16, so those tests skip with the reason elsewhere. Tolerance: bf16 keeps 8 bits of
mantissa, so single values move by up to ~1e-2 relative while pooled embeddings stay within a cosine
of 1e-4 of ONNX Runtime fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm

F = TensorProto.FLOAT


def _need_bf16_host() -> None:
    from lamina.backends.tvm.kernels import host_supports

    if not host_supports("avx512bf16"):
        pytest.skip("host CPU has no AVX512-BF16 (vdpbf16ps)")


def _mlp(seq: int = 8) -> ir.Model:
    """x[1, seq, 33] -> MatMul(33 x 48) + bias -> Relu -> MatMul(48 x 2): K odd, and a 2-wide
    head that the BF16 kernels do not take (it stays fp32); and a Gemm (transB, bias) on h."""
    rng = np.random.default_rng(0)
    inits = [("w1", (rng.standard_normal((33, 48)) * 0.3).astype(np.float32)),
             ("b1", rng.standard_normal(48).astype(np.float32)),
             ("w2", (rng.standard_normal((48, 2)) * 0.3).astype(np.float32)),
             ("w3", (rng.standard_normal((32, 48)) * 0.3).astype(np.float32)),
             ("b3", rng.standard_normal(32).astype(np.float32)),
             ("shape2d", np.array([seq, 48], np.int64))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"]),
             helper.make_node("Reshape", ["h", "shape2d"], ["h2d"]),
             helper.make_node("Gemm", ["h2d", "w3", "b3"], ["g"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, [1, seq, 33])],
                          [helper.make_tensor_value_info(n, F, None) for n in ("h", "y", "g")],
                          [numpy_helper.from_array(v, n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    return ir.from_proto(m)


def _build_mlp(tmp: Path, target: str = "x86-avx512-bf16") -> Path:
    from lamina.backends.tvm import build_artifact

    return build_artifact({(1, 8): _mlp()}, tmp / "mlp.lamina", target=target, threads=2,
                          schedule="none", precision="bf16")


def test_bf16_lowering_keeps_narrow_heads_fp32_and_records_it(tmp_path):
    from lamina.backends.reference import run
    from lamina.backends.tvm import load
    from lamina.backends.tvm.kernels.dense_bf16 import dense_bf16_reference

    art = _build_mlp(tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    assert manifest["extra"]["bf16"] == {
        "dense_layers": 2, "fp32_dense_layers": ["w2 (N=2 is not a multiple of 16)"]}
    tgt = manifest["target"]
    assert "avx512bf16" in tgt["required_features"] and "avx512vnni" not in tgt["required_features"]
    _need_bf16_host()
    x = np.random.default_rng(1).standard_normal((1, 8, 33)).astype(np.float32)
    got = load(art).run({"x": x})
    want = run(_mlp(), {"x": x})
    m = _mlp()
    w1, b1 = (m.graph.initializers[n].const_value.numpy() for n in ("w1", "b1"))
    ref_h = dense_bf16_reference(x.reshape(8, 33), w1, b1, "relu").reshape(1, 8, 48)
    np.testing.assert_allclose(got["h"], ref_h, atol=1e-5, rtol=0)
    assert np.abs(got["h"] - want["h"]).max() > 1e-5  # bf16 rounding shows against fp32
    np.testing.assert_allclose(got["h"], want["h"], atol=0.05, rtol=0)
    np.testing.assert_allclose(got["y"], want["y"], atol=0.05, rtol=0)
    w3, b3 = (m.graph.initializers[n].const_value.numpy() for n in ("w3", "b3"))
    ref_g = dense_bf16_reference(got["h"].reshape(8, 48), w3.T, b3)
    np.testing.assert_allclose(got["g"], ref_g, atol=1e-5, rtol=0)


def test_bf16_artifact_is_refused_on_a_host_without_bf16(tmp_path, monkeypatch):
    import lamina.backends.tvm.target as target
    from lamina.backends.tvm import load
    from lamina.compiler.errors import ArtifactError

    art = _build_mlp(tmp_path)
    have = target.host_features() - {"avx512bf16", "amx-bf16"}
    monkeypatch.setattr(target, "host_features", lambda: have)
    with pytest.raises(ArtifactError, match=r"lacks avx512bf16") as err:
        load(art)
    assert "\n" not in str(err.value)


def test_precision_bf16_needs_bf16_instructions(monkeypatch):
    import lamina.backends.tvm.target as target
    from lamina.backends.tvm import check_precision_target
    from lamina.compiler.errors import BackendError

    with pytest.raises(BackendError, match="needs a target with AVX512-BF16 or AMX-BF16; "
                                           "target x86-avx512 "):
        check_precision_target("bf16", "x86-avx512")
    assert check_precision_target("fp32", "x86-avx512").isa_level == "x86-avx512"
    assert check_precision_target("bf16", "x86-avx512-amx").isa_level == "x86-avx512-amx"
    have = target.host_features() - {"avx512bf16", "amx-bf16", "amx-tile", "amx-int8"}
    monkeypatch.setattr(target, "host_features", lambda: have)
    with pytest.raises(BackendError, match="needs a CPU with AVX512-BF16 or AMX-BF16; this host "
                                           r"\(.*\) has ") as err:
        check_precision_target("bf16", "auto")
    assert "\n" not in str(err.value)


def test_cli_refuses_bf16_for_a_target_without_it_in_one_line(tiny_bert: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "lamina.compiler.driver.cli", "compile", str(tiny_bert), "-o",
         str(tmp_path / "x.lamina"), "--precision", "bf16", "--target", "x86-avx2"],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--precision bf16 needs a target with AVX512-BF16 or AMX-BF16" in lines[0]
    assert not (tmp_path / "x.lamina").exists()


@pytest.mark.slow
def test_compile_bf16_tiny_bert_matches_onnxruntime(tiny_bert: Path, tmp_path: Path, capsys):
    from lamina.backends import tvm as tvm_backend
    from lamina.backends.reference import run
    from lamina.compiler.driver.cli import main
    from lamina.compiler.driver.quantize import cosine, pooled
    from lamina.zoo import make_inputs

    _need_bf16_host()
    np.savez(tmp_path / "texts.npz", **make_inputs(tiny_bert, 24, 16, seed=3))
    out = tmp_path / "bf16.lamina"
    rc = main(["compile", str(tiny_bert), "-o", str(out), "--buckets", "2x16", "--precision",
               "bf16", "--calibration", str(tmp_path / "texts.npz")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "lamina: bf16 accuracy: mean cosine " in err and "over 24 sentences" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    assert manifest["target"]["isa_level"].startswith("x86-avx512")
    assert manifest["extra"]["bf16"]["dense_layers"] > 0
    cost = manifest["extra"]["precision_cost"]
    assert cost["sentences"] == 24 and cost["mean_cosine"] > 0.9999 and cost["min_cosine"] > 0.999
    feeds = make_inputs(tiny_bert, 2, 16, seed=5)
    art = tvm_backend.load(out)
    name = art.outputs[0].name
    got, want = art.run(feeds)[name], run(tiny_bert, feeds)[name]
    assert cosine(pooled(want, feeds), pooled(got, feeds)).min() > 0.9999
    assert 1e-6 < np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_precision_cost_is_skipped_in_one_line_without_a_tokenizer(tmp_path: Path):
    from lamina.compiler.driver.precision import find_inputs

    texts = tmp_path / "t.txt"
    texts.write_text("a sentence\n")
    manifest = {"index_checks": [{"input": "input_ids", "size": 1000, "table": "emb"}]}
    got = find_inputs(tmp_path / "model.onnx", manifest, str(texts), None)
    assert got == (None, None, "no tokenizer for this model (give --tokenizer DIR)")
    assert find_inputs(tmp_path / "model.onnx", manifest, str(texts), "tok")[1] == Path("tok")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert find_inputs(tmp_path / "model.onnx", manifest, str(texts), None)[1] == tmp_path


def _attention_model(seq: int = 32) -> ir.Model:
    """lamina::Attention over q, k, v ``[1, seq, 64]`` (2 heads of 32) with a key-padding mask."""
    names = ["q", "k", "v", "m"]
    g = helper.make_graph(
        [helper.make_node("Attention", names, ["y"], domain="lamina", num_heads=2, scale=0.3,
                          mask_kind="key_padding")], "att",
        [helper.make_tensor_value_info(n, F, [1, seq, 64]) for n in names[:3]]
        + [helper.make_tensor_value_info("m", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("y", F, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("lamina", 1)])
    m.ir_version = 9
    return ir.from_proto(m)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_runs_in_bf16_only_in_lossy_artifacts(precision, tmp_path):
    """A bf16 (or INT8) artifact's attention runs the BF16 kernel on a target with AVX512-BF16,
    which its manifest then requires; an fp32 artifact keeps the exact fp32 kernel."""
    from lamina.backends.reference import run
    from lamina.backends.tvm import build_artifact, load

    model = _attention_model()
    art = build_artifact({(1, 32): model}, tmp_path / "att.lamina", target="x86-avx512-bf16",
                         threads=2, schedule="none", precision=precision)
    required = json.loads((art / "manifest.json").read_text())["target"]["required_features"]
    assert ("avx512bf16" in required) == (precision == "bf16")
    _need_bf16_host()
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((1, 32, 64)).astype(np.float32) for n in "qkv"}
    feeds["m"] = (np.arange(32) < 27).astype(np.int64)[None]
    got, want = load(art).run(feeds)["y"], run(model, feeds)["y"]
    err = np.abs(got - want).max()
    assert (err < 1e-5) if precision == "fp32" else (1e-5 < err < 3e-2), err


def test_bf16_attention_is_chosen_for_lossy_artifacts_on_bf16_targets():
    from types import SimpleNamespace

    from lamina.backends.tvm.kernels import target_for
    from lamina.backends.tvm.lower.ops.bf16_dense import precision_scope
    from lamina.backends.tvm.lower.ops.lamina import _bf16_attention

    bf16, vnni = target_for("avx512bf16", 2), target_for("vnni", 2)
    int8 = SimpleNamespace(int8={"layer": object()}, target=bf16)
    assert _bf16_attention(int8, 128, 128, 32)
    assert not _bf16_attention(int8, 16, 16, 32)       # keys not in whole 32-key pairs of vectors
    assert not _bf16_attention(SimpleNamespace(int8={"layer": object()}, target=vnni), 128, 128, 32)
    assert not _bf16_attention(SimpleNamespace(int8={}, target=bf16), 128, 128, 32)  # exact fp32
    with precision_scope("bf16"):
        assert _bf16_attention(SimpleNamespace(int8={}, target=bf16), 128, 128, 32)

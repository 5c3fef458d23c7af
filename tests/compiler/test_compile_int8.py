"""``lamina compile --quantize int8`` end to end on a tiny BERT: calibration, fallback, TVM
artifact, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lamina.compiler.driver.cli import main


@pytest.mark.slow
def test_compile_quantize_int8(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    from lamina.zoo import make_inputs

    calib = make_inputs(tiny_bert, 64, 16)
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "int8.lamina"
    rc = main(
        [
            "compile",
            str(tiny_bert),
            "-o",
            str(out),
            "--buckets",
            "2x16",
            "--quantize",
            "int8",
            "--calibration",
            str(tmp_path / "calib.npz"),
            "--calibration-size",
            "32",
            "--target-cos",
            "0.99",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "lamina: INT8 (smooth-quant{alpha=0.8},quantize-int8{mode=static" in err
    assert "ops quantized, mean cosine" in err
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["extra"]["quantization"]
    assert info["target_met"] and info["quantized_ops"] > 0 and info["cosine"] >= 0.99
    assert "quantize-int8{" in manifest["pipeline"]
    assert _worst_pooled_cosine(out, tiny_bert, batch=2) >= 0.98


def _worst_pooled_cosine(artifact: Path, model: Path, batch: int) -> float:
    """The artifact's worst mean-pooled cosine to ONNX Runtime fp32 on seeded feeds."""
    from lamina.backends import tvm as tvm_backend
    from lamina.backends.reference import run
    from lamina.compiler.driver.quantize import cosine, pooled
    from lamina.zoo import make_inputs

    feeds = make_inputs(model, batch, 16, seed=5)
    art = tvm_backend.load(artifact)
    got = art.run(feeds)[art.outputs[0].name]
    want = run(model, feeds)[art.outputs[0].name]
    return float(cosine(pooled(want, feeds), pooled(got, feeds)).min())


@pytest.mark.slow
def test_compile_quantize_pruned_model_logs_sparse_int8_decisions(tiny_bert: Path, tmp_path: Path,
                                                                  capsys) -> None:
    """A 4x1-pruned model compiled to INT8: the lowering's cost model (measured on this target)
    decides per pruned matmul, and the compile log and the manifest list every decision."""
    from lamina.backends.tvm.kernels import host_supports
    from lamina.zoo import make_inputs

    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    pruned = tmp_path / "p90.onnx"
    assert main(["prune", str(tiny_bert), "-o", str(pruned), "--sparsity", "0.9",
                 "--pattern", "4x1"]) == 0
    np.savez(tmp_path / "calib.npz", **make_inputs(tiny_bert, 16, 16))
    out = tmp_path / "int8.lamina"
    rc = main(["compile", str(pruned), "-o", str(out), "--buckets", "1x64", "--target",
               "x86-avx512-vnni", "--quantize", "int8", "--calibration",
               str(tmp_path / "calib.npz"), "--calibration-size", "16", "--target-cos", "0.9"])
    err = capsys.readouterr().err
    assert rc == 0, err
    info = json.loads((out / "manifest.json").read_text())["extra"]["int8_sparse"]
    assert info["pruned"] > 0 and len(info["decisions"]) == info["pruned"]
    assert f"lamina: sparse INT8: {info['sparse']} of {info['pruned']} pruned INT8 matmuls" in err
    assert all("predicted gain" in d and d in err for d in info["decisions"])



@pytest.mark.parametrize("target, bits", [("x86-avx2", 7), ("x86-avx512", 7),
                                          ("x86-avx512-vnni", 8), ("x86-avx512-amx", 8)])
def test_int8_weight_bits_follow_the_targets_kernels(target: str, bits: int) -> None:
    from lamina.backends import tvm as tvm_backend

    assert tvm_backend.int8_weight_bits(target, 1) == bits


def test_compile_for_avx2_quantizes_7_bit_weights(tiny_bert: Path, tmp_path: Path) -> None:
    """AVX2's ``vpmaddubsw`` takes 7-bit weights: ``lamina compile`` quantizes them so for an AVX2
    target (calibrated and measured as such, nothing re-rounded in the lowering) and the manifest
    says so."""
    from lamina.compiler.driver import api
    from lamina.compiler.driver.quantize import QuantizeConfig
    from lamina.zoo import make_inputs

    np.savez(tmp_path / "calib.npz", **make_inputs(tiny_bert, 16, 16))
    cfg = QuantizeConfig(calibration=str(tmp_path / "calib.npz"), calibration_size=16,
                         target_cos=None)
    out = api.compile(tiny_bert, tmp_path / "q.lamina", buckets=[(1, 16)], target="x86-avx2",
                      threads=1, quantize=cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["quantization"]["weight_bits"] == 7
    assert "weight-bits=7" in manifest["pipeline"]
    assert _worst_pooled_cosine(out, tiny_bert, batch=1) >= 0.98

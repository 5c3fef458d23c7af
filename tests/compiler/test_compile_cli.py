"""``lamina compile``, ``lamina run`` and ``lamina bench`` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lamina.compiler.driver.cli import main


@pytest.fixture(scope="module")
def tiny_artifact(tiny_bert: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny.lamina"
    assert (
        main(
            [
                "compile",
                str(tiny_bert),
                "-o",
                str(out),
                "--buckets",
                "1x16,2x16",
                "--pipeline",
                "O0",
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow
def test_compile_then_run_cli(tiny_artifact: Path, tiny_bert: Path, tmp_path: Path, capsys):
    from lamina.zoo import make_inputs

    feeds = make_inputs(tiny_bert, 2, 9)
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / f'{name}.npy'}"]
    assert main(["run", str(tiny_artifact), *args, "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[2, 9, 64]" in out and "time:" in out
    import lamina.backends.reference as reference

    ref = reference.run(tiny_bert, feeds)
    for name, value in ref.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), value, atol=1e-4)


@pytest.mark.slow
def test_bench_json(tiny_artifact: Path, capsys):
    rc = main(
        [
            "bench",
            str(tiny_artifact),
            "--batch",
            "1",
            "--seq",
            "16",
            "--threads",
            "1",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--engines",
            "lamina,onnxruntime",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"lamina", "onnxruntime"}
    assert report["results"]["lamina"]["calls"] == 2
    assert report["results"]["onnxruntime"]["lamina_p50_over_this_p50"] > 0
    ort = report["results"]["onnxruntime"]
    assert len(ort["round_ratios"]) == report["rounds"] and ort["round_ratio_median"] > 0


@pytest.mark.slow
def test_bench_baseline_named_in_engines_is_timed_once(tiny_artifact: Path, capsys):
    common = ["bench", str(tiny_artifact), "--batch", "1", "--seq", "16", "--threads", "1"]
    common += ["--iters", "2", "--warmup", "1", "--rounds", "2", "--json"]
    rc = main([*common, "--engines", "lamina,baseline", "--baseline", str(tiny_artifact)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"lamina", "baseline"}
    assert report["results"]["baseline"]["calls"] == 4
    assert main([*common, "--engines", "lamina,baseline"]) == 2
    assert "--baseline ART" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_peers_mark_precision_and_check_lamina_first(tiny_artifact: Path, capsys):
    engines = ["lamina", "onnxruntime", "ort-int8-dynamic", "ort-int8-qdq"]
    try:
        import openvino  # noqa: F401

        engines.append("openvino-f32")
    except ImportError:
        pass
    rc = main(["bench", str(tiny_artifact), "--batch", "1", "--seq", "16", "--threads", "1",
               "--iters", "2", "--warmup", "1", "--rounds", "1", "--calibration-sets", "2",
               "--engines", ",".join(engines), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    res = report["results"]
    assert set(res) == set(engines)
    assert res["lamina"]["precision"] == "fp32" and res["onnxruntime"]["precision"] == "fp32"
    assert res["ort-int8-dynamic"]["precision"] == res["ort-int8-qdq"]["precision"] == "int8"
    assert "vs ONNX Runtime fp32" in report["lamina_check"]


def test_run_rejects_missing_input_file(tiny_artifact: Path, capsys):
    assert main(["run", str(tiny_artifact), "--input", "input_ids=/nonexistent.npy"]) != 0
    assert "no such file" in capsys.readouterr().err

"""The ``lamina`` command line: inspect, passes, opt, dumps, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h

from lamina.compiler.driver.cli import main


def lamina(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lamina.compiler.driver.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def _one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_truncated_file(tiny_bert: Path, tmp_path: Path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(tiny_bert.read_bytes()[: tiny_bert.stat().st_size // 3])
    _one_clear_line(lamina("inspect", str(bad)), "truncated.onnx")


def test_random_bytes(tmp_path: Path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    _one_clear_line(
        lamina("opt", str(bad), "-o", str(tmp_path / "o.onnx")), "random.onnx", "not a valid ONNX"
    )


def test_missing_file(tmp_path: Path):
    _one_clear_line(lamina("inspect", str(tmp_path / "nope.onnx")), "no such file")


def test_unknown_domain(tmp_path: Path):
    node = h.make_node("FancyOp", ["x"], ["y"], domain="com.example", name="fancy_1")
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", 1, [2])],
                         [h.make_tensor_value_info("y", 1, [2])])
    model = h.make_model(
        graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    _one_clear_line(lamina("inspect", str(path)), "fancy_1", "com.example", "FancyOp")


def test_missing_external_data(tmp_path: Path):
    w = onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    node = h.make_node("MatMul", ["x", "w"], ["y"])
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", 1, [1, 64])],
                         [h.make_tensor_value_info("y", 1, [1, 64])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    _one_clear_line(
        lamina("opt", str(path), "-o", str(tmp_path / "o.onnx")), "ext.onnx.data", "missing"
    )


def test_bad_input_shape_flag(tiny_bert: Path, tmp_path: Path):
    proc = lamina(
        "opt", str(tiny_bert), "-o", str(tmp_path / "o.onnx"), "--input-shape", "nosuch=1x8"
    )
    _one_clear_line(proc, "nosuch", "input_ids")


def test_inspect_json(tiny_bert: Path, capsys):
    assert main(["inspect", "--json", str(tiny_bert)]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("num_layers", "num_heads", "hidden_size", "num_parameters", "ops"):
        assert key in info
    assert info["num_layers"] == 2 and info["hidden_size"] == 64 and info["num_heads"] == 4


def test_opt_print_ir_is_identical_across_runs(tiny_bert: Path, tmp_path: Path):
    outs = [
        lamina("opt", str(tiny_bert), "-o", str(tmp_path / f"o{i}.onnx"), "--print-ir-after-all")
        for i in range(2)
    ]
    assert outs[0].returncode == 0, outs[0].stderr
    assert outs[0].stdout == outs[1].stdout and "IR Dump After" in outs[0].stdout


def test_opt_dump_ir_and_verify(tiny_bert: Path, tmp_path: Path, capsys):
    dump = tmp_path / "dump"
    rc = main(["opt", str(tiny_bert), "-o", str(tmp_path / "o.onnx"), "--dump-ir", str(dump),
               "--verify-each", "--pass-timing", "--pass-stats"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "Pass execution timing report" in err and "max abs error" in err
    files = {p.name for p in dump.iterdir()}
    assert {"000_input.txt", "000_input.onnx", "pipeline.txt", "stats.json"} <= files
    assert any(f.endswith(".diff") for f in files)


def test_passes_lists_registry(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold-constants" in out and "max-elements" in out and "O0" in out


def test_custom_pass_from_file(tiny_bert: Path, tmp_path: Path):
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(
        "from lamina.compiler.pipeline import Pass, PassResult, register\n"
        "@register('count-matmuls')\n"
        "class CountMatMulsPass(Pass):\n"
        "    '''Count MatMul nodes (changes nothing).'''\n"
        "    def run(self, model, ctx):\n"
        "        n = sum(1 for node in model.graph if node.op_type == 'MatMul')\n"
        "        return PassResult(model, changed=False, stats={'matmuls': n})\n")
    proc = lamina(
        "opt",
        str(tiny_bert),
        "-o",
        str(tmp_path / "o.onnx"),
        "--load-passes",
        str(plugin),
        "--pipeline",
        "O0,count-matmuls",
        "--pass-stats",
    )
    assert proc.returncode == 0, proc.stderr
    assert "count-matmuls: no change" in proc.stderr and "matmuls=" in proc.stderr


def test_pipeline_environment_variables(monkeypatch):
    """LAMINA_PIPELINE sets --pipeline's default for opt and compile; LAMINA_COMPILE_PIPELINE, for
    compile only, wins over it; the flag wins over both."""
    from lamina.compiler.driver.cli import build_parser

    compile_args = ["compile", "m.onnx", "-o", "m.lamina"]
    monkeypatch.delenv("LAMINA_COMPILE_PIPELINE", raising=False)
    monkeypatch.delenv("LAMINA_PIPELINE", raising=False)
    # None: compile's own default, O1 with the sparsity passes (see --no-sparsity).
    assert build_parser().parse_args(compile_args).pipeline is None
    monkeypatch.setenv("LAMINA_PIPELINE", "O0")
    assert build_parser().parse_args(compile_args).pipeline == "O0"
    assert build_parser().parse_args(["opt", "m.onnx", "-o", "o.onnx"]).pipeline == "O0"
    monkeypatch.setenv("LAMINA_COMPILE_PIPELINE", "O0,fuse-gelu")
    assert build_parser().parse_args(compile_args).pipeline == "O0,fuse-gelu"
    assert build_parser().parse_args(["opt", "m.onnx", "-o", "o.onnx"]).pipeline == "O0"
    assert build_parser().parse_args([*compile_args, "--pipeline", "O1"]).pipeline == "O1"

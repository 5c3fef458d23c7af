"""Artifacts of a tiny BERT: accuracy, bucket padding invariance, fresh-process round trip,
tamper and ISA refusal, atomic writes, feed validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from tvm_test_utils import ort_run, static_canonical

from lamina.compiler.errors import ArtifactError, UsageError

pytestmark = pytest.mark.tvm

BUCKETS = [(1, 16), (2, 32)]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lamina.backends.tvm import build_artifact, io_dims_from_model

    models = {k: static_canonical(tiny_bert, *k) for k in BUCKETS}
    dims = io_dims_from_model(ir.load(str(tiny_bert)))
    out = tmp_path_factory.mktemp("art") / "tiny.lamina"
    dump = tmp_path_factory.mktemp("dump")
    build_artifact(models, out, target="auto", io_dims=dims, dump_dir=dump,
                   manifest_extra={"pipeline": "O0", "source_model": str(tiny_bert),
                                   "source_model_sha256": "0" * 64, "note": "test"})
    assert sorted(p.name for p in (dump / "tvm").iterdir())[:3] == [
        "00_lowered.py", "01_legalized.py", "02_fused.py"]
    return out


@pytest.fixture(scope="module")
def model(artifact: Path):
    from lamina.backends.tvm import load

    return load(artifact, threads=1)


def _feeds(path: Path, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    from lamina.zoo import make_inputs

    return make_inputs(path, batch, seq, seed)


def test_manifest_contents(artifact: Path):
    m = json.loads((artifact / "manifest.json").read_text())
    assert m["format"] == "lamina-artifact" and m["format_version"] == 1
    assert m["buckets"][0]["function"] == "main_b1_s16"
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m["inputs"][0] == {"name": "input_ids", "dtype": "int64", "dims": ["batch", "seq"]}
    assert m["outputs"][0]["dims"][:2] == ["batch", "seq"]
    assert m["target"]["isa_level"] and m["target"]["mcpu"] != "native"
    assert set(m["files"]) == {"model.so", "params.bin"}
    assert m["pipeline"] == "O0" and m["extra"] == {"note": "test"}
    assert m["tvm_version"] and m["tvm_ffi_version"] and m["lamina_version"]
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("batch,seq", [(1, 16), (1, 5), (2, 32), (2, 9)])
def test_matches_onnxruntime(model, tiny_bert: Path, batch: int, seq: int):
    feeds = _feeds(tiny_bert, batch, seq)
    got = model.run(feeds)["last_hidden_state"]
    want = ort_run(tiny_bert, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bucket_padding_invariance(model, tiny_bert: Path):
    feeds = _feeds(tiny_bert, 1, 11, seed=3)
    small = model.run(feeds)["last_hidden_state"]  # runs in 1x16
    assert model.plan(1, 11) == ((1, 16), 1)
    # The same row, padded to 20 with mask 0 beside a row of 20: runs in 2x32.
    other = _feeds(tiny_bert, 1, 20, seed=4)
    two = {k: np.concatenate([np.pad(v, ((0, 0), (0, 9))), other[k]]) for k, v in feeds.items()}
    big = model.run(two)["last_hidden_state"]
    assert model.plan(2, 20) == ((2, 32), 1)
    assert big.shape[:2] == (2, 20)
    np.testing.assert_allclose(big[0, :11], small[0], atol=1e-5, rtol=0)


def test_calls_reuse_no_stale_state(model, tiny_bert: Path):
    """The bound input tensors are rewritten (padding zeroed) every call, and outputs are copies."""
    full, short = _feeds(tiny_bert, 1, 16, seed=5), _feeds(tiny_bert, 1, 6, seed=6)
    first = model.run(full)["last_hidden_state"]
    kept = first.copy()
    got = model.run(short)["last_hidden_state"]  # same 1x16 function, after a full row
    np.testing.assert_allclose(got, ort_run(tiny_bert, short)[0], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(first, kept)


def test_batch_split_into_calls(model, tiny_bert: Path):
    feeds = _feeds(tiny_bert, 5, 8)  # no bucket has batch 5: five 1x16 calls
    assert model.plan(5, 8) == ((1, 16), 5)
    assert model.plan(3, 30) == ((2, 32), 2)
    got = model.run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(got, ort_run(tiny_bert, feeds)[0], atol=1e-4, rtol=0)


def test_int32_feeds_accepted(model, tiny_bert: Path):
    feeds = _feeds(tiny_bert, 1, 8)
    a = model.run(feeds)["last_hidden_state"]
    b = model.run({k: v.astype(np.int32) for k, v in feeds.items()})["last_hidden_state"]
    np.testing.assert_array_equal(a, b)


def test_bad_feeds(model, tiny_bert: Path):
    feeds = _feeds(tiny_bert, 1, 8)
    with pytest.raises(UsageError, match="unknown input 'input_idz'"):
        model.run({**feeds, "input_idz": feeds["input_ids"]})
    with pytest.raises(UsageError, match="missing input 'token_type_ids'"):
        model.run({k: v for k, v in feeds.items() if k != "token_type_ids"})
    with pytest.raises(UsageError, match="'attention_mask' has dtype float32, expected int64"):
        model.run({**feeds, "attention_mask": feeds["attention_mask"].astype(np.float32)})
    with pytest.raises(UsageError, match="'input_ids' has rank 1"):
        model.run({**feeds, "input_ids": feeds["input_ids"][0]})
    with pytest.raises(UsageError, match="sequence length 40 exceeds the longest bucket"):
        model.run(_feeds(tiny_bert, 1, 40))
    with pytest.raises(UsageError, match="'attention_mask' has seq 9 but input 'input_ids'"):
        model.run({**feeds, "attention_mask": np.ones((1, 9), np.int64)})


def test_out_of_range_token_id_refused(model, tiny_bert: Path):
    # The manifest's index_checks refuse it before the call (the kernels' take(mode="wrap")
    # would only keep the process alive); see test_runtime_reliability.py.
    feeds = _feeds(tiny_bert, 1, 8)
    feeds["input_ids"][0, 1] = 10**9
    with pytest.raises(UsageError, match="input 'input_ids' holds 1000000000"):
        model.run(feeds)


def test_fresh_process_round_trip(model, artifact: Path, tiny_bert: Path, tmp_path: Path):
    feeds = _feeds(tiny_bert, 2, 13)
    np.savez(tmp_path / "feeds.npz", **feeds)
    script = textwrap.dedent(f"""
        import sys, numpy as np
        import lamina.backends.tvm as bt
        import tvm
        m = bt.load({str(artifact)!r}, threads=2)
        feeds = dict(np.load({str(tmp_path / 'feeds.npz')!r}))
        out = m.run(feeds)
        assert tvm.runtime.num_threads() == 2, tvm.runtime.num_threads()
        np.save({str(tmp_path / 'out.npy')!r}, out["last_hidden_state"])
        # an artifact runs on TVM alone: no ONNX stack imported (TVM itself imports torch)
        bad = [n for n in ("onnx", "onnx_ir", "onnxruntime") if n in sys.modules]
        assert not bad, bad
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TVM_NUM_THREADS", None)  # load(threads=2) must size TVM's pool by itself
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path,
                   timeout=300)
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(got, model.run(feeds)["last_hidden_state"])


def _copy(artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.lamina"
    shutil.copytree(artifact, dst)
    return dst


def _resign(path: Path, edit) -> None:
    from lamina.backends.tvm.artifact import manifest_checksum

    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    m["manifest_sha256"] = manifest_checksum(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["model.so", "params.bin"])
def test_tampered_file_refused(artifact: Path, tmp_path: Path, name: str):
    from lamina.backends.tvm import load

    dst = _copy(artifact, tmp_path)
    with open(dst / name, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=f"{name}: sha256 mismatch.*recompile"):
        load(dst)


def test_tampered_manifest_refused(artifact: Path, tmp_path: Path):
    from lamina.backends.tvm import load

    dst = _copy(artifact, tmp_path)
    m = json.loads((dst / "manifest.json").read_text())
    m["buckets"][0]["seq"] = 64
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest.json: checksum mismatch"):
        load(dst)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: unreadable"):
        load(dst)


def test_missing_isa_feature_refused(artifact: Path, tmp_path: Path):
    from lamina.backends.tvm import load

    dst = _copy(artifact, tmp_path)
    _resign(dst, lambda m: m["target"]["required_features"].append("avx10_9"))
    with pytest.raises(ArtifactError, match="lacks avx10_9.*recompile"):
        load(dst)


def test_other_tvm_version_refused(artifact: Path, tmp_path: Path):
    from lamina.backends.tvm import load

    dst = _copy(artifact, tmp_path)
    _resign(dst, lambda m: m.update(tvm_version="0.1.0"))
    with pytest.raises(ArtifactError, match="built with apache-tvm 0.1.0"):
        load(dst)


def test_not_an_artifact(tmp_path: Path):
    from lamina.backends.tvm import load

    with pytest.raises(ArtifactError, match="not a Lamina artifact"):
        load(tmp_path)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write(tmp_path: Path, exc: type[BaseException]):
    from lamina.backends.tvm.artifact import write_artifact

    out = tmp_path / "x.lamina"

    def ok(p: Path) -> None:
        p.write_bytes(b"data")

    def boom(p: Path) -> None:
        p.write_bytes(b"half")
        raise exc("interrupted")

    with pytest.raises(exc):
        write_artifact(out, {"format": "lamina-artifact"}, {"a.bin": ok, "b.bin": boom})
    assert list(tmp_path.iterdir()) == []
    # an existing artifact survives a failed rewrite, and is replaced by a good one
    write_artifact(out, {"format": "lamina-artifact", "v": 1}, {"a.bin": ok})
    with pytest.raises(exc):
        write_artifact(out, {"format": "lamina-artifact", "v": 2}, {"b.bin": boom})
    assert json.loads((out / "manifest.json").read_text())["v"] == 1
    write_artifact(out, {"format": "lamina-artifact", "v": 3}, {"a.bin": ok})
    assert json.loads((out / "manifest.json").read_text())["v"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["x.lamina"]


def test_fp32_artifact_loads_on_a_host_without_vnni(artifact: Path, monkeypatch):
    """Built with ``auto`` (VNNI allowed on a VNNI host), but no fp32 kernel uses VNNI."""
    import lamina.backends.tvm.target as target
    from lamina.backends.tvm import load

    required = json.loads((artifact / "manifest.json").read_text())["target"]["required_features"]
    assert "avx512vnni" not in required and not any(f.startswith("amx") for f in required)
    have = target.host_features() - {"avx512vnni"}
    monkeypatch.setattr(target, "host_features", lambda: have)
    load(artifact)

"""The runtime under real use: concurrent calls, out-of-range ids, padding without a mask,
writable artifacts, a full disk while writing."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from tvm_test_utils import static_canonical

from lamina.compiler.errors import ArtifactError, UsageError

pytestmark = pytest.mark.tvm

BUCKETS = [(1, 16), (2, 32)]


def _build(src: Path, out: Path) -> Path:
    from lamina.backends.tvm import build_artifact, io_dims_from_model

    models = {k: static_canonical(src, *k) for k in BUCKETS}
    build_artifact(models, out, target="auto", io_dims=io_dims_from_model(ir.load(str(src))))
    return out


@pytest.fixture(scope="module")
def artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tiny_bert, tmp_path_factory.mktemp("art") / "tiny.lamina")


@pytest.fixture(scope="module")
def model(artifact: Path):
    from lamina.backends.tvm import load

    return load(artifact, threads=2)


def _feeds(path: Path, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    from lamina.zoo import make_inputs

    return make_inputs(path, batch, seq, seed)


# -- concurrency ------------------------------------------------------------------------------

def test_concurrent_calls_equal_serial(model, tiny_bert: Path):
    shapes = [(1, 16), (1, 5), (2, 32), (2, 9), (3, 7), (1, 30)]
    requests = [_feeds(tiny_bert, *shapes[i % len(shapes)], seed=i) for i in range(24)]
    serial = [model.run(f)["last_hidden_state"] for f in requests]
    threads, calls = 8, 12
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for c in range(calls):
                i = (t * 5 + c) % len(requests)
                results[(t, c)] = model.run(requests[i])["last_hidden_state"]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors[0]
    assert len(results) == threads * calls
    for (t, c), got in results.items():
        np.testing.assert_array_equal(got, serial[(t * 5 + c) % len(requests)])
    # the VM pool holds at most one VM per core, whatever the number of calling threads
    assert 1 <= len(model._idle_vms) <= model._cores and model._active == 0


# -- ids --------------------------------------------------------------------------------------

def test_index_checks_in_manifest(artifact: Path):
    m = json.loads((artifact / "manifest.json").read_text())
    assert {(c["input"], c["size"]) for c in m["index_checks"]} == {
        ("input_ids", 1000), ("token_type_ids", 2)}


@pytest.mark.parametrize("bad", [1000, 2**40, -1])
def test_out_of_range_ids_refused(model, tiny_bert: Path, bad: int):
    feeds = _feeds(tiny_bert, 2, 8)
    feeds["input_ids"][1, 3] = bad
    with pytest.raises(UsageError, match=rf"input 'input_ids' holds {bad} at \[1, 3\], outside "
                                         r"\[0, 1000\).*word_embeddings"):
        model.run(feeds)


def test_out_of_range_token_type_refused(model, tiny_bert: Path):
    feeds = _feeds(tiny_bert, 1, 8)
    feeds["token_type_ids"][0, 0] = 2
    with pytest.raises(UsageError, match=r"'token_type_ids' holds 2 .*\[0, 2\)"):
        model.run(feeds)
    feeds["token_type_ids"][0, 0] = 1  # the largest valid id still runs
    assert model.run(feeds)["last_hidden_state"].shape == (1, 8, 64)


# -- padding without an attention mask --------------------------------------------------------

def _mean_pool_model(path: Path) -> Path:
    """ids -> embedding -> mean over seq -> MatMul: padding changes the mean (no mask input)."""
    rng = np.random.default_rng(0)
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [50, 8],
                             rng.standard_normal((50, 8)).astype(np.float32).ravel())
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4],
                           rng.standard_normal((8, 4)).astype(np.float32).ravel())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
         helper.make_node("ReduceMean", ["e", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["pooled"])],
        "meanpool",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [emb, w, axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_padding_refused_without_mask(tmp_path: Path):
    from lamina.backends.tvm import load

    src = _mean_pool_model(tmp_path / "meanpool.onnx")
    m = load(_build(src, tmp_path / "meanpool.lamina"), threads=1)
    ids = np.arange(10, dtype=np.int64).reshape(1, 10) % 50
    with pytest.raises(UsageError, match=r"sequence length 10 would run in bucket 1x16 padded "
                                         r"to 16, but the model has no attention-mask input.*"
                                         r"--buckets 1x10,1x16,2x32"):
        m.run({"input_ids": ids})
    # exact bucket lengths run, and padding the batch alone (rows are independent) is fine
    full = np.arange(32, dtype=np.int64).reshape(1, 32) % 50
    want = m.run({"input_ids": np.concatenate([full, full])})["pooled"][:1]
    np.testing.assert_allclose(m.run({"input_ids": full})["pooled"], want, rtol=1e-6)


# -- permissions ------------------------------------------------------------------------------

def test_writable_artifact_refused(artifact: Path, tmp_path: Path, monkeypatch):
    from lamina.backends.tvm import load

    dst = tmp_path / "copy.lamina"
    shutil.copytree(artifact, dst)
    assert not any(p.stat().st_mode & 0o022 for p in dst.iterdir())
    os.chmod(dst / "model.so", 0o664)
    monkeypatch.delenv("LAMINA_ALLOW_WRITABLE_ARTIFACTS", raising=False)
    with pytest.raises(ArtifactError, match=r"model.so: is writable by its group.*chmod -R go-w"):
        load(dst)
    os.chmod(dst / "model.so", 0o644)
    os.chmod(dst, 0o777)
    with pytest.raises(ArtifactError, match=r"copy.lamina: is writable by other users"):
        load(dst)
    assert load(dst, allow_writable=True).buckets == BUCKETS
    monkeypatch.setenv("LAMINA_ALLOW_WRITABLE_ARTIFACTS", "1")
    assert load(dst).buckets == BUCKETS


def test_written_without_group_write_under_umask_002(tmp_path: Path):
    from lamina.backends.tvm.artifact import write_artifact

    old = os.umask(0o002)
    try:
        out = write_artifact(tmp_path / "x.lamina", {"format": "lamina-artifact"},
                             {"a.bin": lambda p: p.write_bytes(b"data")})
    finally:
        os.umask(old)
    assert not any(p.stat().st_mode & 0o022 for p in out.iterdir())


# -- a full disk ------------------------------------------------------------------------------

def test_full_disk_leaves_nothing(tmp_path: Path):
    from lamina.backends.tvm.artifact import write_artifact

    def full(p: Path) -> None:
        p.write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(p))

    out = tmp_path / "x.lamina"
    with pytest.raises(ArtifactError, match=r"x.lamina: cannot write the artifact, no space "
                                            r"left on the device.*nothing was written"):
        write_artifact(out, {"format": "lamina-artifact"},
                       {"a.bin": lambda p: p.write_bytes(b"a"), "b.bin": full})
    assert list(tmp_path.iterdir()) == []


def test_real_write_failure_leaves_nothing(tmp_path: Path):
    """The file-size limit makes the kernel fail a real write (EFBIG), as a full disk would."""
    from lamina.backends.tvm.artifact import write_artifact

    pid = os.fork()
    if pid == 0:  # child: write under a 64 KiB file-size limit
        code = 3
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
            write_artifact(tmp_path / "x.lamina", {"format": "lamina-artifact"},
                           {"a.bin": lambda p: p.write_bytes(b"a" * (1 << 20))})
            code = 1
        except ArtifactError as e:
            code = 0 if "no space left" in str(e) and "\n" not in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(tmp_path.iterdir()) == []


# -- NaN / Inf weights ------------------------------------------------------------------------

def test_nan_weights_compile_with_a_warning(tmp_path: Path, caplog):
    import logging

    from lamina.backends.tvm import load
    from lamina.compiler.driver import api

    src = _mean_pool_model(tmp_path / "nan.onnx")
    m = onnx.load(str(src))
    w = next(t for t in m.graph.initializer if t.name == "w")
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[2, 1] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(arr, "w"))
    onnx.save(m, str(src))
    with caplog.at_level(logging.WARNING):
        out = api.compile(src, tmp_path / "nan.lamina", buckets=[(1, 8)])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("weight 'w' (1 NaN, 0 Inf of 32) holds NaN or Inf values" in w for w in warned), \
        warned
    pooled = load(out, threads=1).run({"input_ids": np.ones((1, 8), np.int64)})["pooled"]
    assert np.isnan(pooled[0, 1]) and np.isfinite(pooled[0, [0, 2, 3]]).all()

"""MetaSchedule tuning: database round trip, resume without new trials, failures survived.

Tiny shapes and a handful of trials; no timing assertions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from lamina.backends.tvm.kernels import host_target
from lamina.backends.tvm.tuning import apply, database_dir, plan_tasks, tune
from lamina.backends.tvm.tuning.kernel_search import (
    KernelTiles,
    best_attention_config,
    best_dense_config,
)
from lamina.backends.tvm.tuning.meta import LEDGER, _share

pytestmark = [pytest.mark.tvm]


def _tiny_module() -> tvm.IRModule:
    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((16, 32), "float32"), w: R.Tensor((32, 16), "float32"),
                 b: R.Tensor((16,), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                z = R.add(y, b)
                o = R.nn.relu(z)
                R.output(o)
            return o

    return relax.get_pipeline("zero")(Mod)


def _records(db_dir, target) -> int:
    """Valid records (MetaSchedule also stores failed builds / runs with run_secs = 1e10)."""
    path = database_dir(db_dir, target) / "database_tuning_record.json"
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for r in rows if r[1][1] and max(float(t) for t in r[1][1]) < 1e9)


def test_share_is_proportional_with_floor() -> None:
    assert _share(10, [3.0, 1.0], 0) == [8, 2] or _share(10, [3.0, 1.0], 0) == [7, 3]
    assert sum(_share(100, [5.0, 3.0, 2.0], 0)) == 100
    assert _share(4, [100.0, 1.0], 1)[1] >= 1


def test_plan_skips_scheduled_kernels(tmp_path) -> None:
    from lamina.backends.tvm.kernels import dense_kernel

    target = host_target(2)
    mod = _tiny_module()
    mod["lamina_dense"] = dense_kernel(8, 8, 8, target=target)
    names = [p.name for p in plan_tasks(mod, target, 8, tmp_path)]
    assert names and all("lamina_dense" not in n for n in names)


@pytest.mark.slow
def test_tune_roundtrip_and_resume(tmp_path) -> None:
    target = host_target(2)
    mod = _tiny_module()
    events: list = []
    tune(mod, target, trials=3, db_dir=tmp_path, on_progress=events.append, trials_per_iter=3)
    n1 = _records(tmp_path, target)
    assert n1 >= 1, "tuning produced no valid record (builder time-out?)"
    assert any(e.event == "batch" for e in events)
    ledger = json.loads((database_dir(tmp_path, target) / LEDGER).read_text())
    assert sum(ledger.values()) >= 3

    # Same model, same target: reuses the records, measures nothing new.
    events2: list = []
    tune(mod, target, trials=3, db_dir=tmp_path, on_progress=events2.append)
    assert _records(tmp_path, target) == n1
    assert not events2

    # The database schedules the module, and it still computes the right thing.
    ex = tvm.compile(apply(mod, target, tmp_path), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s, dtype=np.float32) for s in ((16, 32), (32, 16), (16,)))
    out = vm["main"](*[tvm.runtime.tensor(a) for a in (x, w, b)]).numpy()
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_failing_builds_do_not_end_the_run(tmp_path) -> None:
    target = host_target(2)
    # Every build times out: tuning returns, records nothing, and charges the ledger.
    tune(_tiny_module(), target, trials=2, db_dir=tmp_path, build_timeout_s=0.01)
    assert _records(tmp_path, target) == 0
    ledger = json.loads((database_dir(tmp_path, target) / LEDGER).read_text())
    assert sum(ledger.values()) >= 2
    # apply ignores the failed records, falls back to default schedules, and still builds.
    from lamina.backends.tvm.tuning import open_database

    db = open_database(tmp_path, target)
    for rec in db.get_all_tuning_records():
        assert not db.get_top_k(rec.workload, 1)  # failed builds are never "best"
    tvm.compile(apply(_tiny_module(), target, tmp_path), target)


def test_kernel_search_caches(tmp_path) -> None:
    target = host_target(2)
    cfg = best_dense_config(16, 16, 32, target, cache=tmp_path, budget_s=0.0)
    tiles = database_dir(tmp_path, target) / "dense_tiles.json"
    assert tiles.exists() and "16x16x32" in json.loads(tiles.read_text())
    assert best_dense_config(16, 16, 32, target, cache=tmp_path, measure=False) == cfg


def test_attention_tile_search_caches_and_reports(tmp_path) -> None:
    from lamina.backends.tvm.kernels.attention import candidate_attention_configs

    target = host_target(2)
    assert len(candidate_attention_configs(16, 16, 8, target)) > 1
    seen = []
    tiles = KernelTiles(tmp_path, measure=True, on_search=lambda *a: seen.append(a))
    cfg = tiles.attention(1, 16, 16, 2, 8, merged=True, mask=True, target=target)
    assert [s[0] for s in seen] == ["attention 1x16x16x2x8_qkv_masked"] and seen[0][3] > 1
    path = database_dir(tmp_path, target) / "attention_tiles.json"
    assert "1x16x16x2x8_qkv_masked" in json.loads(path.read_text())
    again = best_attention_config(1, 16, 16, 2, 8, merged=True, mask=True, target=target,
                                  cache=tmp_path, measure=False)
    assert again == cfg and len(seen) == 1


def test_int8_tile_search_caches_and_reports(tmp_path) -> None:
    from lamina.backends.tvm.kernels import host_supports, int8_isa, target_for

    fam = "vnni" if host_supports("vnni") else "avx2"
    if not host_supports(fam):
        pytest.skip("host CPU runs no INT8 kernel family")
    target = target_for(fam, 2)
    seen = []
    tiles = KernelTiles(tmp_path, measure=True, on_search=lambda *a: seen.append(a))
    cfg = tiles.int8(16, 32, 64, target)
    key = f"16x32x64_{int8_isa(target)}"
    assert [s[0] for s in seen] == [f"int8 dense {key}"] and seen[0][3] > 1
    path = database_dir(tmp_path, target) / "int8_tiles.json"
    assert key in json.loads(path.read_text())
    assert KernelTiles(tmp_path).int8(16, 32, 64, target) == cfg and len(seen) == 1


def test_bf16_attention_tile_search_caches_and_reports(tmp_path) -> None:
    from lamina.backends.tvm.kernels import host_supports, target_for

    if not host_supports("avx512bf16"):
        pytest.skip("host CPU has no AVX512-BF16")
    target = target_for("avx512bf16", 2)
    seen = []
    tiles = KernelTiles(tmp_path, measure=True, on_search=lambda *a: seen.append(a))
    cfg = tiles.attention_bf16(1, 32, 32, 2, 32, merged=True, mask=True, target=target)
    assert [s[0] for s in seen] == ["bf16 attention 1x32x32x2x32_qkv_masked"] and seen[0][3] > 1
    path = database_dir(tmp_path, target) / "attention_bf16_tiles.json"
    assert "1x32x32x2x32_qkv_masked" in json.loads(path.read_text())
    again = KernelTiles(tmp_path).attention_bf16(1, 32, 32, 2, 32, merged=True, mask=True,
                                                 target=target)
    assert again == cfg and len(seen) == 1


def test_sparse_tile_searches_cache_per_shape_and_density(tmp_path) -> None:
    """Both block-sparse kernels' tiles are searched on the layer's weight once, cached under
    shape and density, and reused without measuring."""
    from lamina.backends.tvm.kernels import host_supports, target_for
    from lamina.backends.tvm.kernels.sparse_dense import encode_blocks
    from lamina.backends.tvm.kernels.sparse_int8 import candidate_chunks, encode_int8_blocks

    rng = np.random.default_rng(0)
    keep = np.repeat(rng.random((64, 32)) < 0.1, 4, axis=1)
    w = (rng.standard_normal((64, 128)) * keep).astype(np.float32)
    target = host_target(2)
    seen = []
    tiles = KernelTiles(tmp_path, measure=True, on_search=lambda *a: seen.append(a))
    sw = encode_blocks(w, 4)
    cfg = tiles.sparse(64, sw, target)
    key = f"64x64x128_r4_d{int(round(100 * sw.density / 5)) * 5}"
    assert [s[0] for s in seen] == [f"sparse {key}"] and seen[0][3] > 1
    path = database_dir(tmp_path, target) / "sparse_tiles.json"
    assert key in json.loads(path.read_text())
    assert KernelTiles(tmp_path).sparse(64, sw, target) == cfg and len(seen) == 1
    if not host_supports("vnni"):
        return
    vnni = target_for("vnni", 2)
    sw8 = encode_int8_blocks(np.clip(np.rint(w * 40), -127, 127).astype(np.int8))
    chunks = tiles.sparse_int8(128, sw8, vnni)
    assert chunks in candidate_chunks(128, 128, vnni) and seen[-1][0].startswith("sparse int8 ")
    assert KernelTiles(tmp_path).sparse_int8(128, sw8, vnni) == chunks and len(seen) == 2


@pytest.mark.slow
def test_interrupt_keeps_records_and_resumes(tmp_path) -> None:
    target = host_target(2)
    mod = _tiny_module()

    def ctrl_c(p) -> None:  # Ctrl-C arriving inside MetaSchedule's measure callback
        if p.event == "batch":
            raise KeyboardInterrupt

    tune(mod, target, trials=4, db_dir=tmp_path, on_progress=ctrl_c, trials_per_iter=2)
    n1 = _records(tmp_path, target)
    assert n1 >= 1
    ledger = json.loads((database_dir(tmp_path, target) / LEDGER).read_text())
    assert sum(ledger.values()) == 2  # only what was measured is charged

    events: list = []
    tune(mod, target, trials=4, db_dir=tmp_path, on_progress=events.append, trials_per_iter=2)
    assert any(e.event == "batch" for e in events)  # tops up the remaining 2 trials
    assert _records(tmp_path, target) > n1


def test_plan_skips_symbolic_tasks(tmp_path) -> None:
    @tvm.script.ir_module
    class Sym:
        @R.function
        def main(x: R.Tensor(("n", 32), "float32"), w: R.Tensor((32, 16), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                R.output(y)
            return y

    assert plan_tasks(relax.get_pipeline("zero")(Sym), host_target(2), 8, tmp_path) == []


def test_shipped_records_seed_a_target_with_other_extra_features(tmp_path) -> None:
    """An artifact's target keeps only the features its kernels use (no +avx512vnni for fp32), so
    its key differs from the shipped records' by the digest only; seeding still finds them (the
    MetaSchedule schedules of the remaining ops do not depend on those features)."""
    from lamina.backends.tvm.build import SHIPPED_RECORDS, seed_database
    from lamina.backends.tvm.tuning.meta import target_key

    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "num-cores": 2})
    key = target_key(target)
    assert not (SHIPPED_RECORDS / key).is_dir()  # the shipped records were tuned with +avx512vnni
    assert seed_database(tmp_path, target)
    assert (tmp_path / key / "database_tuning_record.json").stat().st_size > 0

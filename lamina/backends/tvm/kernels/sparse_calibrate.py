"""Measure the sparse-vs-dense cost table of a target (once; cached beside the tuning records).

Both kernels are timed the way a model runs them (cold weights,
the target's threads) and the block-sparse kernel likewise, each cycling through copies of its
weights, at two densities per block width on two shapes. ``lamina.passes.sparsity._cost.fit`` turns
the timings into the per-token model ``encode-sparsity`` uses. About 10-20 s on a 2-core machine.

:func:`calibrate_int8` does the same for the INT8 kernels of a VNNI target (the dense INT8 kernel
against the block-sparse one, ``_cost.fit_int8``), the table the lowering's ``sparse_choice``
decides from. About 3 s.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import tvm

from .common import standalone_module
from .dense import dense_kernel, pack_weight, resolve_config
from .isa import num_threads
from .sparse_dense import encode_blocks, sparse_dense_kernel

log = logging.getLogger(__name__)

TOKENS = 128
SHAPES = ((768, 768), (768, 3072))
DENSITIES = (0.02, 0.1, 0.35)
BLOCKS = (1, 4)
COLD_BYTES = 64 << 20


def _block_timer(fn, arg_sets: list[tuple]):
    """Seconds per call of one block of calls cycling through ``arg_sets`` (weights cold, as in a
    model)."""
    def block() -> float:
        t0 = time.perf_counter()
        for args in arg_sets:
            fn(*args)
        return (time.perf_counter() - t0) / len(arg_sets)

    return block


def _copies(nbytes: int) -> int:
    return int(min(32, max(2, COLD_BYTES // max(1, nbytes))))


def _dense_timer(M: int, w: np.ndarray, target: tvm.target.Target):
    K, N = w.shape
    cfg = resolve_config(M, K, N, target)
    ex = tvm.compile(standalone_module(dense_kernel(M, K, N, target=target, config=cfg)), target)
    dev = tvm.cpu()
    packed = pack_weight(w, cfg.nb)
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((M, K), dtype=np.float32), dev)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    sets = [(x, tvm.runtime.tensor(packed, dev), y) for _ in range(_copies(packed.nbytes))]
    return _block_timer(ex.mod["main"], sets)


def _sparse_timer(M: int, w: np.ndarray, R: int, target: tvm.target.Target):
    sw = encode_blocks(w, R)
    ex = tvm.compile(standalone_module(sparse_dense_kernel(M, sw, target=target)), target)
    dev = tvm.cpu()
    x = tvm.runtime.tensor(
        np.random.default_rng(1).standard_normal((M, sw.K), dtype=np.float32), dev
    )
    b = tvm.runtime.tensor(np.zeros(sw.N, np.float32), dev)
    y = tvm.runtime.tensor(np.zeros((M, sw.N), np.float32), dev)
    sets = [
        (x, *(tvm.runtime.tensor(a.copy(), dev) for a in (sw.indptr, sw.kidx, sw.data)), b, y)
        for _ in range(_copies(sw.data.nbytes + sw.kidx.nbytes))
    ]
    return sw.nnzb, _block_timer(ex.mod["main"], sets)


def calibrate(target: tvm.target.Target, rounds: int = 12) -> dict:
    """Measure and fit the table for ``target`` (see the module doc).

    All kernels of a shape are timed in rounds, one block each per round, and each keeps its best
    block: on a shared machine the minimum is the figure least moved by other jobs, and the
    interleaving exposes every kernel to the same phases."""
    from lamina.passes.sparsity._cost import fit

    from ..runtime import use_threads
    from ..tuning.meta import target_key

    use_threads(num_threads(target))
    rng = np.random.default_rng(0)
    dense, sparse = [], {r: [] for r in BLOCKS}
    for K, N in SHAPES:
        timers = [
            (
                "dense",
                0,
                0,
                _dense_timer(TOKENS, rng.standard_normal((K, N), dtype=np.float32), target),
            )
        ]
        for R in BLOCKS:
            for d in DENSITIES:
                keep = rng.random((K, N // R)) < d
                w = rng.standard_normal((K, N), dtype=np.float32) * np.repeat(keep, R, axis=1)
                timers.append(("sparse", R, *_sparse_timer(TOKENS, w, R, target)))
        best = [float("inf")] * len(timers)
        for _ in range(rounds):
            for i, (*_, timer) in enumerate(timers):
                best[i] = min(best[i], timer())
        for (kind, R, nnzb, _), t in zip(timers, best, strict=True):
            if kind == "dense":
                dense.append((K, N, 1e9 * t / TOKENS))
            else:
                sparse[R].append((K, N, nnzb, 1e9 * t / TOKENS))
    table = fit(dense, sparse, target_key(target), TOKENS)
    table["measured"] = {
        "dense": dense,
        "sparse": {str(r): v for r, v in sparse.items()},
        "threads": num_threads(target),
    }
    return table


# INT8 (VNNI): the shapes of MiniLM's and BERT-base's layers, block densities around the break-even.
INT8_SHAPES = ((384, 1536), (1536, 384), (768, 3072))
INT8_DENSITIES = (0.05, 0.15, 0.4)


def _dense_int8_timer(M: int, wq: np.ndarray, target: tvm.target.Target):
    from .dense_int8 import (
        column_sums,
        dense_int8_kernel,
        kernel_family,
        pack_weight_int8,
        packing,
        padded_k,
        resolve_int8_config,
    )

    K, N = wq.shape
    if kernel_family(M, N, target) == "amx":
        from ..amx import request_amx

        request_amx()
    cfg = resolve_int8_config(M, K, N, target)
    nb, k_step = packing(M, K, N, target, cfg)
    ex = tvm.compile(standalone_module(dense_int8_kernel(M, K, N, target=target, config=cfg)),
                     target)
    dev = tvm.cpu()
    packed = pack_weight_int8(wq, nb, k_step)
    rng = np.random.default_rng(1)
    x = tvm.runtime.tensor(rng.integers(0, 256, (M, padded_k(K)), dtype=np.uint8), dev)
    fixed = [tvm.runtime.tensor(a, dev) for a in (
        column_sums(wq), np.full(N, 0.01, np.float32), np.array([0.02, 7], np.float32))]
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    sets = [(x, tvm.runtime.tensor(packed, dev), *fixed, y) for _ in range(_copies(packed.nbytes))]
    return _block_timer(ex.mod["main"], sets)


def _sparse_int8_timer(M: int, wq: np.ndarray, target: tvm.target.Target):
    from .sparse_int8 import encode_int8_blocks, sparse_int8_kernel

    sw = encode_int8_blocks(wq)
    ex = tvm.compile(standalone_module(sparse_int8_kernel(M, sw, target=target)), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(1)
    xt = tvm.runtime.tensor(rng.integers(0, 256, (sw.K, M), dtype=np.uint8), dev)
    fixed = [tvm.runtime.tensor(a, dev) for a in (
        sw.colsum, np.full(sw.N, 0.01, np.float32), np.array([0.02, 7], np.float32),
        np.zeros(sw.N, np.float32))]
    y = tvm.runtime.tensor(np.zeros((M, sw.N), np.float32), dev)
    nbytes = sw.qw.nbytes + sw.qk.nbytes
    sets = [(xt, *(tvm.runtime.tensor(a.copy(), dev) for a in (sw.qptr, sw.qk, sw.qw)), *fixed, y)
            for _ in range(_copies(nbytes))]
    return 4 * sw.quads, _block_timer(ex.mod["main"], sets)


def calibrate_int8(target: tvm.target.Target, rounds: int = 12,
                   shapes: tuple[tuple[int, int], ...] = INT8_SHAPES) -> dict:
    """Measure and fit the block-sparse INT8 table (``_cost.Int8CostTable``) for a VNNI ``target``:
    the dense INT8 kernel and the block-sparse one at :data:`INT8_DENSITIES` of 4x1 blocks, timed
    in interleaved rounds as :func:`calibrate` does."""
    from lamina.passes.sparsity._cost import fit_int8

    from ..runtime import use_threads
    from ..tuning.meta import target_key

    use_threads(num_threads(target))
    rng = np.random.default_rng(0)
    dense, sparse = [], []
    for K, N in shapes:
        w = rng.integers(-127, 128, (K, N), dtype=np.int8)
        timers = [("dense", 0, _dense_int8_timer(TOKENS, w, target))]
        for d in INT8_DENSITIES:
            keep = np.repeat(rng.random((K, N // 4)) < d, 4, axis=1)
            timers.append(("sparse", *_sparse_int8_timer(TOKENS, (w * keep).astype(np.int8),
                                                         target)))
        best = [float("inf")] * len(timers)
        for _ in range(rounds):
            for i, (*_, timer) in enumerate(timers):
                best[i] = min(best[i], timer())
        for (kind, blocks, _), t in zip(timers, best, strict=True):
            if kind == "dense":
                dense.append((K, N, 1e9 * t / TOKENS))
            else:
                sparse.append((K, N, blocks, 1e9 * t / TOKENS))
    table = fit_int8(dense, sparse, target_key(target), TOKENS)
    table["measured"] = {"dense": dense, "sparse": sparse, "threads": num_threads(target)}
    return table


def int8_cost_table(target: tvm.target.Target, db_dir: str | Path) -> Path:
    """The path of ``target``'s block-sparse INT8 table in the tuning database, measured first if it
    is not there."""
    from lamina.passes.sparsity._cost import INT8_COSTS_FILE

    from ..tuning.meta import database_dir

    path = database_dir(db_dir, target) / INT8_COSTS_FILE
    if not path.exists():
        log.warning("measuring the sparse INT8 kernel cost table for this target (once, ~5 s): "
                    "%s", path)
        _write_json(path, calibrate_int8(target))
    return path


def _write_json(path: Path, table: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(path)


def cost_table(target: tvm.target.Target, db_dir: str | Path) -> Path:
    """The path of ``target``'s table in the tuning database, measured first if it is not there."""
    from lamina.passes.sparsity._cost import COSTS_FILE

    from ..tuning.meta import database_dir

    path = database_dir(db_dir, target) / COSTS_FILE
    if not path.exists():
        log.warning(
            "measuring the sparse kernel cost table for this target (once, ~20 s): %s", path
        )
        _write_json(path, calibrate(target))
    return path


def cost_table_for(target: str | dict, threads: int | None, db_dir: str | Path | None) -> Path:
    """:func:`cost_table` for a ``lamina compile`` target spec (``auto``, a preset, JSON)."""
    from ..build import default_tuning_db
    from ..target import resolve_target

    spec = resolve_target(target, threads)
    return cost_table(spec.tvm_target,
                      Path(db_dir) if db_dir is not None else default_tuning_db())

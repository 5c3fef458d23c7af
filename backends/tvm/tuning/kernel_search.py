"""Grid search of the dense kernel's tile (``DenseConfig``) per shape, cached in a JSON file.

The panel width ``nb`` fixes the packed weight layout, so it cannot be a MetaSchedule decision
inside one PrimFunc; the space is small (about 20 tiles per shape, each built in well under a
second), so we measure it directly::

    cfg = best_dense_config(M, K, N, target, cache=db_dir)   # measures once, then reads the cache
    func = dense_kernel(M, K, N, bias=True, target=target, config=cfg)
    wp = pack_weight(w, cfg.nb)

Records live in ``<cache>/<target key>/dense_tiles.json`` keyed by ``MxKxN`` (the epilogue does not
change the best tile: it runs once per output element). Without ``measure`` (or when the host
cannot run the target's ISA) the cached record or the per-ISA default is returned.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import tvm

from ..kernels.dense import (
    DenseConfig,
    candidate_configs,
    dense_kernel,
    pack_weight,
    resolve_config,
    standalone_module,
)
from ..kernels.isa import host_supports, isa_of
from .meta import database_dir

log = logging.getLogger(__name__)

TILES_FILE = "dense_tiles.json"


def _cache_file(cache: str | os.PathLike[str], target: tvm.target.Target) -> Path:
    return database_dir(cache, target) / TILES_FILE


def _load(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _prepare(M: int, K: int, N: int, cfg: DenseConfig, target: tvm.target.Target,
             min_repeat_ms: int, repeat: int):
    func = dense_kernel(M, K, N, target=target, config=cfg)
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    args = [tvm.runtime.tensor(a, dev)
            for a in (x, pack_weight(w, cfg.nb), np.zeros((M, N), np.float32))]
    f = ex.mod.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return lambda: float(np.median(f(*args).results))


def time_dense(M: int, K: int, N: int, cfg: DenseConfig, target: tvm.target.Target,
               min_repeat_ms: int = 30, repeat: int = 5) -> float:
    """Median seconds of one call of the kernel with tile ``cfg`` (built and run in-process)."""
    return _prepare(M, K, N, cfg, target, min_repeat_ms, repeat)()


def search_dense(M: int, K: int, N: int, target: tvm.target.Target,
                 budget_s: float | None = None, finalists: int = 4, rounds: int = 3,
                 min_gain: float = 0.03) -> list[tuple[float, DenseConfig]]:
    """Time every candidate tile (default first); returns ``[(seconds, cfg)]`` fastest first.

    The machines are shared and noisy, so the default and the fastest ``finalists`` are timed
    again in ``rounds`` interleaved rounds (medians), and a tile replaces the default only when
    it is ``min_gain`` faster.
    """
    timers: dict[DenseConfig, object] = {}
    first: list[tuple[float, DenseConfig]] = []
    t0 = time.monotonic()
    for cfg in candidate_configs(M, K, N, target):
        if budget_s is not None and first and time.monotonic() - t0 > budget_s:
            break
        try:
            timers[cfg] = _prepare(M, K, N, cfg, target, 20, 3)
            first.append((timers[cfg](), cfg))  # type: ignore[operator]
        except Exception as err:  # a tile that fails to build is skipped, never fatal
            log.warning("dense %dx%dx%d tile %s failed: %s", M, K, N, cfg.key(), err)
    if not first:
        return []
    default = first[0][1]
    first.sort(key=lambda r: r[0])
    picked = [c for _, c in first[:finalists]]
    if default not in picked:
        picked.append(default)
    samples: dict[DenseConfig, list[float]] = {c: [] for c in picked}
    for _ in range(rounds):
        for c in picked:
            samples[c].append(timers[c]())  # type: ignore[operator]
    med = {c: float(np.median(v)) for c, v in samples.items()}
    final = sorted(med.items(), key=lambda r: r[1])
    if final[0][0] != default and final[0][1] > med[default] * (1.0 - min_gain):
        final.remove((default, med[default]))
        final.insert(0, (default, med[default]))
    rest = [(t, c) for t, c in first if c not in med]
    return [(t, c) for c, t in final] + rest


def best_dense_config(M: int, K: int, N: int, target: tvm.target.Target, *,
                      cache: str | os.PathLike[str] | None = None, measure: bool = True,
                      budget_s: float | None = None) -> DenseConfig:
    """The fastest known tile for this shape and target (measured once, then cached)."""
    key = f"{M}x{K}x{N}"
    path = _cache_file(cache, target) if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_config(M, K, N, target, DenseConfig.from_dict(rec["config"]))
    if not measure or not host_supports(isa_of(target)):
        return resolve_config(M, K, N, target)
    results = search_dense(M, K, N, target, budget_s)
    if not results:
        return resolve_config(M, K, N, target)
    best_s, best = results[0]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        data[key] = {"config": best.to_dict(), "us": best_s * 1e6,
                     "gflops": 2.0 * M * K * N / best_s / 1e9, "candidates": len(results)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return best

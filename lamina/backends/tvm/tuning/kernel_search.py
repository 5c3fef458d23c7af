"""Grid search of the hand-written kernels' tiles per shape, cached in JSON files.

Dense (``DenseConfig``): the panel width ``nb`` fixes the packed weight layout, so it cannot be a
MetaSchedule decision inside one PrimFunc; the space is small (about 20 tiles per shape, each built
in well under a second), so we measure it directly::

    cfg = best_dense_config(M, K, N, target, cache=db_dir)   # measures once, then reads the cache
    func = dense_kernel(M, K, N, bias=True, target=target, config=cfg)
    wp = pack_weight(w, cfg.nb)

INT8 dense (``Int8Config``): the register tile of ``kernels/dense_int8.py`` (its panel width also
fixes the packed layout), about 10 candidates per shape, ``int8_tiles.json`` keyed like the dense
records plus the instruction family (``best_int8_config``).

BF16 dense (``Bf16Config``): the register tile of ``kernels/dense_bf16.py`` (``mr`` rows x ``nv``
zmm; ``16 nv`` is the panel width of the packed bf16 weight), about 8 candidates per shape,
``bf16_tiles.json`` keyed ``MxKxN_<family>`` (``best_bf16_config``; AMX has one fixed tile).
Each kernel family has its own file and key, so a tile searched for one never serves another
(:func:`tiles_file`).

Attention (``AttentionConfig``): query tile and register tiles of the fused kernel, about 10
candidates per shape (``best_attention_config``); the BF16 attention kernel's
(``AttentionBf16Config``) likewise, in ``attention_bf16_tiles.json``
(``best_attention_bf16_config``).

Block-sparse (``SparseConfig`` of ``kernels/sparse_dense.py``: token tile and task split) and
block-sparse INT8 (the task split of ``kernels/sparse_int8.py``): timed on the layer's own weight
(its pattern decides the work of each task), keyed by shape, block width and block density in 5%
steps (``sparse_tiles.json``, ``sparse_int8_tiles.json``; ``best_sparse_config``,
``best_sparse_int8_chunks``), so a model pruned evenly searches once per layer shape.

Records live in ``<cache>/<target key>/dense_tiles.json`` keyed by ``MxKxN`` (the epilogue does not
change the best tile: it runs once per output element) and ``attention_tiles.json`` keyed by
``b x sq x skv x heads x d`` plus the input form. Without ``measure`` (or when the host cannot run
the target's ISA) the cached record or the per-ISA default is returned. ``KernelTiles`` bundles both
lookups for the lowering.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from ..kernels.attention import (
    AttentionConfig,
    attention_kernel,
    candidate_attention_configs,
    resolve_attention_config,
)
from ..kernels.common import standalone_module
from ..kernels.dense import (
    DenseConfig,
    candidate_configs,
    dense_kernel,
    pack_weight,
    resolve_config,
)
from ..kernels.dense_bf16 import (
    Bf16Config,
    candidate_bf16_configs,
    dense_bf16_kernel,
    pack_weight_bf16,
    resolve_bf16_config,
)
from ..kernels.dense_int8 import (
    Int8Config,
    candidate_int8_configs,
    dense_int8_kernel,
    lanes32,
    pack_weight_int8,
    padded_k,
    resolve_int8_config,
)
from ..kernels.isa import bf16_isa, host_supports, int8_isa, isa_of, num_threads
from .meta import database_dir

log = logging.getLogger(__name__)

TILES_FILE = "dense_tiles.json"
ATTENTION_FILE = "attention_tiles.json"
INT8_FILE = "int8_tiles.json"
BF16_FILE = "bf16_tiles.json"
SPARSE_FILE = "sparse_tiles.json"
SPARSE_INT8_FILE = "sparse_int8_tiles.json"
ATTENTION_BF16_FILE = "attention_bf16_tiles.json"
# Kernel family -> the file of its searched tiles (one namespace per family and target key).
TILE_FILES: dict[str, str] = {"dense": TILES_FILE, "int8": INT8_FILE, "bf16": BF16_FILE,
                              "attention": ATTENTION_FILE, "sparse": SPARSE_FILE,
                              "sparse_int8": SPARSE_INT8_FILE,
                              "attention_bf16": ATTENTION_BF16_FILE}


def tiles_file(cache: str | os.PathLike[str], target: tvm.target.Target, kind: str) -> Path:
    """Where the searched tiles of kernel family ``kind`` (``dense``, ``int8``, ``bf16``,
    ``attention``) for ``target`` are cached."""
    return _cache_file(cache, target, TILE_FILES[kind])


def _cache_file(cache: str | os.PathLike[str], target: tvm.target.Target,
                name: str = TILES_FILE) -> Path:
    return database_dir(cache, target) / name


def _load(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _timer(ex: tvm.runtime.Module, args: list, target: tvm.target.Target, min_repeat_ms: int,
           repeat: int) -> Callable[[], float]:
    """Median seconds of a call, timed on the target's thread count (the artifact's), not on
    whatever TVM's pool started with in this process."""
    from ..runtime import use_threads

    threads = num_threads(target)
    f = ex.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                              min_repeat_ms=min_repeat_ms)

    def run() -> float:
        got = use_threads(threads)
        if got != threads:
            log.warning("kernel timing runs %d threads, not the target's %d", got, threads)
        return float(np.median(f(*args).results))

    return run


def _median_timer(block: Callable[[], float], target: tvm.target.Target, min_repeat_ms: int,
                  repeat: int) -> Callable[[], float]:
    """Median of ``block()`` (seconds a call over a block of calls, e.g. each on another cold
    weight copy) over at least ``repeat`` blocks and ``min_repeat_ms``, after one warm-up block,
    on the target's thread count."""
    from ..runtime import use_threads

    threads = num_threads(target)

    def run() -> float:
        got = use_threads(threads)
        if got != threads:
            log.warning("kernel timing runs %d threads, not the target's %d", got, threads)
        block()  # warm the code and the activations
        samples: list[float] = []
        t0 = time.perf_counter()
        while len(samples) < repeat or (time.perf_counter() - t0) * 1e3 < min_repeat_ms:
            samples.append(block())
        return float(np.median(samples))

    return run


COLD_BYTES = 96 << 20  # weight copies cycled through per timing: more than any L3 we target


@functools.lru_cache(maxsize=2)
def _cold_weights(K: int, N: int, nb: int) -> tuple[tvm.runtime.Tensor, ...]:
    """Copies of one packed weight, together larger than the last-level cache."""
    w = pack_weight(np.random.default_rng(0).standard_normal((K, N), dtype=np.float32), nb)
    copies = int(min(64, max(2, -(-COLD_BYTES // w.nbytes))))
    return tuple(tvm.runtime.tensor(w, tvm.cpu()) for _ in range(copies))


def _prepare(M: int, K: int, N: int, cfg: DenseConfig, target: tvm.target.Target,
             min_repeat_ms: int, repeat: int):
    """Timer of the dense kernel the way a model runs it: activations in cache, the weight cold
    (each call reads another copy), on the target's thread count."""

    func = dense_kernel(M, K, N, target=target, config=cfg)
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((M, K), dtype=np.float32), dev)
    y = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    weights = _cold_weights(K, N, cfg.nb)
    fn = ex.mod["main"]
    calls = max(len(weights), 8)

    def block() -> float:
        # A block of calls, each on another copy (time_evaluator would repeat one warm call).
        t0 = time.perf_counter()
        for i in range(calls):
            fn(x, weights[i % len(weights)], y)
        return (time.perf_counter() - t0) / calls

    return _median_timer(block, target, min_repeat_ms, repeat)


def _search(
    what: str,
    candidates: list,
    prepare: Callable[[object, int, int], Callable[[], float]],
    budget_s: float | None,
    finalists: int,
    rounds: int,
    min_gain: float,
) -> list[tuple[float, object]]:
    """Time every candidate (default first); returns ``[(seconds, cfg)]`` fastest first.

    The machines are shared and noisy, so the default and the fastest ``finalists`` are timed
    again in ``rounds`` interleaved rounds (medians), and a tile replaces the default only when
    it is ``min_gain`` faster.
    """
    timers: dict[object, Callable[[], float]] = {}
    first: list[tuple[float, object]] = []
    t0 = time.monotonic()
    for cfg in candidates:
        if budget_s is not None and first and time.monotonic() - t0 > budget_s:
            break
        try:
            timers[cfg] = prepare(cfg, 20, 3)
            first.append((timers[cfg](), cfg))
        except Exception as err:  # a tile that fails to build is skipped, never fatal
            log.warning("%s tile %s failed: %s", what, cfg.key(), err)  # type: ignore[attr-defined]
    if not first:
        return []
    default = first[0][1]
    first.sort(key=lambda r: r[0])
    picked = [c for _, c in first[:finalists]]
    if default not in picked:
        picked.append(default)
    samples: dict[object, list[float]] = {c: [] for c in picked}
    for _ in range(rounds):
        for c in picked:
            samples[c].append(timers[c]())
    med = {c: float(np.median(v)) for c, v in samples.items()}
    final = sorted(med.items(), key=lambda r: r[1])
    if final[0][0] != default and final[0][1] > med[default] * (1.0 - min_gain):
        final.remove((default, med[default]))
        final.insert(0, (default, med[default]))
    rest = [(t, c) for t, c in first if c not in med]
    return [(t, c) for c, t in final] + rest


def search_dense(M: int, K: int, N: int, target: tvm.target.Target,
                 budget_s: float | None = None, finalists: int = 4, rounds: int = 3,
                 min_gain: float = 0.03) -> list[tuple[float, DenseConfig]]:
    """Time every candidate dense tile; ``[(seconds, cfg)]`` fastest first (see ``_search``)."""
    return _search(f"dense {M}x{K}x{N}", candidate_configs(M, K, N, target),
                   lambda cfg, ms, rep: _prepare(M, K, N, cfg, target, ms, rep),  # type: ignore[arg-type]
                   budget_s, finalists, rounds, min_gain)  # type: ignore[return-value]


def _store(path: Path, key: str, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _load(path)
    data[key] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


SearchReport = Callable[[str, str, float, int, float], None]
"""``(what, best tile, best seconds, candidates timed, search seconds)`` after each search."""


def _keep_best(what: str, key: str, results: list[tuple[float, Any]], t0: float, path: Path | None,
               on_search: SearchReport | None, rate: tuple[str, float] | None = None) -> Any:
    """Report the winner of a search and cache it under ``key``; ``rate`` = (unit, operations)
    records e.g. GFLOP/s beside its time."""
    best_s, best = results[0]
    if on_search is not None:
        on_search(f"{what} {key}", best.key(), best_s, len(results), time.monotonic() - t0)
    if path is not None:
        record = {"config": best.to_dict(), "us": best_s * 1e6, "candidates": len(results)}
        if rate is not None:
            record[rate[0]] = rate[1] / best_s / 1e9
        _store(path, key, record)
    return best


def best_dense_config(M: int, K: int, N: int, target: tvm.target.Target, *,
                      cache: str | os.PathLike[str] | None = None, measure: bool = True,
                      budget_s: float | None = None,
                      on_search: SearchReport | None = None) -> DenseConfig:
    """The fastest known tile for this shape and target (measured once, then cached)."""
    key = f"{M}x{K}x{N}"
    path = _cache_file(cache, target) if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_config(M, K, N, target, DenseConfig.from_dict(rec["config"]))
    if not measure or not host_supports(isa_of(target)):
        return resolve_config(M, K, N, target)
    t0 = time.monotonic()
    results = search_dense(M, K, N, target, budget_s)
    if not results:
        return resolve_config(M, K, N, target)
    return _keep_best("dense", key, results, t0, path, on_search, ("gflops", 2.0 * M * K * N))


def _prepare_int8(M: int, K: int, N: int, cfg: Int8Config, target: tvm.target.Target,
                  min_repeat_ms: int, repeat: int) -> Callable[[], float]:
    """Timer of the INT8 dense kernel (bias epilogue) with cold weights, as :func:`_prepare`."""

    fam = int8_isa(target)
    func = dense_int8_kernel(M, K, N, target=target, config=cfg, bias=True)
    ex = tvm.compile(standalone_module(func), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    w = pack_weight_int8(rng.integers(-127, 128, (K, N), dtype=np.int8), cfg.nv * lanes32(fam))
    copies = int(min(64, max(2, -(-COLD_BYTES // w.nbytes))))
    weights = [tvm.runtime.tensor(w, dev) for _ in range(copies)]
    rest = [tvm.runtime.tensor(a, dev) for a in (
        np.zeros(N, np.int32), np.ones(N, np.float32), np.array([0.1, 128], np.float32),
        np.zeros(N, np.float32), np.zeros((M, N), np.float32))]
    x = tvm.runtime.tensor(rng.integers(0, 256, (M, padded_k(K)), dtype=np.uint8), dev)
    fn = ex.mod["main"]

    def block() -> float:
        t0 = time.perf_counter()
        for i in range(copies):
            fn(x, weights[i], *rest)
        return (time.perf_counter() - t0) / copies

    return _median_timer(block, target, min_repeat_ms, repeat)


def best_int8_config(M: int, K: int, N: int, target: tvm.target.Target, *,
                     cache: str | os.PathLike[str] | None = None, measure: bool = True,
                     budget_s: float | None = None,
                     on_search: SearchReport | None = None) -> Int8Config:
    """The fastest known INT8 dense tile for this shape and target (measured once, then cached)."""
    fam = int8_isa(target)
    key = f"{M}x{K}x{N}_{fam}"
    path = _cache_file(cache, target, INT8_FILE) if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_int8_config(M, K, N, target, Int8Config.from_dict(rec["config"]))
    if not measure or fam is None or not host_supports(fam) or fam == "amx":
        # AMX: one fixed 32 x 32 tile per task (kernels/dense_int8.py), nothing to search.
        return resolve_int8_config(M, K, N, target)
    t0 = time.monotonic()
    results = _search(f"int8 dense {key}", candidate_int8_configs(M, K, N, target),
                      lambda cfg, ms, rep: _prepare_int8(M, K, N, cfg, target, ms, rep),  # type: ignore[arg-type]
                      budget_s, 4, 3, 0.03)
    if not results:
        return resolve_int8_config(M, K, N, target)
    return _keep_best("int8 dense", key, results, t0, path, on_search, ("gops", 2.0 * M * K * N))


def _prepare_bf16(M: int, K: int, N: int, cfg: Bf16Config, target: tvm.target.Target,
                  min_repeat_ms: int, repeat: int) -> Callable[[], float]:
    """Timer of a BF16 layer the way a model runs it: the activation's conversion
    (``to_bf16_kernel``) then the dense kernel (bias epilogue), cold weights, as :func:`_prepare`.
    The conversion is part of each call because the tile's row blocks decide whether a core reads
    the bf16 rows it converted itself or another core's (``dense_bf16._row_block``)."""
    from ..kernels.dense_bf16 import padded_k, to_bf16_kernel

    func = dense_bf16_kernel(M, K, N, target=target, config=cfg, bias=True)
    ex = tvm.compile(standalone_module(func), target)
    cvt = tvm.compile(standalone_module(to_bf16_kernel(M, K, padded_k(K))), target).mod["main"]
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    w = pack_weight_bf16(rng.standard_normal((K, N), dtype=np.float32), cfg.nv * 16)
    copies = int(min(64, max(2, -(-COLD_BYTES // w.nbytes))))
    weights = [tvm.runtime.tensor(w, dev) for _ in range(copies)]
    x = tvm.runtime.tensor(rng.standard_normal((M, K), dtype=np.float32), dev)
    xb = tvm.runtime.tensor(np.zeros((M, padded_k(K)), np.uint16), dev)
    rest = [tvm.runtime.tensor(a, dev) for a in (np.zeros(N, np.float32),
                                                 np.zeros((M, N), np.float32))]
    fn = ex.mod["main"]

    def block() -> float:
        t0 = time.perf_counter()
        for i in range(copies):
            cvt(x, xb)
            fn(xb, weights[i], *rest)
        return (time.perf_counter() - t0) / copies

    return _median_timer(block, target, min_repeat_ms, repeat)


def best_bf16_config(M: int, K: int, N: int, target: tvm.target.Target, *,
                     cache: str | os.PathLike[str] | None = None, measure: bool = True,
                     budget_s: float | None = None,
                     on_search: SearchReport | None = None) -> Bf16Config:
    """The fastest known BF16 dense tile for this shape and target (measured once, then cached
    in ``bf16_tiles.json``)."""
    fam = bf16_isa(target)
    key = f"{M}x{K}x{N}_{fam}"
    path = tiles_file(cache, target, "bf16") if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_bf16_config(M, K, N, target, Bf16Config.from_dict(rec["config"]))
    if not measure or fam != "avx512bf16" or not host_supports(fam):
        # AMX: one fixed 32 x 32 tile per task (kernels/dense_amx.py), nothing to search.
        return resolve_bf16_config(M, K, N, target)
    t0 = time.monotonic()
    results = _search(f"bf16 dense {key}", candidate_bf16_configs(M, K, N, target),
                      lambda cfg, ms, rep: _prepare_bf16(M, K, N, cfg, target, ms, rep),  # type: ignore[arg-type]
                      budget_s, 4, 3, 0.03)
    if not results:
        return resolve_bf16_config(M, K, N, target)
    return _keep_best("bf16 dense", key, results, t0, path, on_search,
                      ("gflops", 2.0 * M * K * N))


def _prepare_attention(shape: tuple[int, int, int, int, int], merged: bool, mask: bool,
                       cfg: AttentionConfig, target: tvm.target.Target, min_repeat_ms: int,
                       repeat: int) -> Callable[[], float]:
    batch, sq, skv, heads, d = shape
    func = attention_kernel(batch, sq, skv, heads, d, scale=d ** -0.5, merged=merged, mask=mask,
                            target=target, config=cfg)
    ex = tvm.compile(standalone_module(func), target)
    return _timer(ex, _attention_args(shape, merged, mask), target, min_repeat_ms, repeat)


def _attention_args(shape: tuple[int, int, int, int, int], merged: bool,
                    mask: bool) -> list[tvm.runtime.Tensor]:
    """Random sources, a zero key bias and the output of an attention kernel's call."""
    batch, sq, skv, heads, d = shape
    rng = np.random.default_rng(0)
    hid = heads * d
    srcs = ([(batch * sq, 3 * hid)] if merged else
            [(batch * sq, hid), (batch * skv, hid), (batch * skv, hid)])
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in srcs]
    if mask:
        arrays.append(np.zeros((batch, skv), np.float32))
    arrays.append(np.zeros((batch, sq, heads, d), np.float32))
    return [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]


def best_attention_config(batch: int, sq: int, skv: int, heads: int, d: int, *, merged: bool,
                          mask: bool, target: tvm.target.Target,
                          cache: str | os.PathLike[str] | None = None, measure: bool = True,
                          budget_s: float | None = None,
                          on_search: SearchReport | None = None) -> AttentionConfig:
    """The fastest known attention tiles for this shape and target (measured once, then cached)."""
    key = f"{batch}x{sq}x{skv}x{heads}x{d}{'_qkv' if merged else ''}{'_masked' if mask else ''}"
    path = _cache_file(cache, target, ATTENTION_FILE) if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_attention_config(sq, skv, d, target,
                                            AttentionConfig.from_dict(rec["config"]))
    if not measure or not host_supports(isa_of(target)):
        return resolve_attention_config(sq, skv, d, target)
    shape = (batch, sq, skv, heads, d)
    t0 = time.monotonic()
    results = _search(f"attention {key}", candidate_attention_configs(sq, skv, d, target),
                      lambda cfg, ms, rep: _prepare_attention(shape, merged, mask, cfg, target,  # type: ignore[arg-type]
                                                              ms, rep),
                      budget_s, 4, 3, 0.03)
    if not results:
        return resolve_attention_config(sq, skv, d, target)
    return _keep_best("attention", key, results, t0, path, on_search)


def best_attention_bf16_config(batch: int, sq: int, skv: int, heads: int, d: int, *,
                               merged: bool, mask: bool, target: tvm.target.Target,
                               cache: str | os.PathLike[str] | None = None,
                               measure: bool = True, budget_s: float | None = None,
                               on_search: SearchReport | None = None) -> Any:
    """The fastest known tiles of the BF16 attention kernel for this shape (measured once, then
    cached in ``attention_bf16_tiles.json``)."""
    from ..kernels.attention_bf16 import (
        AttentionBf16Config,
        attention_bf16_kernel,
        candidate_attention_bf16_configs,
        resolve_attention_bf16_config,
    )

    key = f"{batch}x{sq}x{skv}x{heads}x{d}{'_qkv' if merged else ''}{'_masked' if mask else ''}"
    path = tiles_file(cache, target, "attention_bf16") if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_attention_bf16_config(sq, skv, d,
                                                 AttentionBf16Config.from_dict(rec["config"]))
    if not measure or not host_supports("avx512bf16"):
        return resolve_attention_bf16_config(sq, skv, d)
    args = _attention_args((batch, sq, skv, heads, d), merged, mask)

    def prepare(cfg: Any, ms: int, rep: int) -> Callable[[], float]:
        func = attention_bf16_kernel(batch, sq, skv, heads, d, scale=d ** -0.5, merged=merged,
                                     mask=mask, threads=num_threads(target), config=cfg)
        return _timer(tvm.compile(standalone_module(func), target), args, target, ms, rep)

    t0 = time.monotonic()
    results = _search(f"bf16 attention {key}", candidate_attention_bf16_configs(sq, skv, d),
                      prepare, budget_s, 4, 3, 0.03)
    if not results:
        return resolve_attention_bf16_config(sq, skv, d)
    return _keep_best("bf16 attention", key, results, t0, path, on_search)


def _density_key(density: float) -> str:
    return f"d{int(round(100 * density / 5)) * 5}"


def _index_copies(arrays: list[np.ndarray]) -> list[list[tvm.runtime.Tensor]]:
    """Copies of a sparse weight's arrays, together larger than the last-level cache (each call
    reads another copy, as a model reads each layer's weight cold)."""
    nbytes = sum(a.nbytes for a in arrays)
    copies = int(min(32, max(2, -(-COLD_BYTES // max(1, nbytes)))))
    dev = tvm.cpu()
    return [[tvm.runtime.tensor(a.copy(), dev) for a in arrays] for _ in range(copies)]


def _cycling_timer(fn, sets: list[list], front: list, back: list, target: tvm.target.Target,
                   min_repeat_ms: int, repeat: int) -> Callable[[], float]:
    """:func:`_median_timer` of ``fn(*front, *set, *back)`` cycling through ``sets``."""

    def block() -> float:
        t0 = time.perf_counter()
        for arrs in sets:
            fn(*front, *arrs, *back)
        return (time.perf_counter() - t0) / len(sets)

    return _median_timer(block, target, min_repeat_ms, repeat)


def best_sparse_config(M: int, sw: Any, target: tvm.target.Target, *,
                       cache: str | os.PathLike[str] | None = None, measure: bool = True,
                       budget_s: float | None = None,
                       on_search: SearchReport | None = None) -> Any:
    """The fastest known tiles of the block-sparse kernel for ``M`` tokens and a weight like
    ``sw`` (``SparseWeight``: same shape, block width and density), timed on ``sw`` itself."""
    from ..kernels.sparse_dense import (
        SparseConfig,
        candidate_sparse_configs,
        resolve_sparse_config,
        sparse_dense_kernel,
    )

    G = sw.N // sw.R
    key = f"{M}x{sw.K}x{sw.N}_r{sw.R}_{_density_key(sw.density)}"
    path = tiles_file(cache, target, "sparse") if cache is not None else None
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None:
            return resolve_sparse_config(M, G, sw.R, target, SparseConfig.from_dict(rec["config"]))
    if not measure or not host_supports(isa_of(target)):
        return resolve_sparse_config(M, G, sw.R, target)
    dev = tvm.cpu()
    rng = np.random.default_rng(1)
    x = tvm.runtime.tensor(rng.standard_normal((M, sw.K), dtype=np.float32), dev)
    tail = [tvm.runtime.tensor(np.zeros(sw.N, np.float32), dev),
            tvm.runtime.tensor(np.zeros((M, sw.N), np.float32), dev)]
    sets = _index_copies([sw.indptr, sw.kidx, sw.data])

    def prepare(cfg: SparseConfig, ms: int, rep: int) -> Callable[[], float]:
        ex = tvm.compile(standalone_module(sparse_dense_kernel(M, sw, target=target,
                                                               config=cfg)), target)
        return _cycling_timer(ex.mod["main"], sets, [x], tail, target, ms, rep)

    t0 = time.monotonic()
    results = _search(f"sparse {key}", candidate_sparse_configs(M, G, sw.R, target), prepare,
                      budget_s, 3, 3, 0.03)
    if not results:
        return resolve_sparse_config(M, G, sw.R, target)
    return _keep_best("sparse", key, results, t0, path, on_search)


@dataclass(frozen=True)
class _Chunks:
    """A task split as a searchable tile (``key`` / ``to_dict`` for the records)."""

    chunks: int

    def key(self) -> str:
        return f"c{self.chunks}"

    def to_dict(self) -> dict[str, int]:
        return {"chunks": self.chunks}


def best_sparse_int8_chunks(M: int, sw: Any, target: tvm.target.Target, *,
                            cache: str | os.PathLike[str] | None = None, measure: bool = True,
                            budget_s: float | None = None,
                            on_search: SearchReport | None = None) -> int:
    """The fastest known task split of the block-sparse INT8 kernel for ``M`` tokens and a weight
    like ``sw`` (``SparseInt8Weight``), timed on ``sw`` itself."""
    from ..kernels.sparse_int8 import candidate_chunks, default_chunks, sparse_int8_kernel

    key = f"{M}x{sw.K}x{sw.N}_{_density_key(sw.density)}"
    path = tiles_file(cache, target, "sparse_int8") if cache is not None else None
    valid = candidate_chunks(M, sw.N, target)
    if path is not None:
        rec = _load(path).get(key)
        if rec is not None and int(rec["config"]["chunks"]) in valid:
            return int(rec["config"]["chunks"])
    if not measure or not host_supports("vnni"):
        return default_chunks(M, sw.N, target)
    dev = tvm.cpu()
    rng = np.random.default_rng(1)
    xt = tvm.runtime.tensor(rng.integers(0, 256, (sw.K, M), dtype=np.uint8), dev)
    tail = [tvm.runtime.tensor(a, dev) for a in (
        sw.colsum, np.full(sw.N, 0.01, np.float32), np.array([0.02, 7], np.float32),
        np.zeros(sw.N, np.float32), np.zeros((M, sw.N), np.float32))]
    sets = _index_copies([sw.qptr, sw.qk, sw.qw])

    def prepare(cfg: _Chunks, ms: int, rep: int) -> Callable[[], float]:
        ex = tvm.compile(standalone_module(sparse_int8_kernel(M, sw, target=target,
                                                              chunks=cfg.chunks)), target)
        return _cycling_timer(ex.mod["main"], sets, [xt], tail, target, ms, rep)

    t0 = time.monotonic()
    results = _search(f"sparse int8 {key}", [_Chunks(c) for c in valid], prepare, budget_s, 3,
                      3, 0.03)
    if not results:
        return default_chunks(M, sw.N, target)
    return _keep_best("sparse int8", key, results, t0, path, on_search).chunks


class KernelTiles:
    """The tiles the lowering asks for: from the database at ``cache``, searched (and stored)
    first when ``measure``; the per-ISA defaults when neither has one."""

    def __init__(self, cache: str | os.PathLike[str] | None, measure: bool = False,
                 on_search: SearchReport | None = None) -> None:
        self.cache = cache
        self.measure = measure
        self.on_search = on_search
        # Every layer of every bucket asks again for the same few shapes: answer from memory
        # instead of re-reading the JSON file each time.
        self._known: dict[tuple, Any] = {}

    def _tile(self, key: tuple, search: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``search(*args, **kwargs)`` with this database's settings, once per ``key``."""
        if key not in self._known:
            self._known[key] = search(*args, **kwargs, cache=self.cache, measure=self.measure,
                                      on_search=self.on_search)
        return self._known[key]

    def dense(self, M: int, K: int, N: int, target: tvm.target.Target) -> DenseConfig:
        return self._tile(("dense", M, K, N, str(target)), best_dense_config, M, K, N, target)

    def int8(self, M: int, K: int, N: int, target: tvm.target.Target) -> Int8Config:
        return self._tile(("int8", M, K, N, str(target)), best_int8_config, M, K, N, target)

    def bf16(self, M: int, K: int, N: int, target: tvm.target.Target) -> Bf16Config:
        return self._tile(("bf16", M, K, N, str(target)), best_bf16_config, M, K, N, target)

    def attention_bf16(self, batch: int, sq: int, skv: int, heads: int, d: int, *, merged: bool,
                       mask: bool, target: tvm.target.Target) -> Any:
        return self._tile(("attention_bf16", batch, sq, skv, heads, d, merged, mask, str(target)),
                          best_attention_bf16_config, batch, sq, skv, heads, d, merged=merged,
                          mask=mask, target=target)

    def sparse(self, M: int, sw: Any, target: tvm.target.Target) -> Any:
        return self._tile(("sparse", M, sw.K, sw.N, sw.R, _density_key(sw.density), str(target)),
                          best_sparse_config, M, sw, target)

    def sparse_int8(self, M: int, sw: Any, target: tvm.target.Target) -> int:
        return self._tile(("sparse_int8", M, sw.K, sw.N, _density_key(sw.density), str(target)),
                          best_sparse_int8_chunks, M, sw, target)

    def attention(self, batch: int, sq: int, skv: int, heads: int, d: int, *, merged: bool,
                  mask: bool, target: tvm.target.Target) -> AttentionConfig:
        return self._tile(("attention", batch, sq, skv, heads, d, merged, mask, str(target)),
                          best_attention_config, batch, sq, skv, heads, d, merged=merged,
                          mask=mask, target=target)

"""Calibration data: texts (one per line, tokenized with a Hugging Face ``tokenizer.json``) or an
``.npz`` of feeds, checked against the model's inputs and cut into batches; and the sweeps that run
the observers.

Texts are sorted by length and batched (``BATCH`` texts a batch) so that padding stays small; each
batch is padded to its longest text, truncated to the model's positions (the count of truncated
texts is logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError

log = logging.getLogger(__name__)

BATCH = 16
Feeds = dict[str, np.ndarray]

_NP_DTYPES = {
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.FLOAT: np.float32,
    ir.DataType.BOOL: np.bool_,
}


def read_texts(
    path: str | os.PathLike, limit: int | None = None, *, what: str = "--calibration"
) -> list[str]:
    """Non-empty lines of ``path`` (the first ``limit``); one clear error if unreadable or empty."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{what} {path}: cannot read it as UTF-8 text ({type(exc).__name__})"
        ) from None
    texts = [t.strip() for t in lines if t.strip()]
    if not texts:
        raise UsageError(f"{what} {path}: the file has no text lines; give one text per line")
    return texts[:limit] if limit else texts


def _check_tokenizer_dir(tokenizer: str | os.PathLike | None, path: str | os.PathLike) -> Path:
    if not tokenizer:
        raise UsageError(
            f"--calibration {path} is text: give --tokenizer DIR (a directory with tokenizer.json)"
        )
    tdir = Path(tokenizer)
    if not tdir.exists():
        raise UsageError(f"--tokenizer {tokenizer}: no such directory")
    if not (tdir / "tokenizer.json").is_file() and not tdir.is_file():
        raise UsageError(f"--tokenizer {tokenizer}: no tokenizer.json in that directory")
    return tdir


def text_batches(
    model: ir.Model,
    texts: list[str],
    tokenizer: str | os.PathLike,
    *,
    max_positions: int | None = None,
    batch: int = BATCH,
    sort: bool = True,
) -> list[Feeds]:
    """Tokenized feeds for the model's inputs, ``batch`` texts a batch (sorted by length unless
    ``sort=False``)."""
    from lamina.compiler.frontend.text import load_tokenizer

    tok = load_tokenizer(tokenizer)
    tok.no_padding()
    tok.no_truncation()
    encs = tok.encode_batch(texts)
    limit = max_positions or 10**9
    truncated = sum(1 for e in encs if len(e.ids) > limit)
    if truncated:
        log.warning(
            "calibration: %d of %d texts are longer than the model's %d positions; truncated",
            truncated,
            len(texts),
            limit,
        )
    order = (
        sorted(range(len(encs)), key=lambda i: len(encs[i].ids)) if sort else list(range(len(encs)))
    )
    names = [v.name for v in model.graph.inputs]
    out = []
    for start in range(0, len(order), batch):
        rows = [encs[i] for i in order[start : start + batch]]
        length = min(limit, max(len(e.ids) for e in rows))
        ids = np.zeros((len(rows), length), np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for r, enc in enumerate(rows):
            n = min(length, len(enc.ids))
            ids[r, :n], mask[r, :n], types[r, :n] = (
                enc.ids[:n],
                enc.attention_mask[:n],
                enc.type_ids[:n],
            )
        feeds: Feeds = {}
        for name in names:
            low = name.lower()
            feeds[name] = mask if "mask" in low else types if "type" in low else ids
        out.append(feeds)
    return out


def npz_batches(
    model: ir.Model, path: str | os.PathLike, limit: int | None = None, batch: int = BATCH
) -> list[Feeds]:
    """Feeds from an ``.npz`` (one array per model input, batch first), checked for names, dtypes
    and ranks."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many kinds
        raise UsageError(
            f"--calibration {path}: not a readable .npz ({type(exc).__name__})"
        ) from None
    if not arrays:
        raise UsageError(f"--calibration {path}: the .npz holds no arrays")
    wanted = {v.name: v for v in model.graph.inputs}
    missing = sorted(set(wanted) - set(arrays))
    extra = sorted(set(arrays) - set(wanted))
    if missing or extra:
        raise UsageError(
            f"--calibration {path}: names do not match the model's inputs "
            f"(missing {missing}, unexpected {extra})"
        )
    rows = None
    for name, value in wanted.items():
        arr = arrays[name]
        want = _NP_DTYPES.get(value.dtype)
        if want is not None and arr.dtype != want:
            raise UsageError(
                f"--calibration {path}: {name!r} is {arr.dtype}, the model wants "
                f"{np.dtype(want).name}"
            )
        if value.shape is not None and arr.ndim != len(value.shape):
            raise UsageError(
                f"--calibration {path}: {name!r} has rank {arr.ndim}, the model wants "
                f"rank {len(value.shape)}"
            )
        if rows is not None and arr.shape[0] != rows:
            raise UsageError(
                f"--calibration {path}: {name!r} has {arr.shape[0]} rows, others {rows}"
            )
        rows = arr.shape[0] if arr.ndim else 1
    n = min(rows or 0, limit) if limit else rows or 0
    return [{k: arrays[k][s : s + batch] for k in wanted} for s in range(0, n, batch)]


def load_batches(
    model: ir.Model,
    path: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    size: int | None = 300,
    max_positions: int | None = None,
) -> list[Feeds]:
    """Calibration batches from a text file (with ``tokenizer``) or an ``.npz``: the first ``size``
    samples."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--calibration {path}: no such file")
    if p.suffix == ".npz":
        return npz_batches(model, p, size)
    texts = read_texts(p, size)
    return text_batches(
        model, texts, _check_tokenizer_dir(tokenizer, path), max_positions=max_positions
    )


def batch_rows(batches: list[Feeds]) -> int:
    return sum(next(iter(b.values())).shape[0] for b in batches)


def iterate(batches: list[Feeds], desc: str) -> Iterator[Feeds]:
    """The batches with a progress bar (counts and ETA) on stderr."""
    from tqdm import tqdm

    yield from tqdm(batches, desc=desc, unit="batch", leave=False, disable=None)


def collect_ranges(
    model: ir.Model,
    names: list[str],
    batches: list[Feeds],
    method: str = "minmax",
    percentile: float = 99.999,
    levels: int = 256,
) -> dict[str, tuple[float, float]]:
    """Run ``model`` on ``batches`` (ONNX Runtime) and observe the tensors ``names``: their ``(lo,
    hi)``."""
    from lamina.backends.reference import session
    from lamina.passes.quant._observers import Observer

    if not batches:
        raise UsageError("calibration: no samples to calibrate on")
    probe = model.clone()
    by_name = {v.name: v for v in probe.graph.inputs}
    for node in probe.graph:
        for out in node.outputs:
            by_name[out.name] = out
    inputs = {v.name for v in probe.graph.inputs}
    present = {v.name for v in probe.graph.outputs}
    for name in names:
        value = by_name.get(name)
        if value is None:
            raise UsageError(f"calibration: the graph has no tensor {name!r}")
        if name not in inputs and name not in present:
            if value.dtype is None:
                value.dtype = ir.DataType.FLOAT
            probe.graph.outputs.append(value)
            present.add(name)
    sess = session(probe)
    fetch = [n for n in names if n not in inputs]
    observers = {n: Observer(method, percentile, levels) for n in names}

    def sweep(desc: str, hist: bool) -> None:
        for feeds in iterate(batches, desc):
            outs = dict(zip(fetch, sess.run(fetch, feeds), strict=True)) if fetch else {}
            for n in names:
                x = feeds[n] if n in inputs else outs[n]
                obs = observers[n]
                obs.observe_histogram(x) if hist else obs.observe_range(x)

    sweep("calibration (ranges)", hist=False)
    if any(o.needs_histogram for o in observers.values()):
        sweep(f"calibration ({method} histograms)", hist=True)
    return {n: o.range() for n, o in observers.items()}

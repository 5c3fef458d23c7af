"""Run uneven batches padding-free through an artifact's packed functions (``varlen.py``).

A request arrives padded as usual (``[batch, seq]`` ids with a right-padded ``attention_mask``). The
runner drops the padding: each row's real tokens go one after another into a ``[1, T]`` stream
(``T`` the smallest token bucket that holds them), with per-token position ids, the sequences'
offsets (``cu_seqlens``) and each sequence's first token (for poolers). Token outputs come back as
``[batch, seq, ...]`` with zeros at padded positions (real positions equal the padded run within
float rounding); sequence outputs as ``[batch, ...]``. A batch too big for one packed call is cut
into consecutive chunks.

The choice is automatic: packed when its token count (the buckets' ``T`` summed over chunks) is
below what the fixed buckets would compute for the request, or equal in fewer calls; the fixed
buckets otherwise, and always for a mask that is not right-padded (a row with gaps, or an empty
row).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .runtime import _to_numpy

log = logging.getLogger(__name__)

# The packed functions' extra inputs (``varlen.pack_model`` adds them; no ONNX needed here).
POSITION_IDS = "lamina_position_ids"
CU_SEQLENS = "lamina_cu_seqlens"
FIRST_TOKEN = "lamina_first_token"


def right_padded_lengths(mask: np.ndarray | None) -> np.ndarray | None:
    """Each row's real length when ``mask`` ([batch, seq]) is right-padded with no empty row;
    else None."""
    if mask is None or mask.ndim != 2:
        return None
    lens = (mask != 0).sum(axis=1)
    if lens.min() < 1:
        return None
    if not np.array_equal(mask != 0, np.arange(mask.shape[1])[None, :] < lens[:, None]):
        return None
    return lens


def chunk_rows(lens: np.ndarray, max_tokens: int, max_seqs: int) -> list[tuple[int, int]] | None:
    """Consecutive row chunks ``(lo, hi)`` of at most ``max_tokens`` tokens and ``max_seqs`` rows;
    None when a row alone is longer than ``max_tokens``."""
    out, lo, n = [], 0, len(lens)
    while lo < n:
        hi, total = lo, 0
        while hi < n and total + int(lens[hi]) <= max_tokens and hi - lo < max_seqs:
            total += int(lens[hi])
            hi += 1
        if hi == lo:
            return None
        out.append((lo, hi))
        lo = hi
    return out


def cu_seqlens(rows: np.ndarray, seqs: int) -> np.ndarray:
    """int32 ``[seqs + 1]`` offsets of sequences of lengths ``rows`` (unused slots repeat the
    end)."""
    cu = np.zeros(seqs + 1, np.int32)
    cu[1: len(rows) + 1] = np.cumsum(rows)
    cu[len(rows) + 1:] = cu[len(rows)]
    return cu


def pack_stream(arrays: Mapping[str, np.ndarray], names: tuple[str, ...], sel: np.ndarray,
                lo: int, hi: int, tokens: int) -> dict[str, np.ndarray]:
    """The ``[1, tokens]`` streams of rows ``lo:hi`` of the token inputs ``names`` (their real
    positions ``sel``), and their position ids; other names are left to the caller."""
    total = int(sel.sum())
    feeds: dict[str, np.ndarray] = {}
    for name in names:
        if name == POSITION_IDS:
            pos = np.zeros((1, tokens), np.int64)
            pos[0, :total] = np.nonzero(sel)[1]
            feeds[name] = pos
        elif name in arrays:
            a = arrays[name][lo:hi, : sel.shape[1]]
            stream = np.zeros((1, tokens), a.dtype)
            stream[0, :total] = a[sel]
            feeds[name] = stream
    return feeds


@dataclass(frozen=True)
class PackedFunction:
    tokens: int
    seqs: int
    function: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    token_outputs: tuple[str, ...]
    seq_outputs: tuple[str, ...]


class PackedRunner:
    """The packed functions of one loaded artifact (see the module docstring)."""

    def __init__(
        self, model: Any, entries: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> None:
        self._model = model
        self.functions = sorted(
            (
                PackedFunction(
                    int(e["tokens"]),
                    int(e["seqs"]),
                    e["function"],
                    tuple(e["params"]),
                    tuple(e["inputs"]),
                    tuple(e["token_outputs"]),
                    tuple(e["seq_outputs"]),
                )
                for e in entries
            ),
            key=lambda f: (f.tokens, f.seqs),
        )
        self._params = {p: params[p] for f in self.functions for p in f.params}
        names = [s.name for s in model.inputs]
        masks = [n for n in names if "mask" in n.lower()]
        self._mask = masks[0] if len(masks) == 1 else None
        self.max_tokens = self.functions[-1].tokens
        self.max_seqs = max(f.seqs for f in self.functions)

    @classmethod
    def create(
        cls, model: Any, manifest: Mapping[str, Any], params: Mapping[str, Any]
    ) -> PackedRunner | None:
        entries = manifest.get("packed") or []
        return cls(model, entries, params) if entries else None

    # -- planning ---------------------------------------------------------------------------
    def lengths(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Each row's real length, or None when the mask is not right-padded (or absent)."""
        return right_padded_lengths(arrays[self._mask]) if self._mask is not None else None

    def _fit(self, total: int, rows: int, longest: int) -> PackedFunction | None:
        for f in self.functions:
            if f.tokens >= total and f.seqs >= rows and f.tokens >= longest:
                return f
        return None

    def plan(self, lens: np.ndarray) -> list[tuple[int, int, PackedFunction]] | None:
        """``[(lo, hi, function)]``: consecutive row chunks and the packed function of each."""
        chunks = chunk_rows(lens, self.max_tokens, self.max_seqs)
        if chunks is None:
            return None  # a row longer than every packed function
        out = []
        for lo, hi in chunks:
            f = self._fit(int(lens[lo:hi].sum()), hi - lo, int(lens[lo:hi].max()))
            if f is None:
                return None
            out.append((lo, hi, f))
        return out

    def choose(
        self, arrays: Mapping[str, np.ndarray], buckets: Any, split_batch: bool
    ) -> tuple[np.ndarray, list[tuple[int, int, PackedFunction]]] | None:
        """``(lengths, chunks)`` when the request should run packed: its mask is right-padded, it
        fits the packed functions, and they compute fewer tokens than the fixed buckets (or as
        many in fewer calls, or no fixed bucket holds it); None otherwise."""
        from .buckets import plan_request

        lens = self.lengths(arrays)
        if lens is None:
            return None
        chunks = self.plan(lens)
        if chunks is None:
            return None
        batch, seq = arrays[self._mask].shape
        fixed = plan_request(buckets, batch, seq, split_batch=split_batch)
        if fixed is not None:
            (b, s), calls = fixed
            # Fewer tokens, or as many in fewer calls (each call streams every weight once); on a
            # full tie the fixed bucket wins (its shapes may carry tuning records).
            if (sum(f.tokens for *_, f in chunks), len(chunks)) >= (calls * b * s, calls):
                return None
        return lens, chunks

    # -- running ----------------------------------------------------------------------------
    def run(
        self,
        arrays: Mapping[str, np.ndarray],
        lens: np.ndarray,
        chunks: list[tuple[int, int, PackedFunction]],
    ) -> dict[str, np.ndarray]:
        batch, seq = next(iter(arrays.values())).shape[:2]
        outs: dict[str, np.ndarray] = {}
        for lo, hi, f in chunks:
            part = self._run_chunk(arrays, lens, lo, hi, f)
            for spec in self._model.outputs:
                got = part[spec.name]
                if spec.name not in outs:
                    shape = [batch if d == "batch" else seq if d == "seq" else d for d in spec.dims]
                    outs[spec.name] = np.zeros(shape, got.dtype)
                outs[spec.name][lo:hi, : got.shape[1]] = got
        return outs

    def _run_chunk(
        self,
        arrays: Mapping[str, np.ndarray],
        lens: np.ndarray,
        lo: int,
        hi: int,
        f: PackedFunction,
    ) -> dict[str, np.ndarray]:
        m = self._model
        rows = lens[lo:hi]
        cu = cu_seqlens(rows, f.seqs)
        total = int(cu[len(rows)])
        sel = np.arange(lens[lo:hi].max())[None, :] < rows[:, None]  # real positions
        feeds = pack_stream(arrays, f.inputs, sel, lo, hi, f.tokens)
        for name in f.inputs:
            if name == CU_SEQLENS:
                feeds[name] = cu
            elif name == FIRST_TOKEN:
                first = np.zeros(f.seqs, np.int64)
                first[: len(rows)] = cu[: len(rows)]
                feeds[name] = first
        arrays = [feeds[n] for n in f.inputs]
        result = m._call(f.function, [a.shape for a in arrays], arrays, f.params, self._params)
        names = [o.name for o in m.outputs]
        order = list(f.token_outputs) + list(f.seq_outputs)
        graph_order = [n for n in names if n in order]
        out: dict[str, np.ndarray] = {}
        for i, name in enumerate(graph_order):
            arr = _to_numpy(result[i])
            if name in f.token_outputs:
                dense = np.zeros((len(rows), sel.shape[1], *arr.shape[2:]), arr.dtype)
                dense[sel] = arr[0, :total]
                out[name] = dense
            else:
                out[name] = arr[: len(rows)]
        return out

"""Run uneven batches layer by layer, dropping unimportant tokens between layers.

An artifact compiled with token pruning holds, per token bucket, the stages of ``staged.py``
(embeddings, one function per layer, the pooler) and a list of *length configurations*: per-layer
keep ratios found by the length search (``lamina/compiler/driver/length.py``), each with its
measured accuracy and latency. A request runs padding-free (as in ``packed_runtime.py``); before
each layer whose keep ratio drops, the runner

1. takes each token's importance from the previous layer's function: the attention it received
   (a kernel beside attention's, ``kernels/varlen_attention.py``), averaged over heads and over its
   sequence's tokens;
2. keeps, per sequence, the ``k = max(2, ceil(r * length))`` most important tokens ([CLS] and the
   last kept token, [SEP], always stay);
3. writes the dropped tokens' hidden states to the output (they keep their last state) and
   compacts the stream into the smallest token bucket that holds the rest.

This is exactly ``prune-tokens``' math (``lamina/compiler/ir/ops/token_pruning.py``), whose graph
ONNX Runtime runs as the reference. ``choose(budget_ms, tokens)`` picks the most accurate
configuration expected to fit a latency budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lamina.compiler.ir.ops.token_pruning import select_rows

from ._errors import BackendError, UsageError
from .packed_runtime import chunk_rows, cu_seqlens, pack_stream

log = logging.getLogger(__name__)

_DEPTH = "\0depth"


@dataclass(frozen=True)
class StageFunction:
    function: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class StagedBucket:
    tokens: int
    seqs: int
    stages: dict[str, StageFunction]


@dataclass(frozen=True)
class LengthConfig:
    """One entry of the manifest's ``length_configs``."""

    name: str
    keep: tuple[float, ...]
    agreement: float           # top-1 neighbour agreement with the unpruned model (held out)
    ms_fixed: float            # expected latency of a request: ms_fixed + ms_per_token * tokens,
    ms_per_token: float        # times slack (the measured p90 of actual / expected)
    slack: float = 1.0

    def expected_ms(self, tokens: int) -> float:
        return (self.ms_fixed + self.ms_per_token * tokens) * self.slack

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> LengthConfig:
        return cls(str(d["name"]), tuple(float(r) for r in d["keep"]), float(d["agreement"]),
                   float(d["ms_fixed"]), float(d["ms_per_token"]), float(d.get("slack", 1.0)))

    def describe(self) -> str:
        return f"{self.name} (keep {':'.join(f'{r:g}' for r in self.keep)})"


def choose_config(configs: Sequence[LengthConfig], default: LengthConfig,
                  budget_ms: float | None, tokens: int) -> tuple[LengthConfig, str]:
    """``(configuration, why)`` for a request of ``tokens`` real tokens: ``default`` without a
    budget; else the most accurate configuration whose expected latency fits ``budget_ms``; else
    (with a warning) the fastest."""
    if budget_ms is None or not configs:
        return default, "default"
    fits = [c for c in configs if c.expected_ms(tokens) <= budget_ms]
    if fits:
        best = max(fits, key=lambda c: (c.agreement, -c.expected_ms(tokens)))
        return best, f"expected {best.expected_ms(tokens):.1f} ms <= budget {budget_ms:g} ms"
    fastest = min(configs, key=lambda c: c.expected_ms(tokens))
    log.warning("budget %g ms is below every length configuration's expected latency for %d "
                "tokens; running the fastest, %s (expected %.1f ms)", budget_ms, tokens,
                fastest.describe(), fastest.expected_ms(tokens))
    return fastest, (f"budget {budget_ms:g} ms is below every configuration; the fastest, "
                     f"expected {fastest.expected_ms(tokens):.1f} ms")


class StagedRunner:
    """The staged functions and length configurations of one loaded artifact."""

    def __init__(self, model: Any, staged: Mapping[str, Any],
                 configs: list[Mapping[str, Any]], default: str | None,
                 params: Mapping[str, Any]) -> None:
        self._model = model
        self.layers = int(staged["layers"])
        self.heads = [int(h) for h in staged["heads"]]
        self.scales = [float(s) for s in staged["scales"]]
        self.token_output = staged.get("token_output")
        self.seq_outputs = list(staged.get("seq_outputs") or [])
        self.buckets = sorted(
            (StagedBucket(int(f["tokens"]), int(f["seqs"]),
                          {s["name"]: StageFunction(s["function"], tuple(s["params"]),
                                                    tuple(s["inputs"]), tuple(s["outputs"]))
                           for s in f["stages"]})
             for f in staged["functions"]),
            key=lambda b: (b.tokens, b.seqs))
        self._params = {p: params[p] for b in self.buckets for s in b.stages.values()
                        for p in s.params}
        self.max_tokens = self.buckets[-1].tokens
        self.max_seqs = max(b.seqs for b in self.buckets)
        self.configs = [LengthConfig.from_manifest(c) for c in configs]
        self.default = next((c for c in self.configs if c.name == default), None)
        self.unpruned = LengthConfig("unpruned", (1.0,) * self.layers, 1.0, 0.0, 0.0)
        # [batch, seq]: how many layers ran each token in the last request (0 at padding).
        self.last_depth: np.ndarray | None = None

    # -- choosing a configuration --------------------------------------------------------------
    def choose(self, budget_ms: float | None, tokens: int) -> tuple[LengthConfig, str]:
        """The configuration for a request of ``tokens`` real tokens, and why it was picked."""
        return choose_config(self.configs, self.default or self.unpruned, budget_ms, tokens)

    def config(self, name: str | Sequence[float]) -> LengthConfig:
        """A configuration by name, or an ad-hoc one from per-layer keep ratios."""
        if not isinstance(name, str):
            keep = tuple(float(r) for r in name)
            ok = (len(keep) == self.layers and all(0 < r <= 1 for r in keep) and keep[0] == 1
                  and all(b <= a for a, b in zip(keep, keep[1:], strict=False)))
            if not ok:
                raise UsageError(f"keep ratios {list(keep)}: need {self.layers} values in (0, 1], "
                                 "the first 1, none above the one before")
            return LengthConfig("custom", keep, float("nan"), 0.0, 0.0)
        for c in [*self.configs, self.unpruned]:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in [*self.configs, self.unpruned])
        raise BackendError(f"{self._model.path}: no length configuration {name!r} (has {known})")

    # -- planning ------------------------------------------------------------------------------
    def _fit(self, total: int, rows: int) -> StagedBucket | None:
        for b in self.buckets:
            if b.tokens >= total and b.seqs >= rows:
                return b
        return None

    def plan(self, lens: np.ndarray) -> list[tuple[int, int]] | None:
        """Consecutive row chunks ``(lo, hi)`` that each fit one bucket; None if a row is too
        long."""
        return chunk_rows(lens, self.max_tokens, self.max_seqs)

    # -- running -------------------------------------------------------------------------------
    def run(self, arrays: Mapping[str, np.ndarray], lens: np.ndarray,
            chunks: list[tuple[int, int]], cfg: LengthConfig) -> dict[str, np.ndarray]:
        batch, seq = next(iter(arrays.values())).shape[:2]
        outs: dict[str, np.ndarray] = {}
        depth = np.zeros((batch, seq), np.int32)
        for lo, hi in chunks:
            part = self._run_chunk(arrays, lens[lo:hi], lo, hi, cfg.keep)
            d = part.pop(_DEPTH)
            depth[lo:hi, : d.shape[1]] = d
            for spec in self._model.outputs:
                got = part[spec.name]
                if spec.name not in outs:
                    shape = [batch if d == "batch" else seq if d == "seq" else d for d in spec.dims]
                    outs[spec.name] = np.zeros(shape, got.dtype)
                outs[spec.name][lo:hi, : got.shape[1]] = got
        self.last_depth = depth
        return outs

    def _call(self, bucket: StagedBucket, stage: str, args: list[Any]) -> list[Any]:
        m = self._model
        f = bucket.stages[stage]
        try:
            result = m._vm[f.function](*args, *(self._params[p] for p in f.params))
        except Exception as e:
            raise BackendError(f"{m.path}: {f.function} failed: {type(e).__name__}: "
                               f"{str(e).strip()[:500]}") from e
        if hasattr(result, "numpy"):   # one output, not wrapped in a tuple
            return [result]
        return [result[i] for i in range(len(f.outputs))]

    def _run_chunk(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray, lo: int, hi: int,
                   keep: tuple[float, ...]) -> dict[str, np.ndarray]:
        import tvm

        dev = self._model._dev
        nseq, total, longest = len(rows), int(rows.sum()), int(rows.max())
        bucket = self._fit(total, nseq)
        if bucket is None:
            raise BackendError(f"{self._model.path}: no staged bucket holds {total} tokens")
        sel = np.arange(longest)[None, :] < rows[:, None]   # real positions of the chunk
        embed = bucket.stages["embed"]
        feeds = pack_stream(arrays, embed.inputs, sel, lo, hi, bucket.tokens)
        args = [tvm.runtime.tensor(feeds[n], dev) for n in embed.inputs]
        h = self._call(bucket, "embed", args)[0]
        where = np.flatnonzero(sel.reshape(-1))   # each stream token's place in [nseq * longest]
        seg = rows.astype(np.int64).copy()
        depth = np.zeros(nseq * longest, np.int32)   # layers that ran each token
        carried = None
        received_t: Any = None
        for layer in range(self.layers):
            r = keep[layer]
            if layer > 0 and r < keep[layer - 1]:
                n = int(seg.sum())
                hid = h.numpy()[0, :n]
                # importance: received attention summed over heads, over (heads * seq length)
                received = received_t.numpy()[:, :n].sum(axis=0)
                valid = np.arange(int(seg.max()))[None, :] < seg[:, None]
                imp = np.zeros(valid.shape, np.float32)
                imp[valid] = received / (self.heads[layer - 1] * np.repeat(seg, seg))
                kept = select_rows(imp, valid, rows, r)[valid]   # per stream token
                depth[where[~kept]] = layer
                if self.token_output is not None:
                    if carried is None:
                        carried = np.zeros((nseq * longest, hid.shape[1]), np.float32)
                    carried[where[~kept]] = hid[~kept]
                where = where[kept]
                seg = np.add.reduceat(kept.astype(np.int64), np.concatenate(
                    [[0], np.cumsum(seg)[:-1]]))
                n = int(seg.sum())
                bucket = self._fit(n, nseq)
                stream = np.zeros((1, bucket.tokens, hid.shape[1]), np.float32)
                stream[0, :n] = hid[kept]
                h = tvm.runtime.tensor(stream, dev)
            cu = tvm.runtime.tensor(cu_seqlens(seg, bucket.seqs), dev)
            got = self._call(bucket, f"l{layer}", [h, cu])
            h, received_t = got[0], (got[1] if len(got) > 1 else None)
        depth[where] = self.layers
        out: dict[str, np.ndarray] = {_DEPTH: depth.reshape(nseq, longest)}
        n = int(seg.sum())
        hid = h.numpy()[0, :n]
        if self.token_output is not None:
            if carried is None:
                carried = np.zeros((nseq * longest, hid.shape[1]), np.float32)
            carried[where] = hid
            out[self.token_output] = carried.reshape(nseq, longest, -1)
        if "head" in bucket.stages and self.seq_outputs:
            first = np.zeros(bucket.seqs, np.int64)
            first[:nseq] = np.concatenate([[0], np.cumsum(seg)[:-1]])
            got = self._call(bucket, "head", [h, tvm.runtime.tensor(first, dev)])
            for name, arr in zip(bucket.stages["head"].outputs, got, strict=True):
                out[name] = arr.numpy()[:nseq]
        return out


__all__ = ["LengthConfig", "StagedRunner", "choose_config"]

"""Length buckets: the static (batch, seq) shapes compiled into one artifact.

No TVM here: the driver parses ``--buckets`` with this module, and the runtime uses it to pick
a bucket per request.

Default buckets (:func:`default_buckets`): batch 1 at seq 16, 32, 64, 128, 256, 512, capped at the
model's maximum positions, plus batch 4 and 8 at seq 128 for small batched requests. A request
runs in the bucket that computes the fewest tokens for it (:func:`plan_request`), its batch
split into chunks when that is cheaper or when no bucket is big enough;
padding to a power of two wastes at most half the tokens while keeping the compile to a handful
of functions (an untuned MiniLM bucket compiles in a few seconds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lamina.compiler.errors import UsageError

Bucket = tuple[int, int]  # (batch, seq)

DEFAULT_SEQS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCHED: tuple[Bucket, ...] = ((4, 128), (8, 128))

_SPEC = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_buckets(spec: str | Iterable[Bucket]) -> list[Bucket]:
    """``"1x128,4x64"`` (batch x seq, comma separated) -> sorted, de-duplicated buckets."""
    if not isinstance(spec, str):
        out = {(int(b), int(s)) for b, s in spec}
    else:
        out = set()
        for part in spec.split(","):
            if not part.strip():
                continue
            m = _SPEC.match(part)
            if not m:
                raise UsageError(f"bucket {part.strip()!r} is not BATCHxSEQ (e.g. "
                                 "--buckets 1x128,4x64)")
            out.add((int(m.group(1)), int(m.group(2))))
    for b, s in out:
        if b < 1 or s < 1:
            raise UsageError(f"bucket {b}x{s}: batch and seq must be >= 1")
    if not out:
        raise UsageError("no buckets given (e.g. --buckets 1x128,4x64)")
    return sorted(out)


def format_buckets(buckets: Iterable[Bucket]) -> str:
    return ",".join(f"{b}x{s}" for b, s in sorted(buckets))


def default_buckets(max_positions: int | None = 512) -> list[Bucket]:
    """Batch 1 at powers of two 16..512 and batch 4, 8 at 128, capped at ``max_positions``."""
    cap = max_positions or DEFAULT_SEQS[-1]
    seqs = [s for s in DEFAULT_SEQS if s <= cap]
    if not seqs or seqs[-1] < min(cap, DEFAULT_SEQS[-1]):
        seqs.append(min(cap, DEFAULT_SEQS[-1]))
    out = {(1, s) for s in seqs}
    out |= {(b, min(s, cap)) for b, s in DEFAULT_BATCHED}
    return sorted(out)


def check_buckets(buckets: Iterable[Bucket], max_positions: int | None) -> None:
    if max_positions:
        for b, s in buckets:
            if s > max_positions:
                raise UsageError(f"bucket {b}x{s}: seq {s} exceeds the model's maximum "
                                 f"positions ({max_positions})")


def plan_request(buckets: Iterable[Bucket], batch: int, seq: int, *, split_batch: bool = True
                 ) -> tuple[Bucket, int] | None:
    """(bucket, calls): run ``batch`` rows of length ``seq`` as ``calls`` calls of ``bucket``.

    Minimizes the tokens computed (``calls * bucket batch * bucket seq``), then the calls; with
    ``split_batch`` a batch may be cut into chunks (a batch of 3 short rows runs as three 1x16
    calls rather than one 4x128), which also serves batches larger than any bucket.
    """
    best: tuple[tuple[int, int, int], Bucket, int] | None = None
    for b, s in buckets:
        if s < seq or (b < batch and not split_batch):
            continue
        calls = -(-batch // b)
        key = (calls * b * s, calls, s)
        if best is None or key < best[0]:
            best = (key, (b, s), calls)
    return None if best is None else (best[1], best[2])

"""Seeded example inputs for a graph: used by ``--verify-each``, tests and benchmarks.

Integer inputs of token models get plausible values: ``input_ids`` within the vocabulary (read from
the embedding table that consumes them), ``attention_mask`` ones followed by padding zeros on some
rows, ``token_type_ids`` and ``position_ids`` within their tables.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError
from lamina.compiler.ir.core import indexed_gathers

DEFAULT_DIMS = {"batch": 2, "seq": 16}
# Seeded feeds are small examples: a declared shape beyond this is refused rather than allocated.
MAX_FEED_ELEMENTS = 1 << 26


def default_dim(name: str, dims: dict[str, int]) -> int:
    if name in dims:
        return dims[name]
    low = name.lower()
    if "batch" in low:
        return dims.get("batch", DEFAULT_DIMS["batch"])
    if "seq" in low or "len" in low or "token" in low or "sentence" in low:
        return dims.get("seq", DEFAULT_DIMS["seq"])
    return 4


def concrete_shape(value: ir.Value, dims: dict[str, int]) -> list[int]:
    if value.shape is None:
        raise ValueError(f"input {value.name!r} has no shape; give one with --input-shape")
    out = []
    for d in value.shape:
        out.append(d if isinstance(d, int) else default_dim(str(d.value or "?"), dims))
    return out


def _table_rows(value: ir.Value) -> int | None:
    """Rows of the smallest Gather table fed by ``value`` (through Cast/Reshape/Unsqueeze/Add), if
    any."""
    rows = [t.shape[0] for t in (n.inputs[0] for n in indexed_gathers(value, _ID_PASS_THROUGH))
            if t is not None and t.shape is not None and isinstance(t.shape[0], int)]
    return min(rows) if rows else None


_ID_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Add"})


def make_feeds(
    model: ir.Model, dims: dict[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = concrete_shape(value, dims)
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_FEED_ELEMENTS:
            raise UsageError(
                f"input {value.name!r}: example inputs of shape {shape} ({math.prod(shape)} "
                "elements) exceed "
                f"the budget of {MAX_FEED_ELEMENTS} elements for seeded feeds; bind smaller dims "
                "with --dim "
                "or --input-shape"
            )
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        name = value.name.lower()
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            if "mask" in name:
                arr = np.ones(shape, dtype=np.int64)
                if len(shape) == 2 and shape[1] > 2:
                    for row in range(1, shape[0], 2):  # every other row has trailing padding
                        arr[row, shape[1] - 1 - (row % max(1, shape[1] // 2)) :] = 0
            else:
                rows = _table_rows(value) or 2
                if "position" in name:
                    arr = np.broadcast_to(np.arange(shape[-1]) % rows, shape).copy()
                else:
                    high = rows if "type" not in name else min(rows, 2)
                    arr = rng.integers(0, max(1, high), size=shape)
                    if "input_ids" in name and arr.ndim == 2 and arr.shape[1] >= 2:
                        arr[:, 0] = min(101, rows - 1)  # a [CLS]-like first token
            feeds[value.name] = arr.astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds

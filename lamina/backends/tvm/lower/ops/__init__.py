"""Built-in converters, one module per operator group (importing registers them)."""

from __future__ import annotations

from . import elementwise, gather, lamina, nn, packed, quant, reduce, shape, sparse  # noqa: F401

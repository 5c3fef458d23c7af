"""Lamina's built-in passes, one per file, grouped by area; importing this package registers them
all."""

from __future__ import annotations

import importlib
import pkgutil

for _area in ("canonical", "fusion", "sparsity", "quant", "pruning"):
    try:
        _pkg = importlib.import_module(f"{__name__}.{_area}")
    except ModuleNotFoundError:
        continue
    for _mod in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
        if not _mod.name.startswith("_"):
            importlib.import_module(f"{_pkg.__name__}.{_mod.name}")

importlib.import_module(f"{__name__}.pipelines")

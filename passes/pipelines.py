"""Named pipelines. ``O0`` is canonicalization only; later levels add fusions and lossy rewrites."""

from __future__ import annotations

from compiler.pipeline import register_pipeline

O0 = ",".join([
    "lift-constants",
    "remove-dropout",
    "eliminate-identity",
    "infer-shapes",
    "fold-constants",
    "simplify-reshape",
    "remove-dead-code",
    "cse",
    "fold-constants",
    "eliminate-identity",
    "remove-dead-code",
    "infer-shapes",
])

register_pipeline("O0", O0, "canonicalization only: constants lifted and folded, shape arithmetic simplified, "
                  "dead code, duplicates and Identity/Dropout removed")

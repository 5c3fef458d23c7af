"""``canonicalize``: the canonicalization passes as one group, run to a fixed point."""

from __future__ import annotations

from lamina.compiler.pipeline import register
from lamina.compiler.pipeline.registry import PassGroup


@register("canonicalize")
class CanonicalizePass(PassGroup):
    """Local cleanups, shape inference, constant folding, reshape simplification, ONNX Runtime's
    quantized forms into QDQ (canonicalize-quant), dead-code removal
    and CSE, cycled until each has run once since the last change (at most 4 rounds).

    Each can expose work for the others (folding makes Reshape targets constant, CSE merges Shape
    nodes that folding then sees as one), so a pipeline lists each pass once. At the fixed point
    infer-shapes has run on the final graph. Exact."""

    members = ("cleanup,infer-shapes,fold-constants,simplify-reshape,canonicalize-quant,"
               "remove-dead-code,cse")
    max_rounds = 4
    atol = 0.0

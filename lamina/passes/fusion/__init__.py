"""Fusions: the passes pipeline O1 adds to O0 (layer norm, GELU, attention, QKV merge, dense
epilogues)."""

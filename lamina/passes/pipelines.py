"""Named pipelines. ``O0`` is canonicalization only; later levels add fusions and lossy rewrites."""

from __future__ import annotations

from lamina.compiler.pipeline import register_pipeline

# Each pass once: canonicalize repeats its members until a round changes nothing.
O0 = "lift-constants,canonicalize"

register_pipeline(
    "O0",
    O0,
    "canonicalization only: constants lifted and folded, shape arithmetic simplified, "
    "dead code, duplicates and Identity/Dropout removed",
)

# Fusions, in dependency order: GELU before the epilogues that absorb it, attention before merge-qkv
# (which merges the projections of fused attentions), merge-qkv before fuse-bias-residual (which
# turns the merged MatMul + Add into one lamina::Linear), then the replaced nodes go.
O1_FUSIONS = ",".join([
    "fuse-layernorm",
    "fuse-gelu",
    "fuse-attention",
    "merge-qkv",
    "fuse-bias-residual",
    "remove-dead-code",
])

register_pipeline(
    "O1",
    "O0," + O1_FUSIONS,
    "O0 plus fusions: LayerNormalization, lamina Gelu, Attention, "
    "merged QKV projections, Linear with bias/GELU/residual epilogues",
)

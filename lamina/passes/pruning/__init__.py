"""Token pruning passes (``prune-tokens``): drop unimportant tokens layer by layer."""

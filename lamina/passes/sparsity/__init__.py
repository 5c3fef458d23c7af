"""Sparsity passes: structured shrinking of zero heads and neurons, and block-sparse weight
encoding."""

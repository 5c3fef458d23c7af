"""Canonicalization: the passes of pipeline O0."""

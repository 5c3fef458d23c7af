"""Error classes used by the TVM backend (re-exported from :mod:`compiler.errors`)."""

from __future__ import annotations

from compiler.errors import ArtifactError, BackendError, LaminaError, UsageError

__all__ = ["ArtifactError", "BackendError", "LaminaError", "UsageError"]

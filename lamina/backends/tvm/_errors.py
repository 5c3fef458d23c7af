"""Error classes used by the TVM backend (re-exported from :mod:`lamina.compiler.errors`)."""

from __future__ import annotations

from lamina.compiler.errors import ArtifactError, BackendError, LaminaError, UsageError

__all__ = ["ArtifactError", "BackendError", "LaminaError", "UsageError"]

"""Lamina's error hierarchy.

Every error a user can cause is a :class:`LaminaError` whose message is one line naming the file,
node or input at fault and what to do. The CLI prints that line (no traceback unless ``--debug``)
and exits non-zero.
"""

from __future__ import annotations


class LaminaError(Exception):
    """Base class of all errors Lamina reports to users."""

    exit_code = 1


class UsageError(LaminaError):
    """A bad command-line value or API argument."""

    exit_code = 2


class FrontendError(LaminaError):
    """The input model cannot be loaded, validated or converted."""


class PipelineError(LaminaError):
    """A pipeline string or pass option is malformed or names an unknown pass."""

    exit_code = 2


class PassError(LaminaError):
    """A pass failed; the message names the pass and what ran before it."""


class VerifyError(PassError):
    """A pass changed the numerics beyond its tolerance."""


class BackendError(LaminaError):
    """Lowering, building or running on a backend failed."""


class ArtifactError(LaminaError):
    """An artifact is missing, corrupt, tampered with or incompatible with this host."""

"""Lamina: a graph compiler for Transformer encoders.

The public entry points live in :mod:`compiler.driver.api`; the command line in :mod:`compiler.driver.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

"""Tuning for the TVM backend: robust MetaSchedule (``meta``) and kernel tile search
(``kernel_search``)."""

from __future__ import annotations

from .builder import lamina_f_build, make_builder, make_runner
from .meta import TuneProgress, apply, database_dir, open_database, plan_tasks, target_key, tune

__all__ = [
    "TuneProgress",
    "apply",
    "database_dir",
    "lamina_f_build",
    "make_builder",
    "make_runner",
    "open_database",
    "plan_tasks",
    "target_key",
    "tune",
]

"""Pass infrastructure: registry, textual pipelines, pass manager and instruments."""

from __future__ import annotations

from lamina.compiler.pipeline.manager import PassManager
from lamina.compiler.pipeline.registry import (
    NoOptions,
    Pass,
    PassContext,
    PassResult,
    get_pass,
    option,
    register,
    register_pipeline,
    registered_passes,
    registered_pipelines,
)
from lamina.compiler.pipeline.textual import format_pipeline, parse_pipeline

__all__ = [
    "NoOptions",
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "format_pipeline",
    "get_pass",
    "option",
    "parse_pipeline",
    "register",
    "register_pipeline",
    "registered_passes",
    "registered_pipelines",
]

"""Pass infrastructure: registry, textual pipelines, pass manager and instruments."""

from __future__ import annotations

from lamina.compiler.pipeline.manager import PassManager
from lamina.compiler.pipeline.registry import (
    NoOptions,
    Pass,
    PassContext,
    PassResult,
    Property,
    check_contracts,
    get_pass,
    option,
    register,
    register_pipeline,
    register_property,
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
    "Property",
    "check_contracts",
    "format_pipeline",
    "get_pass",
    "option",
    "parse_pipeline",
    "register",
    "register_pipeline",
    "register_property",
    "registered_passes",
    "registered_pipelines",
]

"""Lamina: a graph compiler for Transformer encoders (ONNX in, tuned TVM CPU artifacts out).

The public API::

    import lamina

    lamina.compile("minilm.onnx", "minilm.lamina", buckets=[(1, 128)])
    model = lamina.load("minilm.lamina")            # a compiled artifact
    outputs = model.run({"input_ids": ids, "attention_mask": mask})

    graph = lamina.load_model("minilm.onnx")        # the IR, for passes
    graph = lamina.optimize(graph, "O1")
    lamina.save_model(graph, "minilm.opt.onnx")

    @lamina.register("count-matmuls")
    class CountMatMulsPass(lamina.Pass): ...

Packages: ``lamina.compiler`` (IR, frontend, pass pipeline, driver/CLI), ``lamina.passes`` (built-in
passes), ``lamina.backends`` (the ONNX Runtime oracle and the TVM backend), ``lamina.zoo`` (the
model zoo the tests, examples and benchmarks export from). Names are resolved lazily, so ``import
lamina`` imports neither TVM nor ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lamina._version import __version__ as __version__

if TYPE_CHECKING:  # pragma: no cover
    from lamina.backends.tvm.runtime import CompiledModel, load
    from lamina.compiler.driver.api import compile, optimize
    from lamina.compiler.driver.api import load as load_model
    from lamina.compiler.driver.api import save as save_model
    from lamina.compiler.errors import LaminaError
    from lamina.compiler.pipeline import Pass, PassContext, PassResult, register

_LAZY: dict[str, tuple[str, str]] = {
    "compile": ("lamina.compiler.driver.api", "compile"),
    "optimize": ("lamina.compiler.driver.api", "optimize"),
    "load_model": ("lamina.compiler.driver.api", "load"),
    "save_model": ("lamina.compiler.driver.api", "save"),
    "load": ("lamina.backends.tvm.runtime", "load"),
    "CompiledModel": ("lamina.backends.tvm.runtime", "CompiledModel"),
    "Pass": ("lamina.compiler.pipeline", "Pass"),
    "PassContext": ("lamina.compiler.pipeline", "PassContext"),
    "PassResult": ("lamina.compiler.pipeline", "PassResult"),
    "register": ("lamina.compiler.pipeline", "register"),
    "LaminaError": ("lamina.compiler.errors", "LaminaError"),
}

__all__ = [  # the names of _LAZY, spelled out so that tools see them
    "CompiledModel", "LaminaError", "Pass", "PassContext", "PassResult", "compile", "load",
    "load_model", "optimize", "register", "save_model",
]
assert sorted(__all__) == sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

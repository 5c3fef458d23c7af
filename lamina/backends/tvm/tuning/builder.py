"""A MetaSchedule builder that does not time out on its first import.

The stock ``LocalBuilder`` runs ``default_build`` in fresh worker processes for every batch, and
``default_build`` imports ``tvm.s_tir.tensor_intrin`` (40 s, mostly CUDA intrinsics) against a 30 s
time-out: every build times out and tuning silently records nothing (TVM_NOTES.md). Our
``f_build`` skips that import; when a schedule needs the x86 intrinsics (tensorize, int8) it loads
only ``tensor_intrin/x86.py`` by file path (0.4 s).

The worker unpickles ``f_build`` with cloudpickle; this module is registered to pickle *by value*
so the worker does not need ``backends`` on its ``sys.path``.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
from tvm.s_tir import meta_schedule as ms

DEFAULT_BUILD_TIMEOUT_S = 60.0
DEFAULT_RUN_TIMEOUT_S = 30.0


def lamina_f_build(mod: Any, target: Any, _params: Any) -> Any:
    """``f_build`` for ``LocalBuilder``: like MetaSchedule's default, minus the 40 s import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if "tensorize" in mod.script(show_meta=False):  # only tensorized schedules need intrinsics
        _load_x86_intrinsics()
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _load_x86_intrinsics() -> None:
    """Register ``tvm.s_tir.tensor_intrin.x86`` without importing the whole package."""
    import importlib.util
    import os

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin.x86"
    if name in sys.modules:
        return
    path = os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin", "x86.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    # The file does `from .. import TensorIntrin`: give it its package without running the
    # package's __init__ (which pulls in CUDA).
    module.__package__ = "tvm.s_tir.tensor_intrin"
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        import types

        pkg = types.ModuleType("tvm.s_tir.tensor_intrin")
        pkg.__path__ = [os.path.dirname(path)]  # type: ignore[attr-defined]
        sys.modules["tvm.s_tir.tensor_intrin"] = pkg
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise


cloudpickle.register_pickle_by_value(sys.modules[__name__])


def make_builder(timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
                 max_workers: int | None = None) -> ms.builder.LocalBuilder:
    """``LocalBuilder`` with :func:`lamina_f_build` and a time-out fit for a loaded 2-core box."""
    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_s,
                                   f_build=lamina_f_build)


def make_runner(timeout_s: float = DEFAULT_RUN_TIMEOUT_S, number: int = 3, repeat: int = 1,
                min_repeat_ms: int = 40) -> ms.runner.LocalRunner:
    """``LocalRunner`` with a bounded time-out and enough repeats to damp a noisy shared box."""
    cfg = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                    enable_cpu_cache_flush=False)
    return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=cfg)

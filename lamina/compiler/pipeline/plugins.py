"""Loading out-of-tree passes: ``--load-passes module.path`` and the ``lamina.passes`` entry point
group."""

from __future__ import annotations

import importlib.util
import logging
import sys
from importlib import metadata
from pathlib import Path

from lamina.compiler.errors import PipelineError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lamina.passes"
# Modules loaded from a ``.py`` file get a name under this prefix; it cannot be imported again, so a
# reproducer names such a module by its file (see :func:`load_passes_argument`).
USER_MODULE_PREFIX = "lamina_user_passes."


def load_module(path: str) -> None:
    """Import ``path`` (a module name, or a ``.py`` file) so its ``@register`` passes join the
    registry."""
    try:
        if path.endswith(".py"):
            file = Path(path)
            if not file.exists():
                raise PipelineError(f"--load-passes {path}: no such file")
            spec = importlib.util.spec_from_file_location(USER_MODULE_PREFIX + file.stem, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(spec.name, None)
                raise
        else:
            importlib.import_module(path)
    except PipelineError:
        raise
    except ModuleNotFoundError as exc:
        raise PipelineError(
            f"--load-passes {path}: cannot import it ({exc}); check PYTHONPATH or install the "
            "package"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a user module may raise anything
        raise PipelineError(
            f"--load-passes {path}: importing it failed: {type(exc).__name__}: {exc}"
        ) from exc


def load_passes_argument(module: str) -> str | None:
    """What ``--load-passes`` needs to register the passes of ``module`` again in a fresh process:
    None for built-in passes, the module name when it can be imported, else the module's file (a
    ``.py`` loaded by path, or a script run directly as ``__main__``)."""
    if module.startswith("lamina.passes.") or module == "lamina.passes":
        return None
    file = getattr(sys.modules.get(module), "__file__", None)
    if module != "__main__" and not module.startswith(USER_MODULE_PREFIX):
        try:
            if importlib.util.find_spec(module) is not None:
                return module
        except (ImportError, ValueError):
            pass
    return str(Path(file).resolve()) if file else module


def load_entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            log.warning("lamina.passes entry point %s failed to load: %s", ep.name, exc)

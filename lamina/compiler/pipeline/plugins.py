"""Loading out-of-tree passes: ``--load-passes module.path`` and the ``lamina.passes`` entry point group."""

from __future__ import annotations

import logging
from importlib import metadata

from lamina.compiler.errors import PipelineError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lamina.passes"


def load_module(path: str) -> None:
    """Import ``path`` (a module name, or a ``.py`` file) so its ``@register`` passes join the registry."""
    try:
        if path.endswith(".py"):
            import importlib.util
            import pathlib

            file = pathlib.Path(path)
            if not file.exists():
                raise PipelineError(f"--load-passes {path}: no such file")
            spec = importlib.util.spec_from_file_location(f"lamina_user_passes.{file.stem}", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(path)
    except PipelineError:
        raise
    except ModuleNotFoundError as exc:
        raise PipelineError(
            f"--load-passes {path}: cannot import it ({exc}); check PYTHONPATH or install the package"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a user module may raise anything
        raise PipelineError(f"--load-passes {path}: importing it failed: {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            log.warning("lamina.passes entry point %s failed to load: %s", ep.name, exc)

"""The import graph of the installed ``lamina`` package runs one way.

The core (``lamina.compiler.errors``, ``ir``, ``frontend``, ``pipeline``) is the ground floor;
passes and backends stand on it; the driver (API, CLI) is on top. Every import counts, including the
ones inside functions (a lazy import is still a dependency), so the graph is read from the source
with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lamina

CORE = {"lamina.compiler.errors", "lamina.compiler.ir", "lamina.compiler.frontend",
        "lamina.compiler.pipeline", "lamina._version"}
ABOVE_CORE = ("lamina.passes", "lamina.backends", "lamina.compiler.driver")


def _modules() -> dict[str, Path]:
    root = Path(lamina.__file__).parent
    mods = {}
    for file in sorted(root.rglob("*.py")):
        parts = list(file.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = file
    return mods


def _imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The lamina modules ``name`` imports (``from a import b`` counts ``a.b`` when that is a
    module)."""
    package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def _component(module: str) -> str:
    """Layers are judged per component: compiler.<part>, backends.<backend>, passes, and the
    rest."""
    parts = module.split(".")
    if parts[:2] in (["lamina", "compiler"], ["lamina", "backends"]) and len(parts) > 2:
        return ".".join(parts[:3])
    if parts[:2] == ["lamina", "passes"]:
        return "lamina.passes"
    return ".".join(parts[:2])


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, file in mods.items():
        src = _component(name)
        for target in _imports(name, file, set(mods)):
            dst = _component(target)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read():
    graph = _graph()
    assert "lamina.compiler.pipeline" in graph.get("lamina.passes", set())
    assert "lamina.passes" in graph.get("lamina.compiler.driver", set())


def test_no_cycle_between_components():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_imports_nothing_above_it():
    bad = sorted((src, dst) for src, dsts in _graph().items() if src in CORE
                 for dst in dsts if dst.startswith(ABOVE_CORE) or dst == "lamina")
    assert not bad, f"the core imports upward: {bad}"

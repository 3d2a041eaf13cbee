"""Rules of the code's shape: no import circles, no asserts in the HA layer."""

from __future__ import annotations

import ast
from pathlib import Path

from custom_components.llm_router.const import DOMAIN

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "custom_components" / DOMAIN
PACKAGE = f"custom_components.{DOMAIN}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules a module imports, type-checking imports included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, known) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each module that is on one."""
    found: list[list[str]] = []
    for start in graph:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in sorted(graph[node]):
                if target == start:
                    found.append(path)
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return found


def test_import_graph_is_read() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.engine.router" in graph[f"{PACKAGE}.chat"]
    assert f"{PACKAGE}.engine.breaker" in graph[f"{PACKAGE}.engine.state"]


def test_no_import_circles() -> None:
    """Circles, even through type-checking imports, mean tangled layers."""
    assert cycles(import_graph()) == []


def test_no_asserts_in_the_home_assistant_layer() -> None:
    """Asserts vanish under python -O; reachable checks must raise."""
    found = [
        f"{path.name}:{node.lineno}"
        for path in sorted(PACKAGE_DIR.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert found == []

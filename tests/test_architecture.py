"""The shape of the code base, checked: dependencies point inward (docs: README "How it is built"), and
no two modules import each other, however indirectly, not even for type checking only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utuvox", "console", "bots")

# What each layer may import of UtuVox (besides itself). Everything not listed is outside the core and
# may use any of it.
ALLOWED = {
    "utuvox.protocol": set(),
    "utuvox.store": {"utuvox.protocol"},
    "utuvox.chat": {"utuvox.protocol", "utuvox.store"},
    "utuvox.cluster": {"utuvox.protocol", "utuvox.store", "utuvox.chat"},
    "utuvox.server": {"utuvox.protocol", "utuvox.store", "utuvox.chat", "utuvox.cluster", "utuvox.web"},
    "utuvox.client": {"utuvox.protocol"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The UtuVox modules ``name`` imports, anywhere in it (inside functions and TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from x import y`` imports module x.y if there is one, else takes name y from module x.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            # The longest known module the target names (``import a.b.c`` names module a.b.c, or a.b).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path, modules()) for name, path in modules().items()}


def layer_of(name: str) -> str | None:
    return next((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), None)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_lies_below_it(layer: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if layer_of(name) == layer
        for target in targets
        if layer_of(target) not in (layer, *ALLOWED[layer]) and target.split(".")[0] == "utuvox"
    )
    assert wrong == []


def test_no_module_imports_itself_through_others() -> None:
    """Tarjan's strongly connected components of the import graph: each must be one module alone.
    (A package's ``__init__`` re-exporting its modules is left out: importing a package's module runs the
    package first in any case, so that is no cycle a reader has to untangle.)"""
    graph = GRAPH
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []

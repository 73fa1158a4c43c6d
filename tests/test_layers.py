"""The import graph of src/ddim, read with ast (every import statement, also those inside functions): no
cycles, and no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ddim"

# Lower number = lower layer; a module may import its own layer and those below. The first matching prefix wins.
LAYERS: tuple[tuple[str, int], ...] = (
    ("ddim.errors", 0),
    ("ddim.io", 0),
    ("ddim.images", 0),
    ("ddim.settings", 0),
    ("ddim.command_line", 0),
    ("ddim.cpu_threads", 0),  # no ddim imports, torch only lazily: entry points call it before torch loads
    ("ddim.diffusion", 1),
    ("ddim.nets", 2),
    ("ddim.samplers", 2),
    ("ddim.checkpoints", 3),
    ("ddim.data", 3),
    ("ddim.metrics", 3),
    ("ddim.hydra_utils", 3),
    ("ddim.training", 4),
    ("ddim.evaluation", 4),
    ("ddim.export", 4),  # the export entry point, over ddim.checkpoints
    ("ddim", 0),  # the package's own __init__
)
# Same layer, but one may not import the other.
FORBIDDEN = (("ddim.evaluation", "ddim.training.train"),)


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The ddim modules a file imports (relative imports resolved; `from a import b` counts a.b if it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES}
    return {m for m in found if m == "ddim" or m.startswith("ddim.")}


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_the_graph_was_read():
    assert {"ddim.io", "ddim.checkpoints.files", "ddim.nets.unet", "ddim.training.train"} <= set(GRAPH)
    assert "ddim.nets.convert" in GRAPH["ddim.checkpoints.files"]


def test_no_upward_imports():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("importer, imported", FORBIDDEN)
def test_forbidden_edges(importer, imported):
    edges = [
        (a, b)
        for a, targets in GRAPH.items()
        for b in targets
        if a.startswith(importer) and b.startswith(imported)
    ]
    assert not edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles found by depth-first search (each reported once, from where it was entered)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_violations():
    """The checks themselves: an upward edge and a cycle planted in a copy of the graph are found."""
    assert layer("ddim.nets.unet") < layer("ddim.checkpoints.files") < layer("ddim.training.train")
    planted = {**GRAPH, "ddim.nets.unet": {"ddim.checkpoints"}}
    assert any(layer(b) > layer(a) for a, ts in planted.items() for b in ts)
    assert find_cycles({**GRAPH, "ddim.nets.unet": {"ddim.checkpoints.files"}})  # files imports nets.unet
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]

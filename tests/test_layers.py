"""The package's layers, read from its imports: no cycle, no upward import, no oversized module or function.

Every ``import`` and ``from ... import`` of every module counts, also those inside functions (they
hide cycles from Python but not from a reader). The layers, bottom up:

    ground    aggscope (the lazy root), errors, fmt
    core      one step in memory -> numbers (no files, no threads, no pyarrow)
    io        files <-> batches
    presets   a trainer's config file -> layout, mode, horizon (with provenance)
    analysis  per-step work over a run and its merging       samples   the bundled samples
    present   pictures and documents of the results          trainer   what runs inside a trainer
    cli       the command line, on top

A module may import its own layer and the layers below it (``ALLOWED``), nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aggscope"

ALLOWED = {
    "ground": set(),
    "core": {"ground"},
    "io": {"ground", "core"},
    "presets": {"ground", "core", "io"},
    "samples": {"ground", "core", "io"},
    "analysis": {"ground", "core", "io", "presets"},
    "trainer": {"ground", "core", "io"},
    "present": {"ground", "core", "io", "presets", "analysis"},
    "cli": {"ground", "core", "io", "presets", "analysis", "present", "samples", "trainer"},
}
GROUND = {"aggscope", "aggscope.errors", "aggscope.fmt"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# core may not read files or start threads: these imports would say it does
CORE_FORBIDDEN = ("pyarrow", "threading", "concurrent", "os", "glob", "pathlib")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module == "aggscope.__main__":  # ``python -m aggscope`` is the command line
        return "cli"
    second = module.split(".")[1]
    if second == "sample_data":
        return "io"
    assert second in ALLOWED, f"{module}: not in a layer (add its folder to ALLOWED in this test)"
    return second


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module this file imports, absolute, with the line of the import."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # ``from aggscope.io import parquet`` imports the module aggscope.io.parquet
            for alias in node.names:
                if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists():
                    found.append((f"{target}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    module: sorted({target for target, _ in imports_of(path) if target in MODULES and target != module})
    for module, path in MODULES.items()
}


def test_no_upward_import() -> None:
    upward = []
    for module, path in MODULES.items():
        for target, line in imports_of(path):
            if target in MODULES and layer_of(target) not in ALLOWED[layer_of(module)] | {layer_of(module)}:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {layer_of(module)} imports {target}")
    assert not upward, "\n".join(upward)


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle() -> None:
    assert not find_cycles(GRAPH), f"import cycles: {find_cycles(GRAPH)}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_function_level_imports_count() -> None:
    """``InputSpec.open`` imports the reader inside the method: that import is in the graph."""
    assert "aggscope.io.open" in GRAPH["aggscope.cli.options"]


def test_core_reads_no_files_and_starts_no_threads() -> None:
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
        for module, path in MODULES.items()
        if layer_of(module) == "core"
        for target, line in imports_of(path)
        if target.split(".")[0] in CORE_FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def test_sizes() -> None:
    too_big = []
    for path in MODULES.values():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name} has {length} lines")
    assert not too_big, "\n".join(too_big)

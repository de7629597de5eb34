"""The package's shape: layers import downwards only, no import circles, no reaching into
another module's private names, small modules and functions (docs/development.md).

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import
hides a dependency from Python's import order, not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "denoiserep"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

#: Lowest first; a module may import its own layer or a lower one. The root package
#: (``denoiserep/__init__.py``) is the method's facade and sits with ``core``.
LAYERS: list[set[str]] = [
    {"util"},
    {"core", ""},
    {"data"},
    {"models"},
    {"robustness"},
    {"engine"},
    {"tasks"},
    {"classification", "reid", "dense", "bench", "probe", "adaptation"},
    {"cli", "docgen", "__main__"},
]
#: Packages of one layer that must not import each other (no task builds on another).
INDEPENDENT = LAYERS[7]
#: The exceptions: (importer, imported). ``adapt``'s re-ID benchmark adapts ``reid``'s model.
ALLOWED = {("adaptation", "reid")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top(module: str) -> str:
    """``denoiserep.core.layer`` -> ``core``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    name = top(module)
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"{module}: package {name!r} is in no layer of tests/test_layering.py")


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = current.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The module of ours that ``name`` (a module or ``module.attribute``) lies in."""
    while name:
        if name in MODULES:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of ours."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target:
                    out.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:
                target = _known(f"{base}.{alias.name}") or _known(base)
                if target:
                    names = [] if target.endswith(alias.name) else [alias.name]
                    out.append((target, names, node.lineno))
    return out


GRAPH = {m: {t for t, _, _ in imports(m) if t != m} for m in MODULES}


def test_every_package_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_layers_import_downwards_only():
    wrong = [
        f"{MODULES[m].relative_to(SRC)}:{line} imports {t}"
        for m in MODULES
        for t, _, line in imports(m)
        if layer_of(t) > layer_of(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_task_packages_do_not_import_each_other():
    wrong = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if top(m) in INDEPENDENT
        and top(t) in INDEPENDENT
        and top(t) != top(m)
        and (top(m), top(t)) not in ALLOWED
    ]
    assert not wrong, "\n".join(wrong)


def test_core_holds_only_the_method():
    outside = {
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if top(m) == "core"
        for t in targets
        if top(t) not in ("core", "util", "")
    }
    assert not outside, "\n".join(sorted(outside))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), the root package's
    facade left out: it only re-exports ``core``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w == "denoiserep":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_from_other_modules():
    wrong = [
        f"{MODULES[m].relative_to(SRC)}:{line} imports {name} from {t}"
        for m in MODULES
        for t, names, line in imports(m)
        for name in names
        if t != m and name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_function_sizes(module):
    path = MODULES[module]
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(SRC)}: {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(SRC)}: {', '.join(long)}"

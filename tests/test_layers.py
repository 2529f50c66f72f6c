"""The package's import graph keeps docs/ARCHITECTURE.md's picture true: no import cycle (imports at the
top of a file and inside functions alike), no arrow up the layers, and every import inside a function
says why it is there (start-up speed or an optional dependency).

The graph is read from the source (``ast``), so nothing is imported and a loop hidden in a function
counts like any other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "convnets"

# Lowest first: a module may import its own layer or any lower one. The same order as the picture
# in docs/ARCHITECTURE.md; the first matching prefix wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("convnets.base",)),
    ("blocks", ("convnets.blocks",)),
    # A model and its checkpoints are one layer (as in torchvision): create_model(weights=...) hands its
    # builders to the registry-free loaders in weights/, and weights.api (load_run) builds through it.
    ("models, weights", ("convnets.models", "convnets.weights")),
    ("cost", ("convnets.cost",)),
    ("data, accel", ("convnets.data", "convnets.accel")),
    ("trust", ("convnets.trust",)),
    ("train", ("convnets.train",)),
    ("deploy", ("convnets.deploy",)),
    ("apps", ("convnets.serve", "convnets.doctor", "convnets.review", "convnets.report", "convnets.studies")),
    ("cli", ("convnets.cli", "convnets.__main__")),
]
ROOT = "convnets"  # the package itself: its lazy public names point down, and anyone may read __version__

# A function-level import must carry a comment saying which reason holds; one of these words.
REASONS = ("start-up", "optional")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The convnets modules an import statement loads (``from pkg import sub`` loads ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            if MODULES[module].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [_through_lazy_exports(target, a.name) for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith(ROOT) and name != module:
            out.append(name)
    return out


def _lazy_exports(package: str) -> dict[str, str]:
    """A package ``__init__``'s ``_EXPORTS`` table (name -> submodule; see base/lazy.py), else {}."""
    path = MODULES.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _through_lazy_exports(package: str, name: str) -> str:
    """The module ``from package import name`` really loads: a submodule, the submodule a lazy export
    names (so a package's lazy ``__getattr__`` hides no edge), or the package itself."""
    if f"{package}.{name}" in MODULES:
        return f"{package}.{name}"
    submodule = _lazy_exports(package).get(name)
    return f"{package}.{submodule}" if submodule else package


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not _type_checking_only(node, path):
                graph[module].update(_targets(module, node))
    return graph


_TYPE_CHECKING_LINES: dict[Path, set[int]] = {}


def _type_checking_only(node: ast.AST, path: Path) -> bool:
    """Imports under ``if TYPE_CHECKING:`` never run."""
    if path not in _TYPE_CHECKING_LINES:
        lines: set[int] = set()
        for stmt in ast.walk(ast.parse(path.read_text())):
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                for inner in stmt.body:
                    lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
        _TYPE_CHECKING_LINES[path] = lines
    return node.lineno in _TYPE_CHECKING_LINES[path]


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m != ROOT and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer of docs/ARCHITECTURE.md: {unplaced}"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_points_up_the_layers():
    upward = []
    for module, targets in import_graph().items():
        if module == ROOT:
            continue
        for target in targets:
            if target != ROOT and layer_of(target) > layer_of(module):
                where = f"{module} ({LAYERS[layer_of(module)][0]})"
                upward.append(f"{where} -> {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_function_level_imports_say_why():
    """Outside cli/ (whose commands import the library inside run() by design: `convnets --help` builds
    every parser without it), an import inside a function is for start-up speed or an optional
    dependency, and its line (or the line above) says which."""
    silent = []
    for module, path in MODULES.items():
        if module.startswith("convnets.cli"):
            continue
        lines = path.read_text().splitlines()
        for node in _function_imports(ast.parse(path.read_text())):
            said = " ".join(lines[i] for i in range(node.lineno - 2, (node.end_lineno or node.lineno)))
            if not any(reason in said for reason in REASONS):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                silent.append(f"{where}: {lines[node.lineno - 1].strip()}")
    assert not silent, f"{len(silent)} function-level imports without a reason:\n" + "\n".join(silent)


@pytest.mark.parametrize(
    "source, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}}, []),
    ],
)
def test_cycle_finder_finds_a_loop(source, expected, monkeypatch):
    monkeypatch.setattr(f"{__name__}.MODULES", {"a": None, "b": None, "c": None})
    assert cycles(source) == expected


def test_old_module_paths_still_import_with_a_warning():
    """Scripts written against the flat layout (``from convnets.evaluate import evaluate``) keep working."""
    import importlib
    import sys
    import warnings

    from convnets.base.moved import MOVED_MODULES

    missing = [new for new in MOVED_MODULES.values() if new not in MODULES]
    assert not missing, f"aliases pointing at no module: {missing}"
    sys.modules.pop("convnets.predictions", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("convnets.predictions")
    assert old is importlib.import_module("convnets.base.predictions")
    assert any("convnets.base.predictions" in str(w.message) for w in caught)

"""The package layout is a rule, not a habit: the runtime (venues, book, bus, pricing, sinks,
ops, engine, config, replay and the shared bases) never imports the command-line front ends
(`mmengine.cli`) or the local development servers (`mmengine.dev`); the data path never
imports what operates it (`mmengine.ops`, `mmengine.engine`). Read from the source (every
import statement, also those inside functions) and checked once more by importing the
engine in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mmengine

PACKAGE = Path(mmengine.__file__).parent

# Imports a module may make only for type checking (inside `if TYPE_CHECKING:`), each with
# why: they are never executed, so the running engine does not load the target.
TYPE_ONLY_ALLOWED = {
    # The registry names each venue's simulator (as "module:Class", imported on demand by
    # the conformance suite and `mmengine simulate`) and types what it returns.
    ("mmengine.venues.registry", "mmengine.dev.simulator.server"),
}

FRONT = ("mmengine.cli", "mmengine.dev")
DATA_PATH = (
    "mmengine.venues",
    "mmengine.book",
    "mmengine.bus",
    "mmengine.pricing",
    "mmengine.sinks",
)
OPERATORS = ("mmengine.ops", "mmengine.engine", "mmengine.replay")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, only under TYPE_CHECKING) for every import in the tree."""
    found: list[tuple[str, bool]] = []

    def walk(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, type_only) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, type_only))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    walk(ast.Module(body=[sub], type_ignores=[]), True)
                for sub in child.orelse:
                    walk(ast.Module(body=[sub], type_ignores=[]), type_only)
            else:
                walk(child, type_only)

    walk(tree, False)
    return found


def _edges() -> list[tuple[str, str, bool]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target, type_only in _imports(ast.parse(path.read_text(), str(path))):
            if target.startswith("mmengine"):
                edges.append((source, target, type_only))
    return edges


def test_the_walk_sees_imports_inside_functions_and_type_checking_blocks() -> None:
    # The rule below is only as good as the walk: it must see a lazy import in a function
    # (how the CLI loads its commands) and tell a TYPE_CHECKING import apart.
    edges = _edges()
    assert ("mmengine.cli.app", "mmengine.cli.demo", False) in edges  # inside `demo()`
    assert ("mmengine.venues.registry", "mmengine.dev.simulator.server", True) in edges
    assert ("mmengine.engine", "mmengine.ops.supervisor", False) in edges


def test_the_runtime_never_imports_front_ends_or_dev_servers() -> None:
    wrong = [
        f"{source} imports {target}" + (" (TYPE_CHECKING)" if type_only else "")
        for source, target, type_only in _edges()
        if not _within(source, FRONT)
        and _within(target, FRONT)
        and not (type_only and (source, target) in TYPE_ONLY_ALLOWED)
    ]
    assert wrong == []


def test_dev_servers_never_import_front_ends() -> None:
    wrong = [
        f"{source} imports {target}"
        for source, target, _ in _edges()
        if _within(source, ("mmengine.dev",)) and _within(target, ("mmengine.cli",))
    ]
    assert wrong == []


def test_the_data_path_never_imports_what_operates_it() -> None:
    wrong = [
        f"{source} imports {target}"
        for source, target, type_only in _edges()
        if _within(source, DATA_PATH) and _within(target, OPERATORS) and not type_only
    ]
    assert wrong == []


def test_importing_the_engine_loads_no_front_end_or_dev_server() -> None:
    code = (
        "import sys, mmengine.engine, mmengine.config, mmengine.replay;"
        "print(sorted(m for m in sys.modules if m.startswith(('mmengine.cli', 'mmengine.dev'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"

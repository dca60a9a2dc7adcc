"""The compiled core's type stub (`mmengine/book/_core.pyi`) is what mypy checks callers
against, so it must name what the extension defines, no more and no less, with the
reference's parameters (the reference is what the compiled core is tested equal to)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from mmengine.book import book, levels

_core = pytest.importorskip("mmengine.book._core", reason="the compiled core is not built")

STUB = Path(book.__file__).with_name("_core.pyi")
REFERENCE = {"L2Book": book.L2Book, "BookSide": book.BookSide, "LevelDecoder": levels.LevelDecoder}


def _stub_classes() -> dict[str, dict[str, ast.FunctionDef | None]]:
    """class -> public member -> its stub def (None for a plain attribute)."""
    out: dict[str, dict[str, ast.FunctionDef | None]] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            members: dict[str, ast.FunctionDef | None] = {}
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members[item.name] = item
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = None
            out[node.name] = members
    return out


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def test_the_stub_names_every_class_and_member_of_the_extension() -> None:
    stub = _stub_classes()
    compiled = {
        name
        for name, value in vars(_core).items()
        if isinstance(value, type) and value.__module__ == _core.__name__
    }
    assert set(stub) == compiled
    for name, members in stub.items():
        public = {m for m in members if not m.startswith("_")}
        assert public == _public(getattr(_core, name)), name


def test_the_stub_takes_the_reference_parameters() -> None:
    stub = _stub_classes()
    for name, reference in REFERENCE.items():
        for method, node in stub[name].items():
            if node is None or (method.startswith("__") and method != "__init__"):
                continue
            if not inspect.isfunction(getattr(reference, method, None)):
                continue  # a slot or property of the reference: an attribute in the stub
            ref_params = list(inspect.signature(getattr(reference, method)).parameters)
            stub_params = [a.arg for a in node.args.args]
            assert stub_params == ref_params, f"{name}.{method}"

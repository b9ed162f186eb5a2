"""The code's own standards, checked on its source (no imports): every module and every public
class, function and method of the package has a docstring, and every public function's parameters
and return are annotated."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("semid", "quantizers", "generators")  # quantizers, generators: semid.* too
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def package_files() -> list[Path]:
    """The package's source files."""
    return sorted(p for folder in PACKAGE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def public_definitions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Definition]]:
    """(dotted name, node) of each public class, function and method, classes searched inside;
    a name with a leading underscore (and all it holds) is private, functions' own inner
    functions are not looked at."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, Definition) and not node.name.startswith("_"):
            yield prefix + node.name, node
            if isinstance(node, ast.ClassDef):
                yield from public_definitions(node, f"{prefix}{node.name}.")


def unannotated(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """The parameters (and "return") of a function that carry no annotation."""
    a = node.args
    params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
    names = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
    return names + (["return"] if node.returns is None else [])


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_public_code_has_docstrings_and_types(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(ROOT)
    assert ast.get_docstring(tree), f"{where}: no module docstring"
    for name, node in public_definitions(tree):
        assert ast.get_docstring(node), f"{where}:{node.lineno} {name}: no docstring"
        if not isinstance(node, ast.ClassDef):
            missing = unannotated(node)
            assert not missing, f"{where}:{node.lineno} {name}: not annotated: {missing}"


def test_the_check_finds_what_it_looks_for():
    """A missing docstring, parameter or return annotation, and nothing private or inner."""
    tree = ast.parse(
        "class A:\n"
        "    def f(self, x): pass\n"
        "    def _g(self): pass\n"
        "class _B:\n"
        "    def h(self): pass\n"
        "def k(y: int) -> int:\n"
        "    'doc'\n"
        "    def inner(): pass\n"
    )
    found = {name: node for name, node in public_definitions(tree)}
    assert sorted(found) == ["A", "A.f", "k"]
    assert ast.get_docstring(found["A.f"]) is None and ast.get_docstring(found["k"]) == "doc"
    assert unannotated(found["A.f"]) == ["x", "return"] and unannotated(found["k"]) == []

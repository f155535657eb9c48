"""The static gate's fast walk gives the same reports as a plain ``ast.NodeVisitor`` walk would.

The reference below puts back what the gate used before it was sped up (NodeVisitor's dispatch and
``generic_visit``, ``ast.walk`` for the import aliases, ``ast.unparse`` of every assignment target)
and compares reports, including where a too-deep source starts failing closed.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import textwrap

import pytest

from evaluator_worker import static_gate

REPO = pathlib.Path(__file__).resolve().parents[2]


class _Reference(static_gate._Visitor):
    visit = ast.NodeVisitor.visit
    generic_visit = ast.NodeVisitor.generic_visit

    def visit_Assign(self, node):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        self._owners.append(ast.unparse(targets[0]))
        ast.NodeVisitor.generic_visit(self, node)
        self._owners.pop()

    visit_AnnAssign = visit_Assign


def _walk_aliases(tree):
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                aliases[alias.asname or root] = alias.name if alias.asname else root
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _reference(source: str) -> dict:
    saved = static_gate._Visitor, static_gate._import_aliases
    static_gate._Visitor, static_gate._import_aliases = _Reference, _walk_aliases
    try:
        return dataclasses.asdict(static_gate.check_source(source))
    finally:
        static_gate._Visitor, static_gate._import_aliases = saved


def _fast(source: str) -> dict:
    return dataclasses.asdict(static_gate.check_source(source))


def _sources() -> list[str]:
    found = []
    for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "examples").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        found.append(text)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and "\n" in value:
                found.append(textwrap.dedent(value))
    return found


SHAPES = {
    "attribute store": lambda d: "x" + ".a" * d + " = 1\n",
    "subscript store": lambda d: "import os\nos" + "[0]" * d + " = 1\n",
    "binop": lambda d: "y = " + "+".join(["a"] * d) + "\n",
    "unary": lambda d: "y = " + "-" * d + "a\n",
    "lambda": lambda d: "y = " + "lambda a: " * d + "0\n",
    "call chain": lambda d: "y = f" + ".g()" * d + "\n",
    "getattr": lambda d: "import torch\ny = " + "getattr(" * d + "torch" + ", 'cuda')" * d + "\n",
    "strings": lambda d: "y = " + "+".join(["'__globals__'"] * d) + "\n",
}


def test_statements_match_ast_walk():
    kinds = (ast.stmt, ast.excepthandler, ast.match_case)
    extra = (
        "match x:\n case 1:\n  import a\n case _:\n  try:\n   import b\n  except E:\n   import c"
    )
    for source in [*_sources(), extra]:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        walked = [n for n in ast.walk(tree) if isinstance(n, kinds)]
        assert static_gate._statements(tree) == walked


def test_reports_match_reference_on_repo_sources():
    sources = _sources()
    assert len(sources) > 100
    for source in sources:
        assert _fast(source) == _reference(source)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_too_deep_fails_closed_at_the_same_depth(shape):
    make = SHAPES[shape]
    low, high = 1, 190 if shape == "getattr" else 1500
    if "too deeply" not in str(_reference(make(high))):
        pytest.skip("the parser refuses this shape before the walk gets too deep")
    while low < high:  # first depth at which the reference fails closed
        mid = (low + high) // 2
        low, high = (low, mid) if "too deeply" in str(_reference(make(mid))) else (mid + 1, high)
    for depth in range(max(1, low - 2), low + 3):
        assert _fast(make(depth)) == _reference(make(depth)), depth
        # One frame more under both: a walk that spends one frame less shows at one of the two.
        assert _deeper(_fast, make(depth)) == _deeper(_reference, make(depth)), depth


def _deeper(check, source: str) -> dict:
    return check(source)

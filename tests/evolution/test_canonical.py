"""The canonical form of a source (evolution.canonical) and the duplicate key built on it."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from evolution.candidate import CandidateSpec, candidate_key
from evolution.canonical import TEXT_MARK, TREE_MARK, canonical_form, tree_tokens

ROOT = Path(__file__).resolve().parents[2]
KERNEL = (ROOT / "examples" / "softmax" / "triton_softmax.py").read_text()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("x = 1\n", "x=1  # one\n\n\n"),
        ("x = 'a'\n", 'x = "a"\n'),
        ("x = (1 + 2) * 3\n", "x = ((1 + 2)) * (3)\n"),
        ("f(a,\n  b)\n", "f(a, b)\n"),
        ("x = 'ab'\n", "x = 'a' 'b'\n"),
        ('def f():\n    """Doc."""\n    return 1\n', "def f():\n  '''Doc.'''\n  return 1\n"),
        ("if a:\n    pass\n", "if (a):\n\n        pass\n"),
    ],
)
def test_layout_comments_quotes_and_parentheses_leave_the_form_alone(a, b) -> None:
    assert canonical_form(a) == canonical_form(b)
    assert candidate_key(a, {"B": 1}) == candidate_key(b, {"B": 1})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("x = 1\n", "x = 1.0\n"),
        ("x = 1\n", "x = True\n"),
        ("x = 'a'\n", "x = b'a'\n"),
        ("x = None\n", "x = ...\n"),
        ("x = None\n", "x = 'None'\n"),
        ("x = a[1:2]\n", "x = a[1, 2]\n"),
        ("x = a - b\n", "x = a + b\n"),
        ("del x\n", "x\n"),
        ("def f(a=1): pass\n", "def f(a, b=1): pass\n"),
        ("def f(*, a): pass\n", "def f(a): pass\n"),
        ("global a, b\n", "global ab\n"),
        ("x = f'{a}b'\n", "x = f'{a!r}b'\n"),
        ("x = u'a'\n", "x = 'a'\n"),  # the `u` prefix is a field of the tree (Constant.kind)
        (KERNEL, KERNEL.replace("BLOCK", "BLK")),
    ],
)
def test_sources_with_different_trees_have_different_forms(a, b) -> None:
    assert canonical_form(a) != canonical_form(b)
    assert candidate_key(a, {}) != candidate_key(b, {})


def test_the_parameters_are_part_of_the_key() -> None:
    assert candidate_key(KERNEL, {"BLOCK": 1}) != candidate_key(KERNEL, {"BLOCK": 2})
    assert CandidateSpec(KERNEL, {"BLOCK": 1}).key == candidate_key(KERNEL, {"BLOCK": 1})


def test_the_key_of_a_fixed_source_is_pinned() -> None:
    """Every stored candidate is found again by this key: a change of the form (or of the key
    around it) orphans them all, and needs a migration like 0007_canonical_keys."""
    source = "import torch\n\nclass ModelNew(torch.nn.Module):\n    def forward(self, x):\n"
    source += "        return torch.softmax(x, dim=-1)  # rows\n"
    assert candidate_key(source, {"BLOCK": 256, "num_warps": 4}) == (
        "a51cf33d01f620ef66a3ae5f3ca51adc305d7565d8f1c1a97a7aad348cac4464"
    )


def test_a_tree_is_written_as_its_class_and_set_fields_without_positions() -> None:
    assert tree_tokens(ast.parse("x = f(1)\n")) == [
        *("Module(", "body[", "Assign(", "targets[", "Name(", "id=", "'x'", ")", "]"),
        *("value", "Call(", "func", "Name(", "id=", "'f'", ")"),
        *("args[", "Constant(", "value=", "1", ")", "]", ")", ")", "]", ")"),
    ]
    tokens = tree_tokens(ast.parse("f(a, k=None)\n"))
    assert tokens[:3] == ["Module(", "body[", "Expr("]
    assert "id=" in tokens and "'a'" in tokens and "arg=" in tokens
    assert not any("lineno" in t or "col_offset" in t for t in tokens)
    assert "Load(" not in tokens  # contexts follow from a node's place
    # An unset field (Constant's kind, an empty list) is left out.
    assert "kind=" not in tokens and "type_ignores[" not in tokens


def test_source_that_does_not_parse_is_its_own_form_and_no_text_poses_as_a_tree() -> None:
    assert canonical_form("def (:\n") == TEXT_MARK + "def (:\n"
    assert canonical_form("x = 1\n").startswith(TREE_MARK)
    # A text spelling out another source's tree does not parse (it holds NULs): its form is
    # marked as text, so the two never share a key.
    posing = canonical_form("x = 1\n")[len(TREE_MARK) :]
    assert canonical_form(posing) == TEXT_MARK + posing != canonical_form("x = 1\n")


def test_a_tree_too_deep_to_walk_is_keyed_by_its_text() -> None:
    deep = "x = " + " + ".join(["1"] * 3000) + "\n"
    assert canonical_form(deep) == TEXT_MARK + deep
    assert candidate_key(deep, {}) != candidate_key(deep.replace("1 + 1\n", "1 + 2\n"), {})


def _unparsed(source: str) -> str:
    return ast.unparse(ast.parse(source))


def _kernel_sources() -> list[str]:
    files = [*(ROOT / "examples").rglob("*.py"), *(ROOT / "evolution" / "templates").rglob("*.py")]
    return [p.read_text() for p in sorted(files)]


def test_the_form_tells_apart_what_the_unparsed_form_did() -> None:
    """Migration 0007 relies on it: no two stored candidates come to share a key. Every kernel
    shipped, and a reformatted copy of each, split into the same classes under both forms."""
    sources = _kernel_sources()
    assert len(sources) > 10
    variants = [*sources, *(_unparsed(s) for s in sources), *(s + "\n# note\n" for s in sources)]
    old = {}
    new = {}
    for source in variants:
        old.setdefault(hashlib.sha256(_unparsed(source).encode()).hexdigest(), set()).add(source)
        new.setdefault(canonical_form(source), set()).add(source)
    assert sorted(map(sorted, old.values())) == sorted(map(sorted, new.values()))

"""The shape of the tree as docs/architecture.md states it: rooms, maps, imports that point down.

These are the rules a newcomer relies on when reading the code (and that a refactor can break
without any behaviour test noticing): every package's ``__init__.py`` docstring is its map and
names each of its modules; no module is too long to read in one sitting; the evaluator imports
nothing of the packages above it, the archive nothing of the service (it may implement the
search core's ports), the search core no web, queue or SQL code; ``services/`` keeps its top
level to a few modules beside its rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "evolution", "evaluator_worker", "archive")
MAX_LINES = 500

#: What each package may not import (top-level module names).
FORBIDDEN = {
    "evaluator_worker": {"services", "archive", "evolution"},
    # The archive may implement the search core's ports (RunStore is an evolution.ports.Store).
    "archive": {"services"},
    "evolution": {
        "services",
        "archive",
        "fastapi",
        "starlette",
        "celery",
        "kombu",
        "redis",
        "sqlalchemy",
        "alembic",
        "httpx",
        "psycopg",
    },
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_one_sitting(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    upward = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in _modules(package)
        if _imports(p) & FORBIDDEN[package]
    }
    assert not upward, f"{package} imports what it may not: {upward}"


def _packages() -> list[Path]:
    return sorted(
        init.parent for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")
    )


@pytest.mark.parametrize("package", _packages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_docstring_is_its_map(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    assert doc, f"{package.relative_to(ROOT)}/__init__.py has no docstring"
    rooms = [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    rooms += [p.name for p in package.iterdir() if (p / "__init__.py").exists()]
    missing = sorted(name for name in rooms if name not in doc)
    assert not missing, f"{package.relative_to(ROOT)}'s map does not mention {missing}"


def test_services_top_level_is_a_handful_of_modules():
    top = sorted(p.name for p in (ROOT / "services").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 4, f"services/ holds {top} beside its subpackages"


def test_the_one_base_error_is_a_leaf():
    """Every package may import kernelmap_errors, so it may import nothing of kernelmap."""
    own = {*PACKAGES, "migrations", "kernelmap_errors"}
    assert not _imports(ROOT / "kernelmap_errors.py") & own

"""Seed candidates of a run: checked before anything starts, so a bad seed is refused early."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

from evaluator_worker import parsing, static_gate
from kernelmap_errors import KernelmapError

#: The label of the seed that is the task's own reference, unchanged.
REFERENCE_LABEL = "reference"


@dataclasses.dataclass(frozen=True)
class Seed:
    """A seed candidate: its label (file name), source and declared ``SEARCH_SPACE``."""

    label: str
    source: str
    space: dict[str, list[Any]] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored in the run's configuration (a resumed run rebuilds its emitters)."""
        return {"label": self.label, "source": self.source, "space": self.space}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seed:
        """Inverse of :meth:`to_dict`."""
        return cls(d["label"], d["source"], d.get("space"))


class SeedError(KernelmapError):
    """A seed candidate cannot be used."""


def check_seed(label: str, source: str) -> Seed:
    """Validate a seed: it parses, passes the static gate, defines ``ModelNew`` and, if it has
    one, a ``SEARCH_SPACE`` of non-empty lists."""
    gate = static_gate.check_source(source, label)
    if gate.syntax_error:
        raise SeedError(f"seed candidate {label}: {gate.syntax_error}")
    if not gate.ok:
        raise SeedError(
            f"seed candidate {label} is rejected by the static gate: " + "; ".join(gate.reasons)
        )
    tree = parsing.parse(source)
    if not any(isinstance(n, ast.ClassDef) and n.name == "ModelNew" for n in tree.body):
        raise SeedError(f"seed candidate {label} defines no class ModelNew")
    space = gate.search_space
    if space is not None:
        bad = [k for k, v in space.items() if not isinstance(v, (list, tuple)) or not v]
        if bad or not space:
            raise SeedError(
                f"seed candidate {label}: SEARCH_SPACE entries must be non-empty lists"
                f" of choices (bad: {bad or 'empty dict'})"
            )
        space = {k: list(v) for k, v in space.items()}
    return Seed(label, source, space)


def load_seed(path: Path) -> Seed:
    """Read and validate a seed file."""
    if not path.is_file():
        raise SeedError(f"seed candidate not found: {path}")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SeedError(f"cannot read seed candidate {path}: {e}") from None
    return check_seed(path.name, source)


def reference_seed(task_source: str) -> Seed | None:
    """The reference submitted as a candidate (``Model`` renamed ``ModelNew``): the baseline
    every run measures first. None when the gate would refuse the reference's own code."""
    source = re.sub(r"\bModel\b", "ModelNew", task_source)
    try:
        return check_seed(REFERENCE_LABEL, source)
    except SeedError:
        return None


def bake_params(source: str, params: dict[str, Any]) -> str:
    """A standalone candidate with ``params`` fixed: ``SEARCH_SPACE`` narrowed to the chosen
    values and the values assigned at the top, so ``kernelmap eval`` runs exactly this one."""
    if not params:
        return source
    tree = parsing.parse(source)
    lines = source.splitlines(keepends=True)
    insert_at = 0
    for i, node in enumerate(tree.body):  # after the docstring and any __future__ import
        is_doc = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if is_doc or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            insert_at = node.end_lineno or 0
            continue
        break
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "SEARCH_SPACE" for t in targets):
            narrowed = "SEARCH_SPACE = " + repr({k: [v] for k, v in params.items()}) + "\n"
            lines[node.lineno - 1 : node.end_lineno] = [narrowed]
            break
    header = "# Parameters chosen by kernelmap (baked in by `kernelmap export`).\n"
    header += "".join(f"{k} = {v!r}\n" for k, v in params.items())
    return "".join(lines[:insert_at]) + header + "".join(lines[insert_at:])

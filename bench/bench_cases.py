"""The evaluator bench's cases: which candidate runs against which task, and what verdict counts.

The cases come from the bench tasks (``bench/tasks/``: the reference submitted as a candidate and
the Triton candidate of :mod:`bench_candidates`) and from the adversarial corpus
(``tests/corpus/manifest.py``). :func:`all_cases` is the full list in run order; :func:`select`
narrows it to the ``--only`` patterns.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from bench_candidates import TRITON_SOURCES

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "bench" / "tasks"
MANIFEST = ROOT / "tests" / "corpus" / "manifest.py"
OK = frozenset({"OK"})
BIG_TASKS = ("softmax", "relu", "layernorm")
FOLLOW_UP = "softmax_triton"  # the corpus control run after a case that kills its process


@dataclasses.dataclass
class Case:
    """One candidate against one task, and the verdicts that count as the evaluator holding.

    ``kind`` is ``"reference"`` (the task's reference as a candidate), ``"control"`` (another
    honest candidate) or ``"adversarial"``. The candidate is ``candidate`` (an existing file)
    or ``source`` (text the bench writes to its temporary directory).
    """

    name: str
    task: Path
    expected: frozenset[str]
    kind: str
    candidate: Path | None = None
    source: str | None = None
    gate: bool = True
    timeout_s: float | None = None
    gpu_only: bool = False
    big: bool = False
    max_speedup: float | None = None


def reference_source(task: Path) -> str:
    """The task's source turned into a candidate: ``Model`` renamed ``ModelNew``."""
    return re.sub(r"\bModel\b", "ModelNew", task.read_text(encoding="utf-8"))


def load_manifest() -> Any:
    """``tests/corpus/manifest.py``, imported by path (``tests/corpus`` is not a package)."""
    spec = importlib.util.spec_from_file_location("kernelmap_bench_corpus_manifest", MANIFEST)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {MANIFEST}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def bench_cases(names: tuple[str, ...]) -> list[Case]:
    """Reference-as-candidate and Triton candidates for the bench tasks ``names``."""
    out = []
    for name in names:
        task = TASKS_DIR / f"{name}.py"
        big = name in BIG_TASKS
        out.append(
            Case(f"{name}/reference", task, OK, "reference", source=reference_source(task), big=big)
        )
        out.append(
            Case(f"{name}/triton", task, OK, "control", source=TRITON_SOURCES[name], big=big)
        )
    return out


def corpus_cases() -> list[Case]:
    """Every corpus case with a candidate file or built from the reference (no templates).

    A case the manifest marks ``dedicated`` (it kills its process: an infinite loop, an illegal
    address) is followed by ``<name>+next``: the corpus's Triton softmax control on the same
    evaluator, which must still be OK.
    """
    manifest = load_manifest()
    good = manifest.BY_NAME[FOLLOW_UP]
    out = []
    for c in manifest.CASES:
        if c.template is not None:
            continue
        if c.candidate_path is None and not c.from_reference:
            continue
        kind = "reference" if c.from_reference else "control" if c.expected == OK else "adversarial"
        case = Case(
            f"corpus/{c.name}",
            c.task_path,
            frozenset(c.expected),
            kind,
            candidate=c.candidate_path,
            source=reference_source(c.task_path) if c.from_reference else None,
            gate=c.gate,
            timeout_s=c.timeout_s,
            gpu_only=c.gpu,
            max_speedup=c.max_speedup,
        )
        out.append(case)
        if c.dedicated:
            out.append(
                dataclasses.replace(
                    case,
                    name=f"{case.name}+next",
                    task=good.task_path,
                    expected=OK,
                    kind="control",
                    candidate=good.candidate_path,
                    source=None,
                    max_speedup=None,
                )
            )
    return out


def all_cases() -> list[Case]:
    """Every case, in run order: the quick softmax, the corpus, then the big tasks."""
    return bench_cases(("softmax_small",)) + corpus_cases() + bench_cases(BIG_TASKS)


def select(cases: list[Case], only: str | None) -> list[Case]:
    """The cases named by ``--only`` (names or shell patterns, comma-separated)."""
    if not only:
        return cases
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
    if unknown:
        raise ValueError(f"--only: no case matches {unknown}; see --list")
    return [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]

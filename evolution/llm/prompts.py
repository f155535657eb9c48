"""Chat prompts for the LLM operators: ``mutate``, ``crossover``, ``repair``, ``target``.

Everything a prompt says comes from its arguments (plain dataclasses: :class:`PromptContext`,
:class:`ParentView`, :class:`Evaluation`, :class:`Niche`): the builder formats, it looks nothing
up, so a prompt holds no secret and no other run's code unless a caller passes it. The output is
a list of ``{"role", "content"}`` messages, the same for the same inputs (dicts are written in
sorted key order).

The system message holds the role, the candidate contract and the static gate's rules
(:mod:`evolution.llm.contract`), and the prompt strategy's advice fragments. The user message
holds the task's reference source, the hardware facts, the parent(s) with their evaluation, up to
``max_inspirations`` inspirations (other elites of the run), and what to do and how to reply.

Size budget
-----------
``budget_chars`` bounds the total characters of the messages. When over, optional parts give
way in this order: inspirations (the last one first, cut down, then left out below
:data:`MIN_PART` characters), the second parent of a crossover, then the task's reference source
(both cut down to :data:`MIN_PART`, never left out). A cut keeps the head (two thirds) and the
tail of a text on line boundaries, with the marker :data:`CUT_MARKER` between. **The diff base**
(the parent of ``mutate`` and ``repair``, the first parent of ``crossover``, the base elite of
``target``) **is never cut**: a SEARCH block must quote it verbatim; a prompt whose fixed parts
alone exceed the budget is returned over budget rather than wrong.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from evolution.candidate import Outcome
from evolution.llm.contract import CANDIDATE_CONTRACT, gate_rules_text

MUTATE, CROSSOVER, REPAIR, TARGET = "mutate", "crossover", "repair", "target"
#: The operators a prompt can be built for.
OPERATORS = (MUTATE, CROSSOVER, REPAIR, TARGET)

MIN_PART = 600
"""Optional parts are not cut below this many characters (an inspiration is then left out)."""
CUT_MARKER = "# ... [{n} characters cut] ..."
MAX_MESSAGES_CHARS = 2000
"""The evaluation messages shown (repair) are cut to this many characters in all."""
MAX_FEATURES = 24

ROLE = (
    "You write fast GPU kernels (Triton, CuPy or PyTorch) that replace a PyTorch reference"
    " model and compute the same result. Your code is judged automatically: it must be correct"
    " first, then it is timed against PyTorch eager and torch.compile."
)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A candidate's evaluation as a prompt shows it.

    ``spread`` is the relative timing spread (:attr:`Outcome.noise`: IQR over median of
    candidate plus baseline); ``floor_fraction`` the speed-of-light floor over the measured time
    (1: at the floor); ``messages`` what the evaluator said (errors, mismatches).
    """

    verdict: str
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    spread: float | None = None
    floor_fraction: float | None = None
    objective_label: str = ""
    features: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    messages: tuple[str, ...] = ()

    @classmethod
    def from_outcome(cls, outcome: Outcome, messages: Sequence[str] = ()) -> Evaluation:
        """The evaluation of ``outcome`` (its floor fraction read from its features)."""
        floor = outcome.features.get("floor_fraction")
        return cls(
            verdict=outcome.verdict,
            speedup_vs_eager=outcome.speedup_vs_eager,
            speedup_vs_compile=outcome.speedup_vs_compile,
            spread=outcome.noise if outcome.objective is not None else None,
            floor_fraction=float(floor) if isinstance(floor, int | float) else None,
            objective_label=outcome.objective_label,
            features=dict(outcome.features),
            messages=tuple(messages),
        )


@dataclasses.dataclass(frozen=True)
class ParentView:
    """A candidate shown in a prompt: a parent, a failed candidate or an inspiration.

    ``cell`` maps descriptor names to the candidate's values (where it sits in the map).
    """

    candidate_id: int
    source: str
    evaluation: Evaluation | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cell: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Dim:
    """A map dimension as a prompt names it (of a :class:`~evolution.descriptors.Descriptor`)."""

    name: str
    label: str
    low: float
    high: float

    @classmethod
    def from_descriptor(cls, descriptor: Any) -> Dim:
        """The view of a :class:`~evolution.descriptors.Descriptor`."""
        return cls(descriptor.name, descriptor.label, descriptor.low, descriptor.high)


@dataclasses.dataclass(frozen=True)
class Niche:
    """A cell to target: descriptor values to reach, and the elite to start from, if any
    (the cell's weak elite or a neighbour's; None: write from the reference)."""

    values: Mapping[str, float]
    base: ParentView | None = None


@dataclasses.dataclass(frozen=True)
class PromptContext:
    """What every prompt of a run carries.

    Attributes
    ----------
    task_source:
        The task file (the reference ``Model``, ``get_inputs``...).
    hardware:
        Facts of the run's hardware class (``{"gpu": "H100", "sm": 90, ...}``).
    dims:
        The map's dimensions (names and labels for the target operator and cells).
    advice:
        The prompt strategy's advice fragments (:mod:`evolution.llm.strategies`).
    inspirations:
        Other elites of the same run, best first; the builder uses up to ``max_inspirations``
        that are not a parent.
    budget_chars:
        Soft bound on the total characters of the messages (see the module docstring).
    """

    task_source: str
    hardware: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dims: tuple[Dim, ...] = ()
    advice: tuple[str, ...] = ()
    inspirations: tuple[ParentView, ...] = ()
    budget_chars: int = 48_000
    max_inspirations: int = 4


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters: head and tail on line boundaries, the
    :data:`CUT_MARKER` between (unchanged when it fits)."""
    if len(text) <= limit:
        return text
    room = max(limit - len(CUT_MARKER.format(n=len(text))) - 2, 0)
    head = text[: room * 2 // 3]
    head = head[: head.rfind("\n") + 1] if "\n" in head else head
    tail = text[len(text) - (room - len(head)) :] if room > len(head) else ""
    tail = tail[tail.find("\n") + 1 :] if "\n" in tail else tail
    cut = len(text) - len(head) - len(tail)
    return f"{head}{CUT_MARKER.format(n=cut)}\n{tail}"


def _num(x: Any) -> str:
    if not isinstance(x, float):
        return str(x)
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _code(source: str) -> str:
    return f"```python\n{source.rstrip()}\n```"


def format_evaluation(ev: Evaluation | None) -> str:
    """One line of verdict and ratios, one of scalar features; ``not evaluated`` for None."""
    if ev is None:
        return "Evaluation: not evaluated."
    parts = [f"verdict {ev.verdict}"]
    if ev.speedup_vs_eager is not None:
        parts.append(f"{ev.speedup_vs_eager:.2f}x vs PyTorch eager")
    if ev.speedup_vs_compile is not None:
        parts.append(f"{ev.speedup_vs_compile:.2f}x vs torch.compile")
    if ev.spread is not None and math.isfinite(ev.spread):
        parts.append(f"timing spread {ev.spread:.1%} (IQR/median)")
    if ev.floor_fraction is not None:
        parts.append(f"{ev.floor_fraction:.0%} of the speed-of-light floor")
    if ev.objective_label and ev.objective_label != "gpu-speedup":
        parts.append(f"measured as {ev.objective_label}")
    lines = ["Evaluation: " + "; ".join(parts) + "."]
    scalars = {
        k: v
        for k, v in sorted(ev.features.items())
        if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 40)
    }
    if scalars:
        shown = [f"{k}={_num(v)}" for k, v in list(scalars.items())[:MAX_FEATURES]]
        lines.append("Measured features: " + ", ".join(shown) + ".")
    return "\n".join(lines)


def _format_messages(messages: Sequence[str]) -> str:
    text = "\n".join(f"- {m.strip()}" for m in messages if m.strip())
    return truncate(text, MAX_MESSAGES_CHARS) if text else "- (no message)"


def _cell(view: ParentView) -> str:
    if not view.cell:
        return ""
    return " Cell: " + ", ".join(f"{k}={_num(v)}" for k, v in sorted(view.cell.items())) + "."


def _candidate(title: str, view: ParentView, source: str | None = None, level: str = "##") -> str:
    params = ""
    if view.params:
        params = "\nParameters: " + ", ".join(f"{k}={v!r}" for k, v in sorted(view.params.items()))
    head = f"{level} {title} (candidate {view.candidate_id})"
    body = _code(view.source if source is None else source)
    return f"{head}\n{body}{params}\n{format_evaluation(view.evaluation)}{_cell(view)}"


def system_message(ctx: PromptContext) -> str:
    """The system prompt: role, contract, gate rules and the strategy's advice."""
    parts = [ROLE, "## Candidate contract\n" + CANDIDATE_CONTRACT, "## Static gate\n"]
    parts[-1] += gate_rules_text()
    advice = [a.strip() for a in ctx.advice if a.strip()]
    if advice:
        parts.append("## Advice\n" + "\n".join(f"- {a}" for a in advice))
    return "\n\n".join(parts)


def _hardware(ctx: PromptContext) -> str:
    if not ctx.hardware:
        return ""
    facts = "\n".join(f"- {k}: {_num(v)}" for k, v in sorted(ctx.hardware.items()))
    return "## Hardware\n" + facts


def _reply_format(base: str | None) -> str:
    rewrite = "Reply with the whole new file in one ```python block"
    if base is None:
        return rewrite + "."
    return (
        f"Reply with SEARCH/REPLACE blocks against the {base}'s source, each one\n"
        "<<<<<<< SEARCH\n(lines copied exactly from it)\n=======\n(the new lines)\n"
        ">>>>>>> REPLACE\n"
        "and several blocks for several places; each SEARCH part must match exactly once. "
        f"Or {rewrite[0].lower() + rewrite[1:]} (a whole file always counts as a rewrite). "
        "Keep any explanation short."
    )


def _niche_text(ctx: PromptContext, niche: Niche) -> str:
    dims = {d.name: d for d in ctx.dims}
    lines = ["## Target cell", "Write a correct kernel whose measured behaviour puts it here:"]
    for name, value in sorted(niche.values.items()):
        d = dims.get(name)
        where = f" ({d.label}; range {_num(d.low)} to {_num(d.high)})" if d else ""
        lines.append(f"- {name} = {_num(value)}{where}")
    return "\n".join(lines)


def _task(ctx: PromptContext, source: str) -> str:
    return "## Task: the reference to replace\n" + _code(source)


def _inspiration(view: ParentView, source: str) -> str:
    return _candidate("Inspiration", view, source, level="###")


def _assemble(
    ctx: PromptContext,
    before: list[str],
    second: ParentView | None,
    after: list[str],
    exclude: set[int],
) -> list[dict[str, str]]:
    """Messages within the budget, cutting the optional parts in the documented order."""
    system = system_message(ctx)
    pool = [v for v in ctx.inspirations if v.candidate_id not in exclude]
    inspirations = [v.source for v in pool[: max(ctx.max_inspirations, 0)]]
    task = ctx.task_source
    second_src = second.source if second else None
    title = "## Inspirations: other elites of this run"

    def render() -> str:
        parts = [_task(ctx, task), _hardware(ctx), *before]
        if second is not None:
            parts.append(_candidate("Second parent", second, second_src))
        if inspirations:
            shown = [_inspiration(v, s) for v, s in zip(pool, inspirations, strict=False)]
            parts.append(title + "\n\n" + "\n\n".join(shown))
        return "\n\n".join(p for p in [*parts, *after] if p)

    def over() -> int:
        return len(system) + len(render()) - ctx.budget_chars

    while (excess := over()) > 0:
        if inspirations:
            last = inspirations[-1]
            if len(last) - excess >= MIN_PART:
                inspirations[-1] = truncate(last, len(last) - excess)
            else:
                inspirations.pop()
        elif second_src is not None and len(second_src) > MIN_PART:
            second_src = truncate(second_src, max(len(second_src) - excess, MIN_PART))
        elif len(task) > MIN_PART:
            task = truncate(task, max(len(task) - excess, MIN_PART))
        else:
            break  # only the fixed parts remain: over budget rather than a wrong diff base
    return [{"role": "system", "content": system}, {"role": "user", "content": render()}]


def mutate(ctx: PromptContext, parent: ParentView) -> list[dict[str, str]]:
    """Ask for a faster version of ``parent`` (an elite), as a diff or a rewrite."""
    ask = (
        "## What to do\nMake the parent faster while keeping it correct: one focused idea, "
        "not a collection of small tweaks.\n" + _reply_format("parent")
    )
    return _assemble(ctx, [_candidate("Parent", parent)], None, [ask], {parent.candidate_id})


def crossover(ctx: PromptContext, first: ParentView, second: ParentView) -> list[dict[str, str]]:
    """Ask for a child combining two elites (of different cells); diffs apply to ``first``."""
    ask = (
        "## What to do\nCombine the strengths of the two parents into one correct kernel that is "
        "faster than both.\n" + _reply_format("first parent")
    )
    ids = {first.candidate_id, second.candidate_id}
    return _assemble(ctx, [_candidate("First parent", first)], second, [ask], ids)


def repair(ctx: PromptContext, failed: ParentView) -> list[dict[str, str]]:
    """Ask to fix a failed candidate, showing its verdict and the evaluator's messages."""
    verdict = failed.evaluation.verdict if failed.evaluation else "unknown"
    messages = failed.evaluation.messages if failed.evaluation else ()
    ask = (
        f"## What to do\nThis candidate failed with verdict {verdict}. The evaluator said:\n"
        f"{_format_messages(messages)}\nFix the cause, keeping its approach to speed.\n"
        + _reply_format("failed candidate")
    )
    view = _candidate("Failed candidate", failed)
    return _assemble(ctx, [view], None, [ask], {failed.candidate_id})


def target(ctx: PromptContext, niche: Niche) -> list[dict[str, str]]:
    """Ask for a kernel with the behaviour of an empty or weak cell of the map."""
    base = niche.base
    before = [_niche_text(ctx, niche)]
    if base is not None:
        before.append(_candidate("Starting point", base))
    ask = (
        "## What to do\nWrite a kernel with that behaviour (change what the dimensions measure: "
        "how many kernels, tensor cores, occupancy...), correct and as fast as it can be there.\n"
        + _reply_format("starting point" if base is not None else None)
    )
    exclude = {base.candidate_id} if base is not None else set()
    return _assemble(ctx, before, None, [ask], exclude)


def build_messages(
    operator: str,
    ctx: PromptContext,
    parents: Sequence[ParentView] = (),
    niche: Niche | None = None,
) -> list[dict[str, str]]:
    """The messages of ``operator`` (one of :data:`OPERATORS`) for ``parents`` / ``niche``.

    ``mutate`` and ``repair`` take one parent, ``crossover`` two, ``target`` a niche. Raises
    ValueError for an unknown operator or the wrong number of parents.
    """
    need = {MUTATE: 1, CROSSOVER: 2, REPAIR: 1, TARGET: 0}
    if operator not in need:
        raise ValueError(f"unknown operator {operator!r}; expected one of {', '.join(OPERATORS)}")
    if len(parents) != need[operator] or (operator == TARGET) != (niche is not None):
        raise ValueError(
            f"{operator} takes {need[operator]} parent(s)"
            + (" and a niche" if operator == TARGET else "")
        )
    if operator == MUTATE:
        return mutate(ctx, parents[0])
    if operator == CROSSOVER:
        return crossover(ctx, parents[0], parents[1])
    if operator == REPAIR:
        return repair(ctx, parents[0])
    assert niche is not None
    return target(ctx, niche)

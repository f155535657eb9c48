"""Prompt strategies: the advice fragments of the system prompt, a population that evolves.

A :class:`Strategy` is a short piece of advice about writing fast kernels, with an id and the
strategy it was rewritten from. :data:`BUILTIN` are the starting population. A strategy's score
(:func:`strategy_scores`) is the **mean percentile of its correct children's objectives among
all the run's evaluated candidates** (mid-rank percentile in ``[0, 1]``; None while it has no
correct child): a strategy is good when the kernels written under it rank high in the run,
whatever operator or model wrote them. It is a pure function of the outcomes it is given.

Evolving: :func:`rewrite_messages` asks a model to rewrite a strategy from the outcomes of its
children (their verdicts, scores and failure messages); :func:`validate_rewrite` checks the
reply (stripped, one enclosing fence removed, no code, within :data:`MIN_CHARS` and
:data:`MAX_CHARS`, not the parent's text or another strategy's again) and
:meth:`StrategyPool.add_rewrite` adds it as a child, retiring the worst active strategy when the
pool is full; :func:`pick_for_rewrite` says which strategy is due for a rewrite.
:meth:`StrategyPool.to_json` / :meth:`~StrategyPool.from_json` round-trip the pool.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evolution.candidate import Outcome
from evolution.llm.errors import StateError, StrategyRejected

MIN_CHARS = 40
MAX_CHARS = 1200
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One advice fragment: ``parent_id`` is the strategy it was rewritten from (None: built in)."""

    id: str
    text: str
    parent_id: str | None = None
    generation: int = 0


BUILTIN: tuple[Strategy, ...] = (
    Strategy(
        "tiling",
        "Tile the work so each program instance owns one contiguous block that fits in"
        " registers or shared memory; pick power-of-two BLOCK sizes that suit the shapes and"
        " mask the ragged edges rather than padding inputs.",
    ),
    Strategy(
        "vector-loads",
        "Make loads and stores contiguous along the fastest-moving dimension so they coalesce"
        " into wide (16-byte) accesses; keep the innermost tl.arange over contiguous elements"
        " and state alignment with tl.multiple_of where it truly holds.",
    ),
    Strategy(
        "fusion",
        "Fuse the chain of elementwise operations, reductions and epilogues into as few kernels"
        " as possible: every intermediate written to global memory and read back costs"
        " bandwidth that a fused kernel does not spend.",
    ),
    Strategy(
        "launch-config",
        "Choose num_warps and num_stages together with the block size: small blocks want 1 to 4"
        " warps, large tiles 8; more pipeline stages hide latency in loops but use shared"
        " memory. Put such choices in SEARCH_SPACE so the parameter search tunes them.",
    ),
    Strategy(
        "reuse",
        "Avoid recomputation and redundant traffic: read each input element once, keep reused"
        " values in registers, hoist loop-invariant work, and do reductions in float32 in one"
        " pass where the algebra allows (online softmax, Welford).",
    ),
)


@dataclasses.dataclass(frozen=True)
class ChildOutcome:
    """A candidate written under a strategy, as its score and the meta-prompt see it.

    ``objective`` is None unless the child was accepted (correct and timed).
    """

    strategy_id: str
    verdict: str
    objective: float | None = None
    messages: tuple[str, ...] = ()

    @property
    def correct(self) -> bool:
        """Accepted: verdict OK with an objective."""
        return self.verdict == "OK" and self.objective is not None

    @classmethod
    def from_outcome(
        cls, strategy_id: str, outcome: Outcome, messages: Sequence[str] = ()
    ) -> ChildOutcome:
        """The child of ``strategy_id`` that ``outcome`` describes."""
        objective = outcome.objective if outcome.accepted else None
        return cls(strategy_id, outcome.verdict, objective, tuple(messages))


@dataclasses.dataclass(frozen=True)
class StrategyScore:
    """A strategy's record: children, correct children and the score (None: no correct one)."""

    strategy_id: str
    children: int
    correct: int
    score: float | None


def percentile(value: float, ranked: Sequence[float]) -> float:
    """Mid-rank percentile of ``value`` in the sorted ``ranked``: ``(below + equal / 2) / n``."""
    if not ranked:
        return 0.5
    below = bisect.bisect_left(ranked, value)
    equal = bisect.bisect_right(ranked, value) - below
    return (below + equal / 2) / len(ranked)


def strategy_scores(
    children: Iterable[ChildOutcome], run_objectives: Iterable[float]
) -> dict[str, StrategyScore]:
    """Each strategy's :class:`StrategyScore` from its children's outcomes.

    ``run_objectives`` are the objectives of all the run's evaluated candidates (any emitter);
    when empty, the correct children's own objectives rank each other.
    """
    kids = list(children)
    ranked = sorted(run_objectives) or sorted(c.objective for c in kids if c.correct)
    by: dict[str, list[ChildOutcome]] = {}
    for child in kids:
        by.setdefault(child.strategy_id, []).append(child)
    out = {}
    for sid, group in by.items():
        good = [percentile(c.objective, ranked) for c in group if c.correct]
        score = sum(good) / len(good) if good else None
        out[sid] = StrategyScore(sid, len(group), len(good), score)
    return out


def _summary(children: Sequence[ChildOutcome], limit: int = 5) -> str:
    verdicts = Counter(c.verdict for c in children)
    lines = ["Verdicts: " + ", ".join(f"{v} x{n}" for v, n in sorted(verdicts.items()))]
    failures = [m for c in children if not c.correct for m in c.messages if m.strip()]
    for message in list(dict.fromkeys(failures))[:limit]:
        lines.append(f"- failure: {message.strip()[:200]}")
    return "\n".join(lines)


def _score_text(score: StrategyScore | None) -> str:
    if score is None or score.children == 0:
        return "no children yet"
    mean = "none correct" if score.score is None else f"mean percentile {score.score:.0%}"
    return f"{score.children} children, {score.correct} correct, {mean}"


def rewrite_messages(
    strategy: Strategy,
    score: StrategyScore | None,
    children: Sequence[ChildOutcome],
    others: Sequence[tuple[Strategy, StrategyScore | None]] = (),
    max_chars: int = MAX_CHARS,
) -> list[dict[str, str]]:
    """The meta-prompt asking a model to rewrite ``strategy`` from its children's outcomes.

    ``others`` are other strategies of the pool with their scores, for contrast. Returns chat
    messages (``{"role", "content"}``); the reply goes to :meth:`StrategyPool.add_rewrite`.
    """
    system = (
        "You improve the advice given to a model that writes fast GPU kernels (Triton, CuPy or"
        " PyTorch) replacing a PyTorch reference. The advice is part of its system prompt. Its"
        " kernels are judged for correctness, then timed; an advice is scored by the mean"
        " percentile of its correct kernels among all the run's kernels.\n"
        f"Reply with the new advice only: plain sentences, no code, at most {max_chars}"
        " characters."
    )
    parts = [
        f"## Current advice ({strategy.id})\n{strategy.text}",
        f"## Its results\n{_score_text(score)}\n{_summary(children)}",
    ]
    if others:
        shown = "\n".join(f"- ({_score_text(sc)}) {s.text}" for s, sc in others)
        parts.append("## Other advice in use\n" + shown)
    parts.append(
        "## What to do\nRewrite the current advice so that more of the kernels written under"
        " it are correct and they rank higher: keep what worked, address the failures above,"
        " and do not repeat the other advice."
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


_FENCED = re.compile(r"\A```[^\n]*\n(.*?)\n?```\Z", re.DOTALL)
_LABEL = re.compile(r"\A(?:(?:new|revised|improved|rewritten)\s+)?advice\s*:\s*", re.IGNORECASE)


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def validate_rewrite(
    reply: str,
    parent_text: str,
    existing: Iterable[str] = (),
    *,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
) -> str:
    """The advice text of a rewrite ``reply``, cleaned; raises StrategyRejected otherwise.

    Cleaning: surrounding whitespace, one fence enclosing the whole reply and a leading
    ``Advice:`` label are removed. Rejected (``reason``): ``code`` (a code fence remains),
    ``too_short``, ``too_long``, ``no_change`` (the parent's text, up to spacing and case),
    ``duplicate`` (the text of another strategy).
    """
    text = reply.strip()
    fenced = _FENCED.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL.sub("", text).strip()
    if "```" in text:
        raise StrategyRejected("code", "the rewritten advice holds code; advice is prose only")
    if len(text) < min_chars:
        raise StrategyRejected("too_short", f"the rewritten advice is under {min_chars} chars")
    if len(text) > max_chars:
        raise StrategyRejected("too_long", f"the rewritten advice is over {max_chars} chars")
    if _same(text, parent_text):
        raise StrategyRejected("no_change", "the rewritten advice is the same as before")
    if any(_same(text, other) for other in existing):
        raise StrategyRejected("duplicate", "the rewritten advice repeats another strategy")
    return text


class StrategyPool:
    """The run's prompt strategies: all that ever existed, and the active ones offered.

    Parameters
    ----------
    strategies:
        The starting population (default :data:`BUILTIN`).
    max_active:
        How many strategies are offered at once; a rewrite beyond it retires one.
    """

    def __init__(self, strategies: Iterable[Strategy] = BUILTIN, max_active: int = 8) -> None:
        self.max_active = max_active
        self._all: dict[str, Strategy] = {s.id: s for s in strategies}
        self._active: list[str] = list(self._all)
        self._next = 1

    @property
    def active(self) -> list[Strategy]:
        """The strategies offered now, oldest first."""
        return [self._all[i] for i in self._active]

    @property
    def all(self) -> list[Strategy]:
        """Every strategy of the run, retired ones included (lineage, reports)."""
        return list(self._all.values())

    def get(self, strategy_id: str) -> Strategy:
        """The strategy ``strategy_id``; KeyError for an unknown one."""
        return self._all[strategy_id]

    def retire(self, strategy_id: str) -> None:
        """Stop offering ``strategy_id`` (it stays in :attr:`all`)."""
        if strategy_id in self._active:
            self._active.remove(strategy_id)

    def add_rewrite(
        self, parent_id: str, reply: str, scores: Mapping[str, StrategyScore] | None = None
    ) -> Strategy:
        """Add the rewrite of ``parent_id`` that ``reply`` holds (see :func:`validate_rewrite`).

        The child's id is ``r<N>`` (N counts rewrites). When the active pool then exceeds
        ``max_active``, the active strategy with the lowest score in ``scores`` is retired
        (strategies without a score are spared; without any score, the oldest goes).
        """
        parent = self.get(parent_id)
        existing = [s.text for s in self._all.values()]
        text = validate_rewrite(reply, parent.text, existing)
        child = Strategy(f"r{self._next}", text, parent.id, parent.generation + 1)
        self._next += 1
        self._all[child.id] = child
        self._active.append(child.id)
        if len(self._active) > self.max_active:
            self.retire(self._victim(child.id, scores or {}))
        return child

    def _victim(self, keep: str, scores: Mapping[str, StrategyScore]) -> str:
        candidates = [i for i in self._active if i != keep]
        scored = [i for i in candidates if i in scores and scores[i].score is not None]
        if scored:
            return min(scored, key=lambda i: scores[i].score or 0.0)
        return candidates[0]

    def to_json(self) -> dict[str, Any]:
        """The pool as a JSON-ready dict (see :meth:`from_json`)."""
        return {
            "version": STATE_VERSION,
            "max_active": self.max_active,
            "next": self._next,
            "strategies": [
                {"id": s.id, "text": s.text, "parent_id": s.parent_id, "generation": s.generation}
                for s in self._all.values()
            ],
            "active": list(self._active),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StrategyPool:
        """The pool :meth:`to_json` described; raises StateError for another version or shape."""
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            got = data.get("version") if isinstance(data, Mapping) else type(data).__name__
            raise StateError(f"strategy pool state version {got!r} is not {STATE_VERSION}")
        try:
            pool = cls((Strategy(**s) for s in data["strategies"]), int(data["max_active"]))
            active = [str(i) for i in data["active"]]
            unknown = [i for i in active if i not in pool._all]
            if unknown:
                raise ValueError(f"active strategies {unknown} are not in the pool")
            pool._active, pool._next = active, int(data["next"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"strategy pool state cannot be restored: {exc}") from exc
        return pool


def pick_for_rewrite(
    pool: StrategyPool,
    children: Sequence[ChildOutcome],
    run_objectives: Iterable[float],
    min_children: int = 3,
) -> tuple[Strategy, dict[str, StrategyScore]] | None:
    """The active strategy to rewrite next, with every strategy's score; None when none is due.

    Due: an active strategy with at least ``min_children`` evaluated children that has not been
    rewritten before. The one chosen has the lowest score (no correct child ranks lowest; ties
    go to the older strategy): the advice doing worst is the one worth changing.
    """
    scores = strategy_scores(children, run_objectives)
    rewritten = {s.parent_id for s in pool.all if s.parent_id is not None}
    due = [
        (i, s)
        for i, s in enumerate(pool.active)
        if s.id not in rewritten and s.id in scores and scores[s.id].children >= min_children
    ]
    if not due:
        return None

    def rank(item: tuple[int, Strategy]) -> tuple[float, int]:
        score = scores[item[1].id].score
        return (-1.0 if score is None else score, item[0])

    return min(due, key=rank)[1], scores

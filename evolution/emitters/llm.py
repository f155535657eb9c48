"""LLM-driven search: a language model mutates, crosses, repairs and targets kernels.

:class:`LlmEmitter` joins the pure core of :mod:`evolution.llm` to the steady-state loop through
an :class:`~evolution.llm.port.LlmPort`. It never waits for a model: each :meth:`~LlmEmitter.ask`
first polls the port for finished replies (each becomes at most one candidate), then tops up the
requests in flight, then returns what is ready.

One request
-----------
1. The :class:`~evolution.llm.bandit.Bandit` picks an arm ``(model, operator, strategy)`` among
   the eligible ones: ``mutate`` needs an elite, ``crossover`` two, ``repair`` a failed candidate
   it was told about and not repaired yet, ``target`` an empty cell of the map.
2. :func:`~evolution.llm.prompts.build_messages` writes the prompt: the task's reference, the
   hardware facts, the parent(s), up to four inspirations (other elites of the same run) and the
   strategy's advice.
3. The reply goes through :func:`~evolution.llm.edits.edit_source` on the diff base (the parent,
   the first parent, the failed candidate, the target's starting point or, without one, the
   reference). A failed request or edit, or a child equal to its parent or to a child proposed
   before, is never dispatched: it is counted in :attr:`LlmEmitter.failures` by reason, kept in
   :attr:`LlmEmitter.failed` for storage, and credits its arm with nothing for its tokens.
4. A child is a :class:`~evolution.candidate.CandidateSpec` with ``emitter="llm"``, label
   ``llm:<model>/<operator>``, its parents' ids and the diff base's params; its outcome credits
   the arm with :func:`~evolution.llm.bandit.improvement` per thousand tokens (a tie is credited
   when it is settled) and joins :attr:`LlmEmitter.children`, what scores the strategies.

State
-----
:meth:`LlmEmitter.state` is JSON-ready (the bandit, the strategy pool, the emitter's RNG, the
request counter and the failure counters); :meth:`LlmEmitter.restore` puts it back, so a resumed
run chooses as the uninterrupted one would have. Requests in flight at that moment are lost.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evolution.candidate import CandidateSpec, Outcome, candidate_key
from evolution.descriptors import Descriptor
from evolution.emitters.base import Emitter
from evolution.grid import NEW, TIE, Decision
from evolution.llm.bandit import Arm, Bandit, improvement
from evolution.llm.edits import edit_source
from evolution.llm.errors import StateError
from evolution.llm.port import LlmPort, LlmReply, LlmRequest
from evolution.llm.prompts import (
    CROSSOVER,
    MUTATE,
    OPERATORS,
    REPAIR,
    TARGET,
    Dim,
    Evaluation,
    Niche,
    ParentView,
    PromptContext,
    build_messages,
)
from evolution.llm.strategies import ChildOutcome, StrategyPool

DUPLICATE = "duplicate"
"""Failure reason of a child equal to its parent or to a child proposed before."""
STATE_VERSION = 1
MAX_EMPTY_CELLS = 4096
"""Cells enumerated at most when looking for an empty one to target."""


@dataclasses.dataclass(frozen=True)
class Elite:
    """An elite of the run as the emitter sees it (from the archive and the store).

    ``cell`` is the archive's cell index, ``measures`` one value per map dimension.
    """

    candidate_id: int
    source: str
    params: Mapping[str, Any]
    objective: float
    cell: int
    measures: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class FailedProposal:
    """A reply that gave no candidate, for the record (stored with the run later)."""

    request_id: str
    model: str
    operator: str
    reason: str
    message: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class _Request:
    arm: Arm
    base: str
    params: Mapping[str, Any]
    parent_ids: tuple[int, ...]
    baseline: float | None


@dataclasses.dataclass(frozen=True)
class _Child:
    arm: Arm
    baseline: float | None
    tokens: int


def archive_elites(
    archive: Any, spec_of: Callable[[int], CandidateSpec | None]
) -> Callable[[], list[Elite]]:
    """An ``elites`` accessor over a :class:`~evolution.grid.MapArchive` and a lookup of
    candidate specs by id (``store.specs.get``); elites whose spec is unknown are left out."""

    def elites() -> list[Elite]:
        out = []
        for cell, cid, objective, measures in archive.elites():
            spec = spec_of(cid)
            if spec is not None:
                out.append(Elite(cid, spec.source, dict(spec.params), objective, cell, measures))
        return out

    return elites


class LlmEmitter(Emitter):
    """Candidates written by language models (the rules are in the module docstring).

    Parameters
    ----------
    port:
        The model service (``submit``, ``poll``, ``in_flight``).
    task_source:
        The task file (the reference to replace).
    models:
        ``[(model name, weight)]``, the bandit's priors.
    dims:
        The map's ``(Descriptor, bins)`` pairs (:attr:`MapArchive.dims`), for targeting cells.
    elites:
        Returns the run's current elites (see :func:`archive_elites`).
    hardware:
        Facts of the run's hardware class, shown in every prompt.
    seed:
        Seeds the bandit's tie-breaking and the choice of parents and cells.
    max_tokens:
        Completion tokens per request.
    max_in_flight:
        Requests this emitter keeps in flight at most.
    operators:
        The operators on offer (default all of :data:`~evolution.llm.prompts.OPERATORS`).
    strategies:
        The prompt strategies (default :class:`StrategyPool` of the built-in ones).
    """

    def __init__(
        self,
        port: LlmPort,
        task_source: str,
        models: Sequence[tuple[str, float]],
        dims: Sequence[tuple[Descriptor, int]],
        elites: Callable[[], Sequence[Elite]],
        hardware: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        max_tokens: int = 4096,
        max_in_flight: int = 4,
        operators: Sequence[str] = OPERATORS,
        strategies: StrategyPool | None = None,
    ) -> None:
        if not models:
            raise ValueError("the LLM emitter needs at least one model")
        self.port = port
        self.task_source = task_source
        self.dims = list(dims)
        self._elites = elites
        self.hardware = dict(hardware or {})
        self.max_tokens = int(max_tokens)
        self.max_in_flight = int(max_in_flight)
        self.strategies = strategies or StrategyPool()
        self.bandit = Bandit(
            dict(models), operators, [s.id for s in self.strategies.active], seed=seed
        )
        self._rng = random.Random(seed)
        self._requests = 0
        self._pending: dict[str, _Request] = {}
        self._ready: collections.deque[CandidateSpec] = collections.deque()
        self._children: dict[str, _Child] = {}  # spec key -> what to credit when told
        self._proposed: set[str] = set()
        self._outcomes: dict[int, Outcome] = {}
        self._repairs: collections.deque[ParentView] = collections.deque(maxlen=8)
        self._refused = False
        self._retry_after_reply = False
        self.failures: collections.Counter[str] = collections.Counter()
        self.failed: list[FailedProposal] = []
        #: Every evaluated child, by the strategy that wrote it (what scores the strategies).
        self.children: list[ChildOutcome] = []

    # --- Emitter ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``llm``."""
        return "llm"

    @property
    def exhausted(self) -> bool:
        """Nothing in flight or ready, and either the port refused a request (with none in
        flight, or again after a reply came back) or no operator on offer can run on the map as
        it is now (e.g. only ``mutate`` and no elite yet)."""
        if self._pending or self._ready:
            return False
        if self._refused:
            return True
        elites = self._elites()
        ok = self._eligible(elites, bool(self._empty_cells(elites)))
        return not any(ok(arm) for arm in self.bandit.arms)

    @property
    def requests(self) -> int:
        """Requests submitted so far."""
        return self._requests

    def ask(self, n: int) -> list[CandidateSpec]:
        """Up to ``n`` candidates from the replies finished so far; never waits."""
        replies = self.port.poll(0)
        for reply in replies:
            self._on_reply(reply)
        if replies and self._retry_after_reply:
            # Refused while others were in flight: their worst cases were held against the
            # caps, and what they really spent may leave room; try once more.
            self._refused = self._retry_after_reply = False
        self._top_up()
        out = []
        while self._ready and len(out) < n:
            out.append(self._ready.popleft())
        return out

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:
        """Credit the arm that wrote ``spec``; a failed candidate waits for a repair."""
        self._proposed.add(spec.key)
        self._outcomes[outcome.candidate_id] = outcome
        if not outcome.accepted:
            messages = tuple(getattr(outcome, "messages", ()) or ())
            evaluation = Evaluation.from_outcome(outcome, messages)
            view = ParentView(outcome.candidate_id, spec.source, evaluation, dict(spec.params))
            self._repairs.append(view)
        if decision.status == TIE:
            return  # credited once the re-measure settles it
        child = self._children.pop(spec.key, None)
        if child is None:
            return
        objective = outcome.objective if outcome.accepted else None
        gain = improvement(objective, child.baseline, new_cell=decision.status == NEW)
        self.bandit.credit(child.arm, gain, child.tokens)
        self.children.append(ChildOutcome.from_outcome(child.arm[2], outcome))

    def adopt(self, spec: CandidateSpec) -> None:
        """Marks ``spec`` as proposed (resume)."""
        self._proposed.add(spec.key)

    # --- requests -----------------------------------------------------------------------------

    def _eligible(self, elites: Sequence[Elite], empty: bool) -> Callable[[Arm], bool]:
        ok = {
            MUTATE: len(elites) >= 1,
            CROSSOVER: len({e.cell for e in elites}) >= 2,
            REPAIR: bool(self._repairs),
            TARGET: empty,
        }
        return lambda arm: ok.get(arm[1], False)

    def _top_up(self) -> None:
        # Replies not yet taken by the loop count too: ask no faster than the loop consumes.
        while not self._refused and len(self._pending) + len(self._ready) < self.max_in_flight:
            elites = sorted(self._elites(), key=lambda e: -e.objective)
            empty = self._empty_cells(elites)
            arm = self.bandit.choose(self._eligible(elites, bool(empty)))
            if arm is None:
                return
            request, plan = self._request(arm, elites, empty)
            if not self.port.submit(request):
                self._refused = True
                self._retry_after_reply = bool(self._pending)
                return
            self._requests += 1
            self._pending[request.request_id] = plan

    def _request(
        self, arm: Arm, elites: list[Elite], empty: list[tuple[float, ...]]
    ) -> tuple[LlmRequest, _Request]:
        model, operator, strategy_id = arm
        parents: list[ParentView] = []
        niche = None
        if operator == MUTATE:
            chosen = [self._rng.choice(elites)]
        elif operator == CROSSOVER:
            chosen = self._rng.sample(elites, 2)
        else:
            chosen = []
        parents = [self._view(e) for e in chosen]
        baseline = max((e.objective for e in chosen), default=None)
        if operator == REPAIR:
            failed = self._repairs.pop()
            parents = [failed]
            baseline = None
            base, params = failed.source, failed.params
        elif operator == TARGET:
            values = self._rng.choice(empty)
            near = self._nearest(elites, values)
            niche = Niche(
                {d.name: v for (d, _), v in zip(self.dims, values, strict=True)},
                self._view(near) if near is not None else None,
            )
            base = near.source if near is not None else self.task_source
            params = near.params if near is not None else {}
            chosen = [near] if near is not None else []
        else:
            base, params = parents[0].source, parents[0].params
        exclude = {p.candidate_id for p in parents}
        ctx = PromptContext(
            self.task_source,
            self.hardware,
            tuple(Dim.from_descriptor(d) for d, _ in self.dims),
            (self.strategies.get(strategy_id).text,),
            tuple(self._view(e) for e in elites if e.candidate_id not in exclude),
        )
        messages = build_messages(operator, ctx, parents, niche)
        request_id = f"llm-{self._requests + 1}"
        request = LlmRequest(request_id, model, messages, max_tokens=self.max_tokens)
        ids = tuple(p.candidate_id for p in parents) or tuple(e.candidate_id for e in chosen)
        return request, _Request(arm, base, dict(params), ids, baseline)

    def _view(self, elite: Elite) -> ParentView:
        outcome = self._outcomes.get(elite.candidate_id)
        evaluation = Evaluation.from_outcome(outcome) if outcome is not None else None
        if evaluation is None:  # another emitter's elite: only its objective is known here
            evaluation = Evaluation("OK", features={"log_speedup": elite.objective})
        cell = {d.name: m for (d, _), m in zip(self.dims, elite.measures, strict=False)}
        return ParentView(elite.candidate_id, elite.source, evaluation, dict(elite.params), cell)

    # --- the map's empty cells ----------------------------------------------------------------

    def _bin(self, d: Descriptor, bins: int, value: float) -> int:
        span = float(d.high) - float(d.low)
        i = int((float(value) - float(d.low)) / span * bins) if span > 0 else 0
        return min(max(i, 0), bins - 1)

    def _empty_cells(self, elites: Sequence[Elite]) -> list[tuple[float, ...]]:
        """Centres of the cells no elite holds (a grid's bins; at most MAX_EMPTY_CELLS)."""
        taken = {
            tuple(self._bin(d, b, m) for (d, b), m in zip(self.dims, e.measures, strict=False))
            for e in elites
        }
        grid = itertools.product(*(range(int(b)) for _, b in self.dims))
        out = []
        for idx in itertools.islice(grid, MAX_EMPTY_CELLS):
            if idx not in taken:
                out.append(
                    tuple(
                        float(d.low) + (i + 0.5) * (float(d.high) - float(d.low)) / b
                        for (d, b), i in zip(self.dims, idx, strict=True)
                    )
                )
        return out

    def _nearest(self, elites: Sequence[Elite], values: tuple[float, ...]) -> Elite | None:
        def distance(e: Elite) -> float:
            return sum(
                ((m - v) / ((float(d.high) - float(d.low)) or 1.0)) ** 2
                for (d, _), m, v in zip(self.dims, e.measures, values, strict=False)
            )

        return min(elites, key=distance, default=None)

    # --- replies ------------------------------------------------------------------------------

    def _fail(self, reply: LlmReply, plan: _Request, reason: str, message: str) -> None:
        model, operator, _ = plan.arm
        self.failures[reason] += 1
        self.failed.append(
            FailedProposal(
                reply.request_id,
                model,
                operator,
                reason,
                message,
                reply.prompt_tokens,
                reply.completion_tokens,
            )
        )
        self.bandit.credit(plan.arm, 0.0, reply.tokens)

    def _on_reply(self, reply: LlmReply) -> None:
        plan = self._pending.pop(reply.request_id, None)
        if plan is None:
            return  # not ours, or from before a restore
        if not reply.ok or reply.text is None:
            self._fail(reply, plan, str(reply.failure or "empty"), reply.message)
            return
        edit = edit_source(plan.base, reply.text)
        if not edit.ok or edit.source is None:
            self._fail(reply, plan, str(edit.reason), edit.message)
            return
        key = candidate_key(edit.source, dict(plan.params))
        if key == candidate_key(plan.base, dict(plan.params)) or key in self._proposed:
            self._fail(reply, plan, DUPLICATE, "the child is its parent or an earlier child")
            return
        model, operator, _ = plan.arm
        spec = CandidateSpec(
            source=edit.source,
            params=dict(plan.params),
            emitter="llm",
            parent_ids=plan.parent_ids,
            label=f"llm:{model}/{operator}",
        )
        self._proposed.add(key)
        self._children[key] = _Child(plan.arm, plan.baseline, reply.tokens)
        self._ready.append(spec)

    # --- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The emitter's choices as a JSON-ready dict (see :meth:`restore`)."""
        version, internal, gauss = self._rng.getstate()
        return {
            "version": STATE_VERSION,
            "bandit": self.bandit.to_json(),
            "strategies": self.strategies.to_json(),
            "rng": [version, list(internal), gauss],
            "requests": self._requests,
            "failures": dict(self.failures),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (bandit, strategies, RNG, counters); raises
        :class:`~evolution.llm.errors.StateError` for another version."""
        if state.get("version") != STATE_VERSION:
            got = state.get("version")
            raise StateError(f"LLM emitter state version {got!r} is not {STATE_VERSION}")
        self.bandit = Bandit.from_json(state["bandit"])
        self.strategies = StrategyPool.from_json(state["strategies"])
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._requests = int(state["requests"])
        self.failures = collections.Counter(state["failures"])

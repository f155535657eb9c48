"""LLM-driven search: a language model mutates, crosses, repairs and targets kernels.

:class:`LlmEmitter` joins the pure core of :mod:`evolution.llm` to the steady-state loop through
an :class:`~evolution.llm.port.LlmPort`. It never waits for a model: each :meth:`~LlmEmitter.ask`
first polls the port for finished replies (each becomes at most one candidate), then tops up the
requests in flight, then returns what is ready. Every so many evaluated children one prompt
strategy is rewritten by a model (:mod:`evolution.llm.rewrites`).

One request
-----------
The :class:`~evolution.llm.bandit.Bandit` picks an eligible arm ``(model, operator, strategy)``
(``mutate`` needs an elite, ``crossover`` two in different cells, ``repair`` a failed child not
repaired yet, ``target`` an empty cell); :func:`~evolution.llm.prompts.build_messages` writes the
prompt (reference, hardware, parents, up to four inspirations from the same run, the strategy's
advice); :func:`~evolution.llm.edits.edit_source` turns the reply into a source on the diff base.
A failed request or edit, or a child equal to its parent or an earlier child, is never
dispatched: it is counted in :attr:`LlmEmitter.failures` by reason, recorded in the journal and
credits its arm nothing for its tokens. A child is a :class:`~evolution.candidate.CandidateSpec`
with ``emitter="llm"``, label ``llm:<model>/<operator>`` and its parents' ids; its outcome
credits the arm with :func:`~evolution.llm.bandit.improvement` per thousand tokens (a tie once
settled) and joins :attr:`LlmEmitter.children`, what scores the strategies.

State and the journal
---------------------
:meth:`LlmEmitter.state` (JSON-ready: bandit, strategies, RNG, request ids, failure counts,
credits owed, repairs waiting and done, the children that score the strategies) and
:meth:`LlmEmitter.restore`. With a ``journal`` (:class:`~evolution.llm.port.LlmJournal`) each
request is recorded with the state *before* it is submitted and each reply with the state after
it is used: a run killed at any moment resumes from its last record, credits only children still
owed one when the loop re-tells the stored outcomes, and never reuses a request id. Requests in
flight at the kill are lost (the journal's adapter marks them so). The replies one :meth:`ask`
used are written with the first request it sends (one write, the state after both), or at its
end when it sends none: every record is written before ``ask`` returns its children.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evolution.candidate import CandidateSpec, Outcome, candidate_key
from evolution.descriptors import Descriptor
from evolution.emitters.base import Emitter
from evolution.emitters.llm_state import MAX_STORED_CHILDREN, LlmState, Owed
from evolution.grid import NEW, TIE, Decision
from evolution.llm.bandit import Arm, Bandit, improvement
from evolution.llm.cells import Elite, empty_cells, nearest
from evolution.llm.cells import archive_elites as archive_elites  # re-exported
from evolution.llm.draws import Draws
from evolution.llm.edits import edit_source
from evolution.llm.errors import StrategyRejected
from evolution.llm.port import (
    REWRITE,
    LlmJournal,
    LlmPort,
    LlmReply,
    LlmRequest,
    ReplyUse,
    RequestMeta,
)
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
from evolution.llm.repairs import Repairs
from evolution.llm.rewrites import Rewrites
from evolution.llm.strategies import ChildOutcome, StrategyPool

DUPLICATE = "duplicate"
"""Failure reason of a child equal to its parent or to a child proposed before."""


@dataclasses.dataclass(frozen=True)
class _Request:
    arm: Arm
    base: str
    params: Mapping[str, Any]
    parent_ids: tuple[int, ...]
    baseline: float | None


class LlmEmitter(LlmState, Emitter):
    """Candidates written by language models (the rules are in the module docstring).

    Parameters
    ----------
    port, task_source, models:
        The model service; the task file (the reference to replace); ``[(model, weight)]``,
        the bandit's priors.
    dims, elites:
        The map's ``(Descriptor, bins)`` pairs (for targeting cells); a function returning the
        run's current elites (see :func:`archive_elites`).
    hardware, seed:
        Facts of the run's hardware class, shown in every prompt; seeds the bandit's
        tie-breaking and the choice of parents and cells.
    max_tokens, max_in_flight:
        Completion tokens per request; requests kept in flight at most.
    operators, strategies:
        The operators on offer (default all); the prompt strategies (default the built-in ones).
    journal:
        Where requests, replies and the state are recorded (see the module notes); None: nowhere.
    rewrite_every, rewrite_min_children:
        Evaluated children between two strategy rewrites (0: prompts do not evolve); children a
        strategy needs before it may be rewritten.
    max_failures_in_a_row:
        Replies in a row without a candidate after which the emitter stops asking
        (:attr:`gave_up` says why): a model that cannot follow the format does not spend the cap.
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
        journal: LlmJournal | None = None,
        rewrite_every: int = 8,
        rewrite_min_children: int = 3,
        max_failures_in_a_row: int = 24,
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
        self.journal = journal
        self._models = dict(models)
        self._rng = Draws(seed)
        self._ids = 0  # request ids used (a refused request's id is not reused)
        self._requests = 0
        self._pending: dict[str, _Request] = {}
        self.rewrites = Rewrites(rewrite_every, rewrite_min_children)
        # Children not taken by the loop yet, with the reply each came from (recorded when taken).
        self._ready: collections.deque[tuple[CandidateSpec, LlmReply]] = collections.deque()
        self._arrived: list[LlmReply] = []  # polled by wait(), handled by the next ask()
        self._unwritten: list[tuple[LlmReply, ReplyUse]] = []  # written with the next request
        self._children: dict[str, Owed] = {}  # spec key -> what to credit when told
        self._proposed: set[str] = set()
        self._outcomes: dict[int, Outcome] = {}
        self._repairs = Repairs()
        self._empty_of: Sequence[Elite] | None = None
        self._empty_cells: list[tuple[float, ...]] = []
        self.max_failures_in_a_row = int(max_failures_in_a_row)
        self._streak = 0  # replies in a row without a candidate
        #: Why the emitter stopped asking before its caps, or None.
        self.gave_up: str | None = None
        self._refused = False
        self._retry_after_reply = False
        self.failures: collections.Counter[str] = collections.Counter()
        #: The newest evaluated children, by the strategy that wrote each (what scores the
        #: strategies), and how many were evaluated in all.
        self.children: list[ChildOutcome] = []
        self.children_seen = 0

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
        if self._pending or self._ready or self.rewrites.pending:
            return False
        if self._refused or self.gave_up:
            return True
        elites = self._elites()
        ok = self._eligible(elites, bool(self._empty(elites)))
        return not any(ok(arm) for arm in self.bandit.arms)

    @property
    def waiting(self) -> bool:
        """Requests are in flight: a candidate may come without anything being evaluated."""
        return bool(self._pending or self.rewrites.pending)

    @property
    def requests(self) -> int:
        """Requests submitted so far (in this session and, after :meth:`restore`, before)."""
        return self._requests

    def ask(self, n: int) -> list[CandidateSpec]:
        """Up to ``n`` candidates from the replies finished so far; never waits."""
        if self._repairs.settle():  # after a restore, once the loop re-told the stored outcomes
            # Credits owed to children that were never proposed (lost with the old session).
            self._children = {k: v for k, v in self._children.items() if k in self._proposed}
        replies, self._arrived = [*self._arrived, *self.port.poll(0)], []
        for reply in replies:
            self._on_reply(reply)
        if replies and self._retry_after_reply:
            # Refused while others were in flight: their worst cases were held against the
            # caps, and what they really spent may leave room; try once more.
            self._refused = self._retry_after_reply = False
        out = []
        while self._ready and len(out) < n:
            spec, reply = self._ready.popleft()
            self._record(reply, ReplyUse(candidate_key=spec.key))
            out.append(spec)
        self._top_up()
        self._maybe_rewrite()
        self._write_replies()
        return out

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a reply (the next :meth:`ask` takes it)."""
        self._arrived.extend(self.port.poll(timeout_s))
        return True

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:
        """Credit the arm that wrote ``spec``; a failed candidate waits for a repair."""
        self._proposed.add(spec.key)
        self._outcomes[outcome.candidate_id] = outcome
        if not outcome.accepted:
            evaluation = Evaluation.from_outcome(outcome, outcome.messages)
            view = ParentView(outcome.candidate_id, spec.source, evaluation, dict(spec.params))
            self._repairs.failed(view)
        if decision.status == TIE:
            return  # credited once the re-measure settles it
        child = self._children.pop(spec.key, None)
        if child is None:
            return
        objective = outcome.objective if outcome.accepted else None
        gain = improvement(objective, child.baseline, new_cell=decision.status == NEW)
        self.bandit.credit(child.arm, gain, child.tokens)
        kept = [m[:300] for m in outcome.messages[:2]]  # as the state keeps them
        self.children.append(ChildOutcome.from_outcome(child.arm[2], outcome, kept))
        self.children_seen += 1
        del self.children[:-MAX_STORED_CHILDREN]  # the newest score the strategies

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
        while (
            not self._refused
            and not self.gave_up
            and len(self._pending) + len(self._ready) < self.max_in_flight
        ):
            current = self._elites()
            empty = self._empty(current)
            elites = sorted(current, key=lambda e: -e.objective)
            arm = self.bandit.choose(self._eligible(elites, bool(empty)))
            if arm is None:
                return
            request, plan = self._request(arm, elites, empty)
            meta = RequestMeta(arm[1], arm[2], plan.parent_ids, request.reserved_tokens)
            self._pending[request.request_id] = plan
            if not self._submit(request, meta):
                del self._pending[request.request_id]
                if arm[1] == REPAIR and plan.parent_ids:
                    self._repairs.unpop(plan.parent_ids[0])  # not sent: it still waits
                return

    def _submit(self, request: LlmRequest, meta: RequestMeta) -> bool:
        """Record ``request`` (with the state that has its id used), then submit it; on a
        refusal, record that and stop asking until a reply comes back."""
        self._ids += 1
        if self.journal is not None:
            replies, self._unwritten = self._unwritten, []
            self.journal.sent(request, meta, self.state(), replies=replies)
        if self.port.submit(request):
            self._requests += 1
            return True
        self._refused = True
        self._retry_after_reply = bool(self._pending or self.rewrites.pending)
        if self.journal is not None:
            self.journal.unsent(request.request_id, self.state())
        return False

    def _request_id(self) -> str:
        return f"llm-{self._ids + 1}"

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
            at = nearest(self.dims, [e.measures for e in elites], values)
            near = elites[at] if at is not None else None
            niche = Niche(
                {d.name: v for (d, _), v in zip(self.dims, values, strict=True)},
                self._view(near) if near is not None else None,
            )
            # Without a starting point only a whole file will do: a diff of nothing fails.
            base = near.source if near is not None else ""
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
        request = LlmRequest(self._request_id(), model, messages, max_tokens=self.max_tokens)
        ids = tuple(p.candidate_id for p in parents) or tuple(e.candidate_id for e in chosen)
        return request, _Request(arm, base, dict(params), ids, baseline)

    def _empty(self, elites: Sequence[Elite]) -> list[tuple[float, ...]]:
        """The empty cells' centres, computed again only for a new elites list."""
        if elites is not self._empty_of:
            self._empty_cells = empty_cells(self.dims, [e.measures for e in elites])
            self._empty_of = elites
        return self._empty_cells

    def _view(self, elite: Elite) -> ParentView:
        outcome = self._outcomes.get(elite.candidate_id)
        evaluation = Evaluation.from_outcome(outcome) if outcome is not None else None
        if evaluation is None:  # another emitter's elite: only its objective is known here
            evaluation = Evaluation("OK", features={"log_speedup": elite.objective})
        cell = {d.name: m for (d, _), m in zip(self.dims, elite.measures, strict=False)}
        return ParentView(elite.candidate_id, elite.source, evaluation, dict(elite.params), cell)

    # --- meta-prompt evolution ----------------------------------------------------------------

    def _objectives(self) -> list[float]:
        return [o.objective for o in self._outcomes.values() if o.accepted]  # type: ignore[misc]

    def _maybe_rewrite(self) -> None:
        """Send the rewrite of the strategy due for one (see :mod:`evolution.llm.rewrites`)."""
        if self._refused or self.gave_up:
            return
        due = self.rewrites.plan(
            self.strategies, self.children, self._objectives(), self._models, self.children_seen
        )
        if due is None:
            return
        strategy_id, model, messages = due
        request = LlmRequest(self._request_id(), model, messages, max_tokens=self.max_tokens)
        self.rewrites.pending[request.request_id] = strategy_id
        meta = RequestMeta(REWRITE, strategy_id, (), request.reserved_tokens)
        if not self._submit(request, meta):
            del self.rewrites.pending[request.request_id]

    def _on_rewrite(self, reply: LlmReply, parent_id: str) -> None:
        try:
            if not reply.ok or reply.text is None:
                raise StrategyRejected(str(reply.failure or "empty"), reply.message)
            child = self.rewrites.apply(
                self.strategies, parent_id, reply.text, self.children, self._objectives()
            )
        except StrategyRejected as e:
            reason = f"rewrite_{e.reason}"
            self.failures[reason] += 1
            self._record(reply, ReplyUse(reason=reason, message=str(e)))
            return
        self.bandit.set_strategies([s.id for s in self.strategies.active])
        self._record(reply, ReplyUse(strategy_id=child.id))

    # --- replies ------------------------------------------------------------------------------

    def _fail(self, reply: LlmReply, plan: _Request, reason: str, message: str) -> None:
        self.failures[reason] += 1
        self._streak += 1
        limit = self.max_failures_in_a_row
        if limit and self._streak >= limit and self.gave_up is None:
            self.gave_up = (
                f"{self._streak} replies in a row gave no candidate (the last: {reason});"
                " the LLM emitter stopped asking"
            )
        self.bandit.credit(plan.arm, 0.0, reply.tokens)
        self._record(reply, ReplyUse(reason=reason, message=message))

    def _record(self, reply: LlmReply, use: ReplyUse) -> None:
        if self.journal is not None:
            self._unwritten.append((reply, use))

    def _write_replies(self) -> None:
        """Write the replies no request took along (see the module notes)."""
        if self.journal is not None and self._unwritten:
            replies, self._unwritten = self._unwritten, []
            for reply, use in replies:
                self.journal.replied(reply, use, self.state())

    def _on_reply(self, reply: LlmReply) -> None:
        rewritten = self.rewrites.pending.pop(reply.request_id, None)
        if rewritten is not None:
            self._on_rewrite(reply, rewritten)
            return
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
        self._streak = 0
        self._children[key] = Owed(plan.arm, plan.baseline, reply.tokens)
        self._ready.append((spec, reply))

    def discard(self) -> None:
        """The search ended: children never taken are recorded as not proposed."""
        while self._ready:
            spec, reply = self._ready.popleft()
            self._children.pop(spec.key, None)
            message = "the search ended before this child was proposed"
            self._record(reply, ReplyUse(reason="not_proposed", message=message))
        self._write_replies()

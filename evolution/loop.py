"""The steady-state search loop: ask emitters, dispatch, ingest results as they arrive.

:class:`SearchLoop` is the controller's core for one run. It owns the run's
:class:`~evolution.grid.MapArchive` and reaches the outside world only through the
:class:`~evolution.ports.Dispatcher` and :class:`~evolution.ports.Store` ports, so it runs the
same against Celery and PostgreSQL as against the in-memory fakes of the tests.

Rules
-----
- Budget: a dispatched job counts as one evaluation when its result arrives (whatever its
  verdict). The loop never has more jobs in flight than the budget has left
  (``in flight + done <= budget``), and awaits those in flight when the budget is spent.
- Duplicates (same normalised source and params, as the store decides) are never dispatched.
  One with a stored result is fed to the archive and the proposing emitter as if it had just
  arrived, for free; one still in flight here is told to its emitter when the result arrives.
- Static gate: ``prefilter(spec)`` returns a result (verdict ``STATIC_REJECT``) for a candidate
  refused before any GPU time; it is stored with ``Store.reject`` and costs no budget.
- Ties (faster than the elite but within noise) get one re-measure, which counts against the
  budget; a tie found when no budget is left stays unresolved and the elite is kept.
- Results are ingested idempotently: a result whose job id was already ingested is skipped
  (``Store.ingest_many`` says it is not new), unless it is a job of this session still in
  flight.
- Persistence is batched, one unit of work per batch (see :class:`~evolution.ports.Store`):
  the proposals of one round of dispatch go to ``Store.propose_many``, and their jobs to
  ``Store.dispatched_many`` before any of them is submitted; each polled batch of results of
  this session's jobs is learned, then stored with the elite changes and progress points it
  produced in one ``Store.ingest_many``. A killed controller loses at most the batch it was
  learning, whose jobs ``Store.pending`` hands back. A result of a job this session did not
  dispatch is stored before it is learned (only the store knows whether it is new). Elite
  changes learned for free from duplicates are stored at the end of their round.
- Progress points: ``Store`` gets one every ``stats_every`` evaluations, at most one per
  ``stats_interval_s`` seconds (a due point is taken after the next result or poll), and one
  at the end.
- Stop: the ``stop`` event makes :meth:`SearchLoop.run` return promptly (after ingesting the
  batch of results already polled); jobs in flight are abandoned and ``Store.pending`` hands
  them back on :meth:`SearchLoop.resume`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from evolution.candidate import CandidateSpec, Outcome, outcome_from_result
from evolution.emitters.base import Emitter
from evolution.grid import TIE, WORSE, Decision, MapArchive
from evolution.ports import (
    OTHER_RUN,
    UNVERIFIED,
    VERIFICATION,
    Dispatcher,
    EliteChange,
    Job,
    JobResult,
    Proposal,
    RunStats,
    Store,
)

STOP_BUDGET = "budget"
STOP_STOPPED = "stopped"
STOP_EXHAUSTED = "exhausted"
STOP_STALLED = "stalled"
STOP_REFUSED = "task_refused"

STATIC_REJECT = "STATIC_REJECT"

_Waiters = list[tuple[Emitter | None, CandidateSpec]]


@dataclasses.dataclass(frozen=True)
class Best:
    """The best elite: candidate id, objective (log-speedup), ``speedup = exp(objective)``."""

    candidate_id: int
    objective: float
    speedup: float


@dataclasses.dataclass(frozen=True)
class Progress:
    """A progress report (passed to ``on_progress`` after each batch of results).

    Attributes
    ----------
    evaluations, budget:
        Evaluations done (re-measures included; static rejects and duplicates excluded) and the
        run's budget.
    in_flight:
        Jobs dispatched and not yet back.
    verdicts:
        Count per verdict (``STATIC_REJECT`` from the prefilter included).
    best:
        The best elite, or None.
    coverage, elites:
        Fraction of cells filled and number of elites.
    objective_label:
        What the objective measures (``gpu-speedup``, ``cpu-time``, ``cpu-interpreter``), from
        the latest timed outcome; None before any.
    """

    evaluations: int
    budget: int
    in_flight: int
    verdicts: dict[str, int]
    best: Best | None
    coverage: float
    elites: int
    objective_label: str | None

    @property
    def best_objective(self) -> float | None:
        """The best elite's objective (log-speedup), or None."""
        return None if self.best is None else self.best.objective

    @property
    def best_speedup(self) -> float | None:
        """``exp(best objective)``, or None."""
        return None if self.best is None else self.best.speedup


@dataclasses.dataclass(frozen=True)
class Summary:
    """How a run (or this session of it) ended.

    ``stopped_reason`` is ``budget``, ``stopped`` (the stop event), ``exhausted`` (every emitter
    exhausted, nothing in flight), ``stalled`` (nothing in flight and no emitter proposed
    anything for ``idle_timeout_s``) or ``task_refused`` (a worker refused the task itself,
    for instance because it cannot fit in the GPU's memory; ``refused`` says why).
    """

    evaluations: int
    elites: int
    coverage: float
    qd_score: float
    best: Best | None
    objective_label: str | None
    stopped_reason: str
    verdicts: dict[str, int]
    refused: str | None = None


@dataclasses.dataclass
class _Flight:
    job: Job
    spec: CandidateSpec
    remeasure: bool
    verify: bool = False


@dataclasses.dataclass
class _Queued:
    candidate_id: int
    spec: CandidateSpec
    emitter: Emitter | None
    remeasure: bool
    verify: bool = False
    job_id: str | None = None  # a job dispatched before a restart: sent again under its id


def needs_verification(result: dict[str, Any]) -> bool:
    """A remote worker's result that no trusted worker has re-measured (nor could)."""
    return bool(result.get(UNVERIFIED)) and not result.get(VERIFICATION)


class SearchLoop:
    """Runs one search: emitters -> store -> dispatcher -> archive, steady state.

    Parameters
    ----------
    archive:
        The run's map (the loop is its only writer).
    emitters:
        Asked round-robin whenever dispatch capacity frees up; exhausted ones are skipped.
    dispatcher:
        Runs jobs (``capacity`` bounds the jobs in flight). Not closed by the loop.
    store:
        Persists proposals, jobs, results, elites and progress.
    budget:
        Evaluations to spend (see the module notes for what counts).
    prefilter:
        The static gate: ``prefilter(spec)`` returns a result dict for a refused candidate,
        None to let it through.
    on_progress:
        Called with a :class:`Progress` after each batch of results and at the end.
    stats_every:
        A progress point every this many evaluations (and one at the end).
    stats_interval_s:
        At most one progress point per this many seconds (0: no limit); at hundreds of results
        per second a point per evaluation would be most of what the store writes.
    poll_timeout_s:
        Longest wait in ``Dispatcher.poll``: bounds how late a stop event is noticed.
    idle_timeout_s:
        Stop as ``stalled`` after this long with nothing in flight and no emitter proposing.
    clock:
        Seconds, monotonic (``time.monotonic``; tests pass a fake one).
    """

    def __init__(
        self,
        archive: MapArchive,
        emitters: Sequence[Emitter],
        dispatcher: Dispatcher,
        store: Store,
        budget: int,
        prefilter: Callable[[CandidateSpec], dict[str, Any] | None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        stats_every: int = 1,
        *,
        stats_interval_s: float = 0.5,
        poll_timeout_s: float = 0.2,
        idle_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.archive = archive
        self.emitters = list(emitters)
        self.dispatcher = dispatcher
        self.store = store
        self.budget = int(budget)
        self.prefilter = prefilter
        self.on_progress = on_progress
        self.stats_every = max(1, int(stats_every))
        self.stats_interval_s = max(0.0, float(stats_interval_s))
        self.poll_timeout_s = float(poll_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self._clock = clock
        self.evaluations = 0
        self.duplicates = 0
        self._in_flight: dict[str, _Flight] = {}
        self._done_jobs: set[str] = set()
        self._waiters: dict[int, _Waiters] = {}
        self._ties: dict[int, tuple[Outcome, _Waiters, CandidateSpec]] = {}
        self._remeasured: set[int] = set()
        self._verifying: dict[int, tuple[_Waiters, CandidateSpec]] = {}
        self._queue: collections.deque[_Queued] = collections.deque()
        self._verdicts: collections.Counter[str] = collections.Counter()
        self._refused: str | None = None
        self._label: str | None = None
        self._rr = 0
        self._since_stats = 0
        self._last_stats: float | None = None
        self._dirty = False
        # Learned but not stored yet: written with the batch of results (or round) they
        # come from.
        self._unsaved_elites: list[EliteChange] = []
        self._unsaved_stats: list[RunStats] = []

    # --- public -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs dispatched by this session and not back yet."""
        return len(self._in_flight)

    def resume(self) -> int:
        """Restore a run from the store; call before :meth:`run`.

        Rebuilds the archive from ``Store.evaluated()`` (in stored order, with the live
        replacement rules; a candidate listed twice after a tie is that tie's re-measure),
        tells each stored outcome to the emitter that owns its spec, counts those evaluations
        against the budget (static rejects excepted) and queues ``Store.pending()`` to be
        dispatched before anything new. A tie whose re-measure never came back keeps the elite
        (it is not re-measured again).

        The rebuilt archive is exactly the live one when ``evaluated()`` lists every stored
        evaluation (re-measures included) in ingestion order; with only each candidate's newest
        result it is a close approximation (a re-measure stands in for its mean).

        Returns
        -------
        int
            Evaluations restored.
        """
        everything = self.store.evaluated()
        for _, _, result in everything:
            verdict = str(result.get("verdict", "RUNTIME_ERROR"))
            self._verdicts[verdict] += 1
            if verdict != STATIC_REJECT and not result.get(OTHER_RUN):
                self.evaluations += 1
        # Remote claims never re-measured stay out of the map, as they did live; see below.
        rows = [r for r in everything if not needs_verification(r[2])]
        claims = {
            cid: (spec, result)
            for cid, spec, result in everything
            if cid not in {c for c, _, _ in rows} and needs_verification(result)
        }
        outcomes = [outcome_from_result(cid, result) for cid, _, result in rows]
        decisions = self.archive.rebuild(outcomes)
        seen = collections.Counter(cid for cid, _, _ in rows)
        self._remeasured |= {cid for cid, n in seen.items() if n > 1}
        last: dict[int, tuple[Outcome, Decision]] = {}
        for (cid, spec, _result), (outcome, decision) in zip(rows, decisions, strict=True):
            emitter = self._owner(spec)
            if outcome.objective is not None:
                self._label = outcome.objective_label
            if emitter is not None:
                emitter.tell(spec, outcome, decision)
            last[cid] = (outcome, decision)
        # A tie whose re-measure never came back is not re-measured again: a store that keeps
        # only each candidate's newest result would otherwise re-measure it on every resume.
        self._remeasured |= {cid for cid, (_, d) in last.items() if d.status == TIE}
        for cid, (spec, result) in claims.items():
            self._learn(cid, result, [(self._owner(spec), spec)], spec)
        open_jobs = self.store.open_jobs()
        for cid, spec in self.store.pending():
            emitter = self._owner(spec)
            if emitter is not None:
                emitter.adopt(spec)
            self._queue.append(_Queued(cid, spec, emitter, False, job_id=open_jobs.get(cid)))
        return self.evaluations

    def run(self, stop: threading.Event | None = None) -> Summary:
        """Search until the budget is spent, ``stop`` is set, or the emitters are done.

        Returns
        -------
        Summary
            The archive's state and why the loop ended.
        """
        stop = stop if stop is not None else threading.Event()
        last_activity = self._clock()
        reason: str | None = None
        while reason is None:
            if stop.is_set():
                reason = STOP_STOPPED
                break
            if self._refused is not None:
                reason = STOP_REFUSED
                break
            produced = self._fill(stop)
            if stop.is_set():
                reason = STOP_STOPPED
                break
            now = self._clock()
            if produced:
                last_activity = now
            if not self._in_flight:
                if self.evaluations >= self.budget:
                    reason = STOP_BUDGET
                elif not self._queue and all(e.exhausted for e in self.emitters):
                    reason = STOP_EXHAUSTED
                elif not produced and now - last_activity > self.idle_timeout_s:
                    reason = STOP_STALLED
                if reason is not None:
                    break
            wait = self.poll_timeout_s if (self._in_flight or not produced) else 0.0
            self._ingest(self.dispatcher.poll(wait))
            if self._dirty:
                self._progress()
        if self._since_stats or not self.evaluations:
            self._record_stats()
        self._save([])
        self._progress()
        return self._summary(reason)

    # --- dispatch -----------------------------------------------------------------------------

    def _free(self) -> int:
        room = self.budget - self.evaluations - len(self._in_flight)
        return min(self.dispatcher.capacity - len(self._in_flight), room)

    def _fill(self, stop: threading.Event) -> bool:
        """Use free capacity; returns whether anything was dispatched or proposed.

        Works in rounds: queued candidates first, then as many new proposals as there is room
        for, recorded with one ``propose_many``; the round's jobs are recorded with one
        ``dispatched_many`` before they are submitted.
        """
        produced = False
        proposals = 0
        limit = 64 + 8 * max(self.dispatcher.capacity, 1)  # back to polling now and then
        while not stop.is_set():
            free = self._free()
            if free <= 0 or proposals >= limit:
                break
            jobs: list[Job] = []
            while self._queue and len(jobs) < free:
                q = self._queue.popleft()
                if q.remeasure and q.candidate_id not in self._ties:
                    continue
                if not (q.remeasure or q.verify):
                    self._waiters.setdefault(q.candidate_id, []).append((q.emitter, q.spec))
                jobs.append(
                    self._job(q.candidate_id, q.spec, q.remeasure, verify=q.verify, job_id=q.job_id)
                )
            asked: list[tuple[CandidateSpec, Emitter]] = []
            while len(jobs) + len(asked) < free and proposals < limit:
                one = self._ask_one()
                if one is None:
                    break
                asked.append(one)
                proposals += 1
            if asked:
                stored = self.store.propose_many([spec for spec, _ in asked])
                for (spec, emitter), proposal in zip(asked, stored, strict=True):
                    job = self._propose(spec, emitter, proposal)
                    if job is not None:
                        jobs.append(job)
            if self._unsaved_elites:
                self._save([])  # elites won by duplicates learned for free: stored at once
            if not jobs and not asked:
                break
            produced = True
            self._send(jobs)
        return produced

    def _ask_one(self) -> tuple[CandidateSpec, Emitter] | None:
        n = len(self.emitters)
        for i in range(n):
            emitter = self.emitters[(self._rr + i) % n]
            if emitter.exhausted:
                continue
            specs = emitter.ask(1)
            if specs:
                self._rr = (self._rr + i + 1) % n
                return specs[0], emitter
        return None

    def _propose(self, spec: CandidateSpec, emitter: Emitter, proposal: Proposal) -> Job | None:
        """What to do with a recorded proposal: the job to dispatch for it, if any."""
        cid = proposal.candidate_id
        if proposal.duplicate:
            self.duplicates += 1
            if proposal.result is not None:
                self._learn(cid, proposal.result, [(emitter, spec)], spec)
                return None
            if cid in self._waiters:
                self._waiters[cid].append((emitter, spec))
                return None
            # Proposed before (by a run that stopped before evaluating it) and never
            # evaluated: evaluate it now, or nobody ever will.
        if self.prefilter is not None:
            rejection = self.prefilter(spec)
            if rejection is not None:
                self.store.reject(cid, rejection)
                self._verdicts[str(rejection.get("verdict", STATIC_REJECT))] += 1
                self._learn(cid, rejection, [(emitter, spec)], spec)
                return None
        self._waiters[cid] = [(emitter, spec)]
        return self._job(cid, spec, remeasure=False)

    def _job(
        self,
        cid: int,
        spec: CandidateSpec,
        remeasure: bool,
        *,
        verify: bool = False,
        job_id: str | None = None,
    ) -> Job:
        """A job for ``cid``, in flight from now on (it takes up capacity).

        ``verify``: the trusted re-measure of a remote claim; ``job_id``: the id of a job sent
        before a restart (its late result and the new one are then one job, ingested once).
        """
        job = Job(
            job_id or uuid.uuid4().hex, cid, spec.source, dict(spec.params), trusted_only=verify
        )
        self._in_flight[job.job_id] = _Flight(job, spec, remeasure, verify)
        return job

    def _send(self, jobs: list[Job]) -> None:
        """Record the jobs, then submit them: a job reaches a worker only once it is stored."""
        if not jobs:
            return
        self.store.dispatched_many(jobs)
        for job in jobs:
            self.dispatcher.submit(job)

    # --- results ------------------------------------------------------------------------------

    def _ingest(self, batch: list[JobResult]) -> None:
        """Learn a polled batch, then store it with what it changed, as one unit of work."""
        ours: list[JobResult] = []
        strays: list[JobResult] = []
        seen: set[str] = set()
        for job_result in batch:
            job_id = job_result.job_id
            if job_id in self._done_jobs or job_id in seen:
                continue  # redelivered: already ingested and learned by this session
            seen.add(job_id)
            (ours if job_id in self._in_flight else strays).append(job_result)
        if strays:
            # Dispatched by an earlier session and delivered late: learned only if the store
            # did not hold it yet, and not counted (it was not dispatched against this
            # session's budget).
            fresh = self.store.ingest_many(strays)
            for job_result, new in zip(strays, fresh, strict=True):
                if new:
                    self._done_jobs.add(job_result.job_id)
                    self._learn(job_result.candidate_id, job_result.result, [], None)
        for job_result in ours:
            self._on_result(job_result)
        if self._since_stats and self._stats_due():
            self._record_stats()  # a due point is not held back until the next result
        self._save(ours)

    def _save(self, results: list[JobResult]) -> None:
        """Store ``results`` with the elite changes and progress points not stored yet."""
        if not (results or self._unsaved_elites or self._unsaved_stats):
            return
        # A job of ours that the store already holds (ingested by another path) was still
        # learned once above; otherwise it would stay in flight forever.
        self.store.ingest_many(results, self._unsaved_elites, self._unsaved_stats)
        self._unsaved_elites = []
        self._unsaved_stats = []

    def _on_result(self, job_result: JobResult) -> None:
        """Learn the result of a job of this session."""
        self._done_jobs.add(job_result.job_id)
        self._dirty = True
        flight = self._in_flight.pop(job_result.job_id)
        cid = job_result.candidate_id
        self.evaluations += 1
        self._verdicts[str(job_result.result.get("verdict", "RUNTIME_ERROR"))] += 1
        if job_result.result.get("task_refused"):
            self._refused = str(job_result.result["task_refused"])
        if flight.verify:
            waiters, spec = self._verifying.pop(cid, ([], flight.spec))
            self._learn(cid, job_result.result, waiters, spec)
        elif flight.remeasure and cid in self._ties:
            first, waiters, spec = self._ties.pop(cid)
            second = outcome_from_result(cid, job_result.result)
            merged, decision = self.archive.resolve_tie(first, second)
            if decision.changes_archive:
                self._commit(merged, decision)
            self._tell(waiters, merged, decision)
        else:
            self._learn(cid, job_result.result, self._waiters.pop(cid, []), flight.spec)
        self._since_stats += 1
        if self._stats_due():
            self._record_stats()

    def _learn(
        self, cid: int, result: dict[str, Any], waiters: _Waiters, spec: CandidateSpec | None
    ) -> None:
        outcome = outcome_from_result(cid, result)
        if outcome.objective is not None:
            self._label = outcome.objective_label
        decision = self.archive.consider(outcome)
        if decision.changes_archive and needs_verification(result) and spec is not None:
            # A remote worker's timing is its own claim: the map takes it only once a trusted
            # worker has measured the candidate again (that measurement is what enters).
            if cid not in self._verifying:
                self._verifying[cid] = (waiters, spec)
                self._queue.appendleft(_Queued(cid, spec, None, False, verify=True))
            else:
                self._verifying[cid][0].extend(waiters)
            self._dirty = True
            return
        if decision.changes_archive:
            self._commit(outcome, decision)
        elif decision.status == TIE:
            if spec is not None and cid not in self._remeasured and cid not in self._ties:
                self._remeasured.add(cid)
                self._ties[cid] = (outcome, waiters, spec)
                self._queue.appendleft(_Queued(cid, spec, None, True))
            else:
                decision = dataclasses.replace(decision, status=WORSE)
        self._dirty = True
        self._tell(waiters, outcome, decision)

    def _commit(self, outcome: Outcome, decision: Decision) -> None:
        if self.archive.commit(outcome, decision):
            self._unsaved_elites.append(
                EliteChange(
                    cell=int(decision.cell),
                    candidate_id=outcome.candidate_id,
                    objective=float(outcome.objective),
                    measures=tuple(float(x) for x in decision.measures),
                    previous_id=decision.previous_id,
                )
            )

    @staticmethod
    def _tell(waiters: _Waiters, outcome: Outcome, decision: Decision) -> None:
        for emitter, spec in waiters:
            if emitter is not None:
                emitter.tell(spec, outcome, decision)

    def _owner(self, spec: CandidateSpec) -> Emitter | None:
        return next((e for e in self.emitters if e.owns(spec)), None)

    # --- reporting ----------------------------------------------------------------------------

    def _best(self) -> Best | None:
        best = self.archive.stats().best
        if best is None:
            return None
        cid, obj = best
        return Best(cid, obj, math.exp(min(obj, 700.0)))

    def _stats_due(self) -> bool:
        if self._since_stats < self.stats_every:
            return False
        last = self._last_stats
        return last is None or self._clock() - last >= self.stats_interval_s

    def _record_stats(self) -> None:
        """Take a progress point (stored with the next batch)."""
        s = self.archive.stats()
        self._unsaved_stats.append(
            RunStats(
                evaluations=self.evaluations,
                elites=s.num_elites,
                coverage=s.coverage,
                qd_score=s.qd_score,
                best_objective=None if s.best is None else s.best[1],
                best_candidate_id=None if s.best is None else s.best[0],
                verdicts=dict(self._verdicts),
            )
        )
        self._since_stats = 0
        self._last_stats = self._clock()

    def _progress(self) -> None:
        self._dirty = False
        if self.on_progress is None:
            return
        s = self.archive.stats()
        self.on_progress(
            Progress(
                evaluations=self.evaluations,
                budget=self.budget,
                in_flight=len(self._in_flight),
                verdicts=dict(self._verdicts),
                best=self._best(),
                coverage=s.coverage,
                elites=s.num_elites,
                objective_label=self._label,
            )
        )

    def _summary(self, reason: str) -> Summary:
        s = self.archive.stats()
        return Summary(
            evaluations=self.evaluations,
            elites=s.num_elites,
            coverage=s.coverage,
            qd_score=s.qd_score,
            best=self._best(),
            objective_label=self._label,
            stopped_reason=reason,
            verdicts=dict(self._verdicts),
            refused=self._refused,
        )

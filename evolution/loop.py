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
  budget; a tie found when no budget is left stays unresolved and the elite is kept
  (:mod:`evolution.ties`).
- Remote claims: a remote worker's result that would change the map enters only as a trusted
  worker re-measured it; that re-measure counts against the budget (:mod:`evolution.verification`).
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
- Stalled: nothing in flight, nothing proposed for ``idle_timeout_s`` and no emitter
  ``waiting`` (on a model's reply, which has its own timeout).
- Waiting: with an emitter ``waiting`` and nothing in flight, the loop waits in its
  ``Emitter.wait`` (a reply ends it); with jobs in flight too, it polls the dispatcher in
  slices of :data:`WAITING_POLL_S`, the longest a reply waits for the loop.
- Stop: the ``stop`` event makes :meth:`SearchLoop.run` return promptly (after ingesting the
  batch of results already polled); jobs in flight are abandoned and ``Store.pending`` hands
  them back on :meth:`SearchLoop.resume`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from evolution.candidate import CandidateSpec, Outcome, outcome_from_result
from evolution.emitters.base import Emitter, Waiters
from evolution.grid import TIE, WORSE, Decision, MapArchive
from evolution.jobs import Jobs, Queued
from evolution.ports import OTHER_RUN, Dispatcher, EliteChange, Job, JobResult, Proposal, Store
from evolution.progress import (
    STOP_BUDGET,
    STOP_EXHAUSTED,
    STOP_REFUSED,
    STOP_STALLED,
    STOP_STOPPED,
    Best,
    Progress,
    ProgressPoints,
    Summary,
    progress_of,
    summary_of,
)
from evolution.ties import Ties
from evolution.verification import Verifier, must_verify, split_claims

# Re-exported: callers import the loop's reports and stop reasons from here.
__all__ = [
    "STOP_BUDGET",
    "STOP_EXHAUSTED",
    "STOP_REFUSED",
    "STOP_STALLED",
    "STOP_STOPPED",
    "Best",
    "Progress",
    "SearchLoop",
    "Summary",
]

STATIC_REJECT = "STATIC_REJECT"
WAITING_POLL_S = 0.05


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
        self.poll_timeout_s = float(poll_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self._clock = clock
        self.evaluations = 0
        self.duplicates = 0
        self._jobs = Jobs()
        self._waiters: dict[int, Waiters] = {}
        self._ties = Ties()
        self._verifier = Verifier()
        self._verdicts: collections.Counter[str] = collections.Counter()
        self._refused: str | None = None
        self._labels: dict[int, str] = {}  # candidate id -> how its objective was measured
        self._rr = 0
        self._dirty = False
        # Learned but not stored yet: written with the batch of results (or round) they
        # come from.
        self._unsaved_elites: list[EliteChange] = []
        self._points = ProgressPoints(stats_every, stats_interval_s, clock)

    # --- public -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Jobs dispatched by this session and not back yet."""
        return len(self._jobs)

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
            if result.get(OTHER_RUN):
                continue  # another run's evaluation: not counted here, as it was not live
            verdict = str(result.get("verdict", "RUNTIME_ERROR"))
            self._verdicts[verdict] += 1
            if verdict != STATIC_REJECT:
                self.evaluations += 1
        # Remote claims never re-measured stay out of the map, as they did live; see below.
        rows, claims = split_claims(everything)
        outcomes = [outcome_from_result(cid, result) for cid, _, result in rows]
        decisions = self.archive.rebuild(outcomes)
        self._ties.restore([cid for cid, _, _ in rows], [d for _, d in decisions])
        last = {cid: i for i, (cid, _, _) in enumerate(rows)}
        for i, ((cid, spec, _result), (outcome, decision)) in enumerate(
            zip(rows, decisions, strict=True)
        ):
            if decision.status == TIE and last[cid] == i:
                # Its re-measure was lost to the restart and is not made again: the elite
                # stays, as live when no re-measure can be had (told as worse, not left open).
                decision = dataclasses.replace(decision, status=WORSE)
            emitter = self._owner(spec)
            if outcome.objective is not None:
                self._labels[outcome.candidate_id] = outcome.objective_label
            if emitter is not None:
                emitter.tell(spec, outcome, decision)
        for cid, (spec, result) in claims.items():
            self._learn(cid, result, [(self._owner(spec), spec)], spec)
        open_jobs = self.store.open_jobs()
        for cid, spec in self.store.pending():
            emitter = self._owner(spec)
            if emitter is not None:
                emitter.adopt(spec)
            self._jobs.queue.append(Queued(cid, spec, emitter, False, job_id=open_jobs.get(cid)))
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
            if not self.in_flight:
                if self.evaluations >= self.budget:
                    reason = STOP_BUDGET
                elif not self._jobs.queue and all(e.exhausted for e in self.emitters):
                    reason = STOP_EXHAUSTED
                elif any(e.waiting for e in self.emitters):
                    last_activity = now  # a model's reply is on its way
                elif not produced and now - last_activity > self.idle_timeout_s:
                    reason = STOP_STALLED
                if reason is not None:
                    break
            wait = self.poll_timeout_s if (self.in_flight or not produced) else 0.0
            self._ingest(self._wait(wait))
            if self._dirty:
                self._progress()
        if self._points.since or not self.evaluations:
            self._record_stats()
        self._save([])
        self._progress()
        return summary_of(
            self.archive, self.evaluations, self._verdicts, self._labels, reason, self._refused
        )

    def _wait(self, timeout_s: float) -> list[JobResult]:
        """Polled results, waiting up to ``timeout_s`` (see "Waiting" in the module notes)."""
        waiter = next((e for e in self.emitters if e.waiting), None) if timeout_s > 0 else None
        if waiter is None:
            return self.dispatcher.poll(timeout_s)
        if self.in_flight:
            return self.dispatcher.poll(min(timeout_s, WAITING_POLL_S))
        return self.dispatcher.poll(0.0 if waiter.wait(timeout_s) else timeout_s)

    # --- dispatch -----------------------------------------------------------------------------

    def _free(self) -> int:
        room = self.budget - self.evaluations - self.in_flight
        return min(self.dispatcher.capacity - self.in_flight, room)

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
            while self._jobs.queue and len(jobs) < free:
                q = self._jobs.queue.popleft()
                if q.remeasure and q.candidate_id not in self._ties:
                    continue
                if not (q.remeasure or q.verify):
                    self._waiters.setdefault(q.candidate_id, []).append((q.emitter, q.spec))
                jobs.append(
                    self._jobs.start(
                        q.candidate_id, q.spec, q.remeasure, verify=q.verify, job_id=q.job_id
                    )
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
        return self._jobs.start(cid, spec, remeasure=False)

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
        ours, strays = self._jobs.sort(batch)
        if strays:
            # Dispatched by an earlier session and delivered late: learned only if the store
            # did not hold it yet, and not counted (it was not dispatched against this
            # session's budget).
            fresh = self.store.ingest_many(strays)
            for job_result, new in zip(strays, fresh, strict=True):
                if new:
                    self._jobs.ingested(job_result.job_id)
                    self._learn(job_result.candidate_id, job_result.result, [], None)
        for job_result in ours:
            self._on_result(job_result)
        if self._points.since and self._points.due():
            self._record_stats()  # a due point is not held back until the next result
        self._save(ours)

    def _save(self, results: list[JobResult]) -> None:
        """Store ``results`` with the elite changes and progress points not stored yet."""
        if not (results or self._unsaved_elites or self._points.unsaved):
            return
        # A job of ours that the store already holds (ingested by another path) was still
        # learned once above; otherwise it would stay in flight forever.
        self.store.ingest_many(results, self._unsaved_elites, self._points.unsaved)
        self._unsaved_elites = []
        self._points.unsaved = []

    def _on_result(self, job_result: JobResult) -> None:
        """Learn the result of a job of this session."""
        flight = self._jobs.land(job_result.job_id)
        self._dirty = True
        cid = job_result.candidate_id
        self.evaluations += 1
        self._verdicts[str(job_result.result.get("verdict", "RUNTIME_ERROR"))] += 1
        if job_result.result.get("task_refused"):
            self._refused = str(job_result.result["task_refused"])
        if flight.verify:
            waiters, spec = self._verifier.verified(cid, flight.spec)
            self._learn(cid, job_result.result, waiters, spec)
        elif flight.remeasure and cid in self._ties:
            merged, decision, waiters = self._ties.settle(self.archive, cid, job_result.result)
            if decision.changes_archive:
                self._commit(merged, decision)
            self._tell(waiters, merged, decision)
        else:
            self._learn(cid, job_result.result, self._waiters.pop(cid, []), flight.spec)
        self._points.since += 1
        if self._points.due():
            self._record_stats()

    def _learn(
        self, cid: int, result: dict[str, Any], waiters: Waiters, spec: CandidateSpec | None
    ) -> None:
        outcome = outcome_from_result(cid, result)
        if outcome.objective is not None:
            self._labels[cid] = outcome.objective_label
        decision = self.archive.consider(outcome)
        if must_verify(result, decision, spec):
            # A remote worker's timing is its own claim: the map takes it only once a trusted
            # worker has measured the candidate again (that measurement is what enters).
            if self._verifier.hold(cid, waiters, spec):
                self._jobs.queue.appendleft(Queued(cid, spec, None, False, verify=True))
            self._dirty = True
            return
        if decision.changes_archive:
            self._commit(outcome, decision)
        elif decision.status == TIE:
            if self._ties.open(cid, outcome, waiters, spec):
                self._jobs.queue.appendleft(Queued(cid, spec, None, True))
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
    def _tell(waiters: Waiters, outcome: Outcome, decision: Decision) -> None:
        for emitter, spec in waiters:
            if emitter is not None:
                emitter.tell(spec, outcome, decision)

    def _owner(self, spec: CandidateSpec) -> Emitter | None:
        return next((e for e in self.emitters if e.owns(spec)), None)

    # --- reporting ----------------------------------------------------------------------------

    def _record_stats(self) -> None:
        """Take a progress point (stored with the next batch)."""
        self._points.take(self.archive, self.evaluations, self._verdicts)

    def _progress(self) -> None:
        self._dirty = False
        if self.on_progress is not None:
            counts = (self.evaluations, self.budget, self.in_flight)
            self.on_progress(progress_of(self.archive, *counts, self._verdicts, self._labels))

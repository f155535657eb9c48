"""The search core's ports: how the loop reaches evaluation and persistence.

The loop (:mod:`evolution.loop`) is pure; adapters at the edges implement these protocols:
a local process pool, Celery or HTTP-leased remote workers for :class:`Dispatcher`; the
database (``archive/``) for :class:`Store`. Tests use in-memory fakes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from evolution.candidate import CandidateSpec

UNVERIFIED = "unverified"
"""Key the server sets to True on a result that a remote (untrusted) worker reported."""

VERIFICATION = "verification"
"""Key set on a remote worker's result that could not be re-measured by a trusted worker (why)."""

OTHER_RUN = "evaluated_for_another_run"
"""Key :meth:`Store.evaluated` sets to True on a result that another run's job produced (this
run proposed a duplicate and learned it for free): it is not counted against this run's budget."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One evaluation to run: a candidate's source and parameters, under a unique job id."""

    job_id: str
    candidate_id: int
    source: str
    params: dict[str, Any]
    #: Only a trusted worker may run it: the re-measure of a remote worker's claim.
    trusted_only: bool = False


@dataclasses.dataclass(frozen=True)
class JobResult:
    """A finished job: ``result`` is ``EvalResult.to_dict()`` (or a failure shaped like it)."""

    job_id: str
    candidate_id: int
    result: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Proposal:
    """What the store made of a proposed candidate.

    ``duplicate``: the task already has a candidate with the same key; ``candidate_id`` is that
    one and ``result`` its stored evaluation (None while it is still being evaluated).
    """

    candidate_id: int
    duplicate: bool
    result: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class EliteChange:
    """``candidate_id`` became the elite of ``cell`` (replacing ``previous_id``, None if empty).

    ``objective`` is the log-speedup it won with, ``measures`` its descriptor values.
    """

    cell: int
    candidate_id: int
    objective: float
    measures: tuple[float, ...]
    previous_id: int | None


@dataclasses.dataclass(frozen=True)
class RunStats:
    """A point on a run's progress curves."""

    evaluations: int
    elites: int
    coverage: float
    qd_score: float
    best_objective: float | None
    best_candidate_id: int | None
    verdicts: dict[str, int]


class Dispatcher(Protocol):
    """Runs evaluation jobs somewhere; results come back in any order."""

    @property
    def capacity(self) -> int:
        """How many jobs may be in flight at once."""
        ...

    def submit(self, job: Job) -> None:
        """Start evaluating ``job``."""
        ...

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Finished jobs, waiting up to ``timeout_s`` for at least one."""
        ...

    def close(self) -> None:
        """Stop; jobs in flight are abandoned (a resumed run dispatches them again)."""
        ...


class Store(Protocol):
    """Persists everything the loop does, for one run.

    The loop uses the batch methods (:meth:`propose_many`, :meth:`dispatched_many`,
    :meth:`ingest_many`): each is one unit of work (one transaction in a database), so the
    controller pays one round of persistence per batch of candidates or results, not per item.
    The single-item methods are the same operations for one item.
    """

    def propose_many(self, specs: Sequence[CandidateSpec]) -> list[Proposal]:
        """Record proposals in order, as one unit; one :class:`Proposal` per spec.

        A spec whose key an earlier spec of the same batch has is a duplicate of that one
        (with no result yet).
        """
        ...

    def dispatched_many(self, jobs: Sequence[Job]) -> None:
        """Record, as one unit, that ``jobs`` are being sent to workers (before they are)."""
        ...

    def ingest_many(
        self,
        results: Sequence[JobResult],
        elites: Sequence[EliteChange] = (),
        stats: Sequence[RunStats] = (),
    ) -> list[bool]:
        """Store results, and the elite changes and progress points they led to, as one unit.

        Idempotent on the job id, within the batch too: returns, per result, whether it was
        new (False when its job was already ingested, or appears earlier in ``results``).
        ``elites`` are applied in order (the last change of a cell is its current elite);
        ``stats`` are appended in order. Nothing is stored if any part fails.
        """
        ...

    def propose(self, spec: CandidateSpec) -> Proposal:
        """Record a proposal; returns the candidate id (an existing one for a duplicate)."""
        ...

    def reject(self, candidate_id: int, result: dict[str, Any]) -> None:
        """Record a candidate refused before any GPU time (static gate) as its evaluation."""
        ...

    def dispatched(self, job: Job) -> None:
        """Record that ``job`` was sent to a worker."""
        ...

    def ingest(self, job_result: JobResult) -> bool:
        """Store a result; idempotent on the job id (False when already ingested)."""
        ...

    def elite_changed(
        self,
        cell: int,
        candidate_id: int,
        objective: float,
        measures: list[float],
        previous_id: int | None,
    ) -> None:
        """Record that ``candidate_id`` became the elite of ``cell`` (replacing ``previous_id``)."""
        ...

    def record_stats(self, stats: RunStats) -> None:
        """Append a point to the run's progress curves."""
        ...

    def open_jobs(self) -> dict[int, str]:
        """Candidate id -> job id of the jobs sent before a restart and never answered (called
        before :meth:`pending`: they are sent again under the same ids)."""
        ...

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """Candidates proposed by this run but never evaluated (re-dispatched on resume)."""
        ...

    def evaluated(self) -> list[tuple[int, CandidateSpec, dict[str, Any]]]:
        """Every evaluation of the candidates this run proposed, in the order they were stored
        (re-measures included), to rebuild the archive; see :data:`OTHER_RUN`."""
        ...

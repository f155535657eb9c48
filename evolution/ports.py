"""The search core's ports: how the loop reaches evaluation and persistence.

The loop (:mod:`evolution.loop`) is pure; adapters at the edges implement these protocols:
a local process pool, Celery or HTTP-leased remote workers for :class:`Dispatcher`; the
database (``archive/``) for :class:`Store`. Tests use in-memory fakes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from evolution.candidate import CandidateSpec

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
    """Persists everything the loop does, for one run."""

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

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """Candidates proposed by this run but never evaluated (re-dispatched on resume)."""
        ...

    def evaluated(self) -> list[tuple[int, CandidateSpec, dict[str, Any]]]:
        """Every evaluation of the candidates this run proposed, in the order they were stored
        (re-measures included), to rebuild the archive; see :data:`OTHER_RUN`."""
        ...

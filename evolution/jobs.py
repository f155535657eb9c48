"""The search loop's jobs in one session: queued, in flight, and ingested.

A candidate waits in :attr:`Jobs.queue` until there is room (the pending candidates of a resumed
run, tie re-measures and trusted re-measures of remote claims are queued there; re-measures go
first). :meth:`Jobs.start` makes its job, in flight from then on (it takes up dispatch capacity
and budget) until :meth:`Jobs.land` takes its result. The ids of ingested jobs are kept, so a
result delivered twice is learned once (:meth:`Jobs.sort`).
"""

from __future__ import annotations

import collections
import dataclasses
import uuid

from evolution.candidate import CandidateSpec
from evolution.emitters.base import Emitter
from evolution.ports import Job, JobResult


@dataclasses.dataclass
class Flight:
    """A job in flight; ``remeasure``: a tie's re-measure, ``verify``: a remote claim's."""

    job: Job
    spec: CandidateSpec
    remeasure: bool
    verify: bool = False


@dataclasses.dataclass
class Queued:
    """A candidate waiting for room; ``emitter`` proposed it (None for a re-measure)."""

    candidate_id: int
    spec: CandidateSpec
    emitter: Emitter | None
    remeasure: bool
    verify: bool = False
    job_id: str | None = None  # a job dispatched before a restart: sent again under its id


class Jobs:
    """This session's jobs: the queue, the jobs in flight (``len``), the ids ingested."""

    def __init__(self) -> None:
        self.queue: collections.deque[Queued] = collections.deque()
        self._flying: dict[str, Flight] = {}
        self._done: set[str] = set()

    def __len__(self) -> int:
        """Jobs in flight."""
        return len(self._flying)

    def start(
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
        self._flying[job.job_id] = Flight(job, spec, remeasure, verify)
        return job

    def sort(self, batch: list[JobResult]) -> tuple[list[JobResult], list[JobResult]]:
        """Split a polled batch into results of jobs in flight here and strays.

        Strays are results of jobs an earlier session dispatched; results already ingested by
        this session (or twice in the batch) are dropped.
        """
        ours: list[JobResult] = []
        strays: list[JobResult] = []
        seen: set[str] = set()
        for job_result in batch:
            job_id = job_result.job_id
            if job_id in self._done or job_id in seen:
                continue  # redelivered: already ingested and learned by this session
            seen.add(job_id)
            (ours if job_id in self._flying else strays).append(job_result)
        return ours, strays

    def ingested(self, job_id: str) -> None:
        """Remember that a stray's result was ingested."""
        self._done.add(job_id)

    def land(self, job_id: str) -> Flight:
        """Take a job of ours out of flight, its result ingested."""
        self._done.add(job_id)
        return self._flying.pop(job_id)

"""The states a run, a job and a remote job can be in: string enums stored as they read.

Each member *is* its string (:class:`enum.StrEnum`), so ``RunStatus.RUNNING == "running"``,
rows written before these enums existed read back unchanged, and JSON shows the plain word.
A leaf module: the archive, the service and the API import the states from here.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """Where a run is in its life.

    ``queued`` (made through the API, waiting for the controller), ``running``, ``paused``
    (by its owner; resumable), and the terminal ones: ``finished`` (its budget is spent or its
    search space exhausted), ``failed`` (an error stopped it), ``cancelled`` (by its owner),
    ``interrupted`` (a local ``kernelmap run`` that was stopped; ``--resume`` continues it).
    """

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (``finished_at`` is set)."""
        return self in TERMINAL_STATUSES


class JobStatus(enum.StrEnum):
    """A dispatched job: ``dispatched`` (in flight), ``done`` (its result is in), ``lost``."""

    DISPATCHED = "dispatched"
    DONE = "done"
    LOST = "lost"


class RemoteJobStatus(enum.StrEnum):
    """A job offered to remote workers: ``queued``, ``leased`` (claimed), ``done``."""

    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"


RUN_STATUSES = tuple(RunStatus)
#: A run in one of these has ended; ``finished_at`` is set.
TERMINAL_STATUSES = (
    RunStatus.FINISHED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.INTERRUPTED,
)
JOB_STATUSES = tuple(JobStatus)
REMOTE_JOB_STATUSES = tuple(RemoteJobStatus)

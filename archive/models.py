"""The database schema: SQLAlchemy 2 declarative models (the migrations mirror them).

Fields that lists and filters use are real, indexed columns; the rest of what the evaluator
and the search report is kept whole in JSON columns (JSONB on PostgreSQL). Timestamps are
timezone-aware UTC on every backend.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from archive.status import (  # noqa: F401 (the states, re-exported beside the schema)
    JOB_STATUSES,
    REMOTE_JOB_STATUSES,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    JobStatus,
    RemoteJobStatus,
    RunStatus,
)

#: Who an API key speaks for: ``admin`` sees everything and manages keys, ``user`` sees only
#: their own tasks and runs, ``worker`` may only claim jobs and post results.
USER_ROLES = ("admin", "user", "worker")

# Deterministic constraint names on every backend (SQLite batch migrations need names).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on SQLite, JSONB on PostgreSQL; Python None is stored as SQL NULL.
JSONDoc = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """``TIMESTAMP WITH TIME ZONE``; always returns aware UTC (SQLite stores no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base; its ``metadata`` is Alembic's target."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONDoc}


def _created() -> Mapped[dt.datetime]:
    return mapped_column(default=utcnow)


class Task(Base):
    """A kernel task file as submitted (KernelBench format), with what validation found.

    ``meta`` holds the task's settings (``ATOL``, ``RTOL``, dtype, number of shapes...),
    ``validation`` the report of loading and running the reference.
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.Text)
    source_sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    validation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _created()
    #: The user who submitted it through the API; NULL for tasks made by the local CLI.
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)


class Run(Base):
    """One search on a task: its configuration, lifecycle and the state needed to resume.

    ``config`` holds emitters, descriptor dimensions, device, workers...; ``archive_state``
    what rebuilding the archive needs beyond the elites (e.g. CVT centroids).
    """

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), index=True, default=RunStatus.QUEUED)
    budget: Mapped[int]
    seed: Mapped[int] = mapped_column(sa.BigInteger)  # numpy seeds reach 2**32 - 1
    device: Mapped[str] = mapped_column(sa.String(64))
    objective_label: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime] = _created()
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    archive_state: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    #: Why its latest search stopped (:mod:`evolution.progress`'s ``STOP_*``); NULL before.
    stop_reason: Mapped[str | None] = mapped_column(sa.String(32))
    #: The LLM emitter's state after its last recorded request or reply (what resuming the
    #: run restores, see :mod:`archive.llm_log`); NULL for runs without one.
    llm_state: Mapped[dict[str, Any] | None]
    #: The user who started it through the API; NULL for runs made by the local CLI.
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)


class Candidate(Base):
    """A distinct candidate kernel of a task: source plus parameters, stored once per task.

    ``key_sha256`` is :func:`evolution.candidate.candidate_key` (canonical form of the source and
    parameters); ``source_sha256`` the sha256 of the canonical form alone, shared by every
    parameter choice of one kernel. ``run_id`` is the run that first proposed it.
    """

    __tablename__ = "candidates"
    __table_args__ = (sa.UniqueConstraint("task_id", "key_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id"))
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    source: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    key_sha256: Mapped[str] = mapped_column(sa.String(64))
    source_sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    emitter: Mapped[str] = mapped_column(sa.String(64))
    parent_ids: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    label: Mapped[str] = mapped_column(sa.Text, default="")
    genome: Mapped[list[float] | None] = mapped_column(JSONDoc)
    created_at: Mapped[dt.datetime] = _created()


class Proposal(Base):
    """One candidate proposed by one of a run's emitters; duplicates are recorded too."""

    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    emitter: Mapped[str] = mapped_column(sa.String(64))
    duplicate: Mapped[bool]
    created_at: Mapped[dt.datetime] = _created()


class Job(Base):
    """An evaluation sent to a worker, under its job id (``dispatched``, ``done``, ``lost``)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.DISPATCHED)
    worker: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = _created()
    finished_at: Mapped[dt.datetime | None]


class Evaluation(Base):
    """What the evaluator reported for a candidate (``result`` is its whole result dict).

    ``job_id`` is unique (a job is ingested once) and NULL for candidates the static gate
    refused before any job. ``objective`` and ``objective_label`` are those of
    :func:`evolution.candidate.outcome_from_result`; ``duration_s`` the evaluation's total.
    """

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("jobs.id"), unique=True)
    verdict: Mapped[str] = mapped_column(sa.String(32), index=True)
    correct: Mapped[bool]
    objective: Mapped[float | None]
    objective_label: Mapped[str | None] = mapped_column(sa.String(32))
    speedup_vs_eager: Mapped[float | None]
    speedup_vs_compile: Mapped[float | None]
    messages: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    timing: Mapped[dict[str, Any] | None]
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    worker: Mapped[str | None] = mapped_column(sa.Text)
    duration_s: Mapped[float | None]
    result: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = _created()


class Elite(Base):
    """A candidate holding an archive cell of a run, from when it won the cell until replaced.

    The current elites of a run are its rows with ``replaced_at`` NULL, at most one per cell
    (a partial unique index enforces it).
    """

    __tablename__ = "elites"
    __table_args__ = (
        sa.Index(
            "ix_elites_current_cell",
            "run_id",
            "cell",
            unique=True,
            sqlite_where=sa.text("replaced_at IS NULL"),
            postgresql_where=sa.text("replaced_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    cell: Mapped[int]
    candidate_id: Mapped[int] = mapped_column(sa.ForeignKey("candidates.id"), index=True)
    objective: Mapped[float]
    measures: Mapped[list[float]] = mapped_column(JSONDoc)
    created_at: Mapped[dt.datetime] = _created()
    replaced_at: Mapped[dt.datetime | None]


class RunStat(Base):
    """A point on a run's progress curves (see :class:`evolution.ports.RunStats`)."""

    __tablename__ = "run_stats"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    evaluations: Mapped[int]
    elites: Mapped[int]
    coverage: Mapped[float]
    qd_score: Mapped[float]
    best_objective: Mapped[float | None]
    best_candidate_id: Mapped[int | None] = mapped_column(sa.ForeignKey("candidates.id"))
    verdicts: Mapped[dict[str, int]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[dt.datetime] = _created()


class LlmRequestRow(Base):
    """One request of a run's LLM emitter to a language model, and what came of it.

    Written before the request is sent (``sent``) and updated when its reply comes back:
    ``replied`` (it gave a candidate, ``candidate_key`` = :attr:`Candidate.key_sha256`, or a
    rewritten strategy, ``strategy_id``), ``failed`` (``reason``: the reply's failure or why
    its text was of no use), ``refused`` (a cap refused it: never sent) or ``lost`` (in
    flight when the controller stopped; its usage is unknown). ``response`` is the model's
    text, kept when it failed too. See :mod:`archive.llm_log`.
    """

    __tablename__ = "llm_requests"
    __table_args__ = (sa.UniqueConstraint("run_id", "request_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    request_id: Mapped[str] = mapped_column(sa.String(32))
    model: Mapped[str] = mapped_column(sa.Text)
    operator: Mapped[str] = mapped_column(sa.String(16))
    strategy: Mapped[str] = mapped_column(sa.String(64))
    parent_ids: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    #: The prompt: OpenAI chat messages (``{"role": ..., "content": ...}``).
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSONDoc, default=list)
    max_tokens: Mapped[int]
    reserved_tokens: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    response: Mapped[str | None] = mapped_column(sa.Text)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    latency_s: Mapped[float | None]
    cost: Mapped[float | None]
    candidate_key: Mapped[str | None] = mapped_column(sa.String(64))
    strategy_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = _created()
    replied_at: Mapped[dt.datetime | None]


class User(Base):
    """Someone (or some worker) the API knows; each of their API keys authenticates them.

    ``role`` is one of :data:`USER_ROLES`.
    """

    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("role IN ('admin', 'user', 'worker')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[dt.datetime] = _created()


class ApiKey(Base):
    """An API key of a user. Only the sha256 of the key is stored, never the key itself.

    ``prefix`` (the key's first 8 characters) identifies a key in listings without
    revealing it; a revoked key (``revoked_at`` set) no longer authenticates.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(sa.String(8), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = _created()
    revoked_at: Mapped[dt.datetime | None]


#: Where a job handed to remote workers stands: waiting to be claimed, leased to a worker
#: until ``lease_expires_at``, or ``done`` (its result is stored in the row).


class Worker(Base):
    """A remote GPU worker enrolled over HTTPS (``kernelmap worker --join URL --token KEY``).

    It enrolled with a ``worker``-role API key (``enrolled_by``) and got its own token, of which
    only the sha256 is stored. ``hardware`` is what it reported (GPU, memory, driver, torch and
    triton versions); ``hardware_class`` the queue it serves. Results from remote workers are
    unverified until a trusted cluster worker re-measures them. Celery workers inside the
    cluster are not rows here: they heartbeat into Redis (:mod:`services.workers.fleet`).
    """

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    hardware_class: Mapped[str] = mapped_column(sa.String(64), index=True)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    token_prefix: Mapped[str] = mapped_column(sa.String(8))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    enrolled_by: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = _created()
    last_seen_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class RemoteJob(Base):
    """An evaluation job offered to remote workers, claimed with a lease.

    The controller's lease dispatcher inserts the row (``payload`` is the job message of
    :func:`services.workers.tasks.job_message`); a worker claims it (``leased``, with
    ``lease_expires_at``), extends the lease by heartbeats and posts the result once
    (``done``, ``result`` set; a second post is ignored). A reaper puts expired leases back to
    ``queued`` and counts ``attempts``. ``delivered`` marks a result the controller has taken.
    """

    __tablename__ = "remote_jobs"

    job_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("jobs.id"), primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    hardware_class: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(16), default=RemoteJobStatus.QUEUED)
    worker_id: Mapped[int | None] = mapped_column(sa.ForeignKey("workers.id"), index=True)
    lease_expires_at: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None]
    delivered: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = _created()
    finished_at: Mapped[dt.datetime | None]

    __table_args__ = (sa.Index("ix_remote_jobs_claim", "hardware_class", "status"),)


class RunLease(Base):
    """Who drives a run now: one owner (a controller, or a ``kernelmap run`` process) at a time.

    The owner searches the run only while ``expires_at`` is ahead and renews it by heartbeat;
    ``epoch`` grows with each change of owner and fences the old owner's writes (see
    :mod:`archive.run_leases`). ``host`` and ``pid`` let a crashed local owner be replaced at
    once.
    """

    __tablename__ = "run_leases"

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(128), index=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int | None]
    epoch: Mapped[int]
    expires_at: Mapped[dt.datetime]
    acquired_at: Mapped[dt.datetime]
    renewed_at: Mapped[dt.datetime]
    renewals: Mapped[int] = mapped_column(default=0)


class ControllerRow(Base):
    """A controller process by name (``kernelmap controller --id NAME``), seen by heartbeat."""

    __tablename__ = "controllers"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    max_runs: Mapped[int]
    started_at: Mapped[dt.datetime]
    seen_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]

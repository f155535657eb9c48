"""archive: the database, kernelmap's source of truth; nothing else writes SQL.

Modules
-------
``db``
    :func:`make_engine`, :func:`session_factory`, :func:`default_url` (the embedded SQLite
    file), :func:`ensure_schema` (every command that opens the database calls it) and
    :func:`upgrade` (Alembic migrations, in ``migrations/``, run in code).
``models``
    The schema: :class:`Task`, :class:`Run`, :class:`Candidate`, :class:`Proposal`,
    :class:`Job`, :class:`Evaluation`, :class:`Elite`, :class:`RunStat`, users, API keys,
    remote workers and their jobs.
``status``
    The states of a run, a job and a remote job: :class:`RunStatus`, :class:`JobStatus`,
    :class:`RemoteJobStatus` (string enums, stored as they read) and their tuples.
``repository``
    The query facade for the CLI, API and controller: plain functions on a session for
    tasks, runs and ownership (``create_run``, ``set_run_status``, ``list_owned_runs``...),
    re-exporting those of ``run_results`` and ``users``.
``run_results``
    Reading back what runs found: candidates with their newest evaluations
    (``candidates_of_run``), evaluations, verdict counts, what a run's proposals and jobs came
    to (``run_counts``), elites (``best_elite``) and progress points.
``lineage``
    Where a candidate comes from: its ancestors back to a seed (``ancestors``, two queries at
    any depth) and whether its newest evaluation was verified (``verification``).
``users``
    Users and their API keys (``add_user``, ``api_key_by_hash``, ``revoke_api_key``...).
``credentials``
    The one scheme of bearer secrets (API keys, worker tokens): making one with its prefix,
    the sha256 that is stored, the prefix shown in listings, the length checked before hashing.
``run_control``
    A run's lifecycle: which action (pause, resume, cancel) applies in which status, and the
    runs the controller manages.
``run_leases``
    Who drives a run: one owner at a time by a lease with an epoch (the fence every write of
    the run's store passes), the global per-user limit, the controllers' heartbeats.
``run_store``
    :class:`RunStore`, the search loop's :class:`evolution.ports.Store` for one run.
``llm_log``
    :class:`LlmLog`, the LLM emitter's journal for one run: each request and reply with the
    emitter's state, requests lost in flight (``close_lost``), what they spent (``spent``).
``llm_report``
    Reading back a run's LLM search: its account per model and operator (``llm_summary``),
    its requests listed (``llm_requests``) and one whole (``llm_request``).
``rows``
    The search loop's values as stored rows and back: a spec's duplicate-detection keys, a
    stored candidate's spec, an evaluator result's evaluation columns.
``leases``
    Remote workers and the jobs they lease: enrolment, atomic claims, heartbeats, results,
    reaping.
``service_stats``
    Aggregates of the whole service for monitoring (``GET /metrics``): counts, not rows.
``errors``
    Typed errors a user can cause: unknown ids (:class:`NotFoundError`), a database from a
    newer kernelmap (:class:`SchemaError`).
``testing``
    Throwaway PostgreSQL databases for tests.
"""

from archive.db import default_url, ensure_schema, make_engine, session_factory, upgrade
from archive.errors import (
    CandidateNotFound,
    NotFoundError,
    RunNotFound,
    SchemaError,
    TaskNotFound,
)
from archive.models import (
    Base,
    Candidate,
    Elite,
    Evaluation,
    Job,
    Proposal,
    Run,
    RunStat,
    Task,
)
from archive.run_store import RunStore
from archive.status import JobStatus, RemoteJobStatus, RunStatus

__all__ = [
    "Base",
    "Candidate",
    "CandidateNotFound",
    "Elite",
    "Evaluation",
    "Job",
    "JobStatus",
    "NotFoundError",
    "Proposal",
    "RemoteJobStatus",
    "Run",
    "RunNotFound",
    "RunStat",
    "RunStatus",
    "RunStore",
    "SchemaError",
    "Task",
    "TaskNotFound",
    "default_url",
    "ensure_schema",
    "make_engine",
    "session_factory",
    "upgrade",
]

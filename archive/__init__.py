"""archive: the database, kernelmap's source of truth; nothing else writes SQL.

Modules
-------
``db``
    :func:`make_engine`, :func:`session_factory`, :func:`default_url` (the embedded SQLite
    file), :func:`ensure_schema` (every command that opens the database calls it) and
    :func:`upgrade` (Alembic migrations, in ``migrations/``, run in code).
``models``
    The schema: :class:`Task`, :class:`Run`, :class:`Candidate`, :class:`Proposal`,
    :class:`Job`, :class:`Evaluation`, :class:`Elite`, :class:`RunStat`.
``repository``
    Plain query functions on a session, for the CLI, API and controller
    (``create_run``, ``list_runs``, ``candidates_of_run``, ``best_elite``...).
``run_store``
    :class:`RunStore`, the search loop's :class:`evolution.ports.Store` for one run.
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

__all__ = [
    "Base",
    "Candidate",
    "CandidateNotFound",
    "Elite",
    "Evaluation",
    "Job",
    "NotFoundError",
    "Proposal",
    "Run",
    "RunNotFound",
    "RunStat",
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

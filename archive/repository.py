"""The archive's query facade: plain functions taking a :class:`~sqlalchemy.orm.Session`.

The caller owns the session and the transaction: these functions flush (so new rows have
ids) but never commit. Lookups by a user-given id raise a :class:`~archive.errors.NotFoundError`.

Defined here: tasks, runs (creating them, moving their status), what a user owns, and the
batch lookups of the search loop's store. Re-exported here, so that the CLI, API and controller
keep one module to call: reading back what runs found (:mod:`archive.run_results`: candidates,
evaluations, elites, progress) and users with their API keys (:mod:`archive.users`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.errors import RunNotFound, TaskNotFound
from archive.models import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Candidate,
    Evaluation,
    Proposal,
    Run,
    Task,
    utcnow,
)

# Re-exported: the facade's callers find every query under ``repository.``.
from archive.run_results import (  # noqa: F401
    best_elite,
    candidate_by_key,
    candidate_in_run,
    candidates_of_run,
    count_candidates_of_run,
    count_current_elites,
    count_proposals,
    current_elite_cells,
    current_elites,
    elite_history,
    evaluations_of_run,
    get_candidate,
    latest_evaluation,
    latest_run_stat,
    run_counts,
    run_stats,
    verdict_counts,
)
from archive.status import RunStatus
from archive.users import (  # noqa: F401
    add_api_key,
    add_user,
    api_key_by_hash,
    count_api_keys,
    count_users,
    get_api_key,
    get_user,
    list_api_keys,
    revoke_api_key,
)


def sha256(text: str) -> str:
    """Hex sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


# -- tasks -------------------------------------------------------------------------------------


def add_task(
    session: Session,
    name: str,
    source: str,
    meta: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    *,
    owner_id: int | None = None,
) -> Task:
    """Store a validated task file; a new row each time (see :func:`find_task_by_sha`).

    ``owner_id`` is the API user who submitted it (None from the local CLI).
    """
    task = Task(
        name=name,
        source=source,
        source_sha256=sha256(source),
        meta=dict(meta or {}),
        validation=dict(validation or {}),
        owner_id=owner_id,
    )
    session.add(task)
    session.flush()
    return task


def find_task_by_sha(session: Session, source_sha256: str) -> Task | None:
    """The newest task whose source has this sha256, if any."""
    stmt = (
        sa.select(Task).where(Task.source_sha256 == source_sha256).order_by(Task.id.desc()).limit(1)
    )
    return session.scalars(stmt).first()


def get_task(session: Session, task_id: int) -> Task:
    """The task ``task_id``; raises :class:`~archive.errors.TaskNotFound`."""
    task = session.get(Task, task_id)
    if task is None:
        raise TaskNotFound(task_id)
    return task


# -- runs --------------------------------------------------------------------------------------


def create_run(
    session: Session,
    task_id: int,
    *,
    budget: int,
    seed: int,
    device: str,
    objective_label: str,
    config: dict[str, Any] | None = None,
    archive_state: dict[str, Any] | None = None,
    owner_id: int | None = None,
) -> Run:
    """Create a ``queued`` run of task ``task_id`` (raises ``TaskNotFound`` for an unknown task).

    Parameters
    ----------
    budget:
        Number of evaluations the run may spend.
    seed:
        Seed of the run's random generators.
    device:
        Where candidates are evaluated (``cuda``, ``cpu``, a hardware class...).
    objective_label:
        What the objective measures (see :data:`evolution.candidate.OBJECTIVE_LABELS`).
    config:
        Emitters, descriptor dimensions, workers... (JSON).
    archive_state:
        What rebuilding the archive needs beyond the elites (e.g. CVT centroids).
    owner_id:
        The API user who started it (None from the local CLI).
    """
    get_task(session, task_id)
    run = Run(
        task_id=task_id,
        config=dict(config or {}),
        status=RunStatus.QUEUED,
        budget=budget,
        seed=seed,
        device=device,
        objective_label=objective_label,
        archive_state=archive_state,
        owner_id=owner_id,
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: int) -> Run:
    """The run ``run_id``; raises :class:`~archive.errors.RunNotFound`."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def list_runs(session: Session, limit: int = 50, status: str | None = None) -> list[Run]:
    """The newest ``limit`` runs, newest first, optionally only those with ``status``."""
    stmt = sa.select(Run).order_by(Run.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Run.status == status)
    return list(session.scalars(stmt))


def set_run_status(session: Session, run_id: int, status: str, error: str | None = None) -> Run:
    """Move a run to ``status`` and stamp the time.

    ``running`` sets ``started_at`` (the first time) and clears ``finished_at``, ``error`` and
    ``stop_reason`` (a resumed run); a terminal status sets ``finished_at``.

    Raises
    ------
    ValueError
        ``status`` is not one of :data:`~archive.models.RUN_STATUSES`.
    """
    if status not in RUN_STATUSES:
        expected = tuple(map(str, RUN_STATUSES))  # plain words, not the members' reprs
        raise ValueError(f"unknown run status {status!r}; expected one of {expected}")
    run = get_run(session, run_id)
    now = utcnow()
    run.status = status
    if status == RunStatus.RUNNING:
        run.started_at = run.started_at or now
        run.finished_at = None
        run.error = None
        run.stop_reason = None
    elif status in TERMINAL_STATUSES:
        run.finished_at = now
    if error is not None:
        run.error = error
    session.flush()
    return run


def set_archive_state(session: Session, run_id: int, state: dict[str, Any]) -> Run:
    """Replace what the run needs to rebuild its archive (e.g. CVT centroids)."""
    run = get_run(session, run_id)
    run.archive_state = dict(state)
    session.flush()
    return run


# -- ownership (the API's view: a user sees only what they own) --------------------------------


def list_tasks(
    session: Session, owner_id: int | None = None, limit: int = 50, offset: int = 0
) -> list[Task]:
    """Tasks, newest first; only those of ``owner_id`` unless it is None (every task)."""
    stmt = sa.select(Task).order_by(Task.id.desc()).limit(limit).offset(offset)
    if owner_id is not None:
        stmt = stmt.where(Task.owner_id == owner_id)
    return list(session.scalars(stmt))


def count_tasks(session: Session, owner_id: int | None = None) -> int:
    """How many tasks :func:`list_tasks` pages through."""
    stmt = sa.select(sa.func.count()).select_from(Task)
    if owner_id is not None:
        stmt = stmt.where(Task.owner_id == owner_id)
    return int(session.scalar(stmt) or 0)


def list_owned_runs(
    session: Session, owner_id: int | None = None, limit: int = 50, offset: int = 0
) -> list[Run]:
    """Runs, newest first; only those of ``owner_id`` unless it is None (every run)."""
    stmt = sa.select(Run).order_by(Run.id.desc()).limit(limit).offset(offset)
    if owner_id is not None:
        stmt = stmt.where(Run.owner_id == owner_id)
    return list(session.scalars(stmt))


def count_owned_runs(session: Session, owner_id: int | None = None) -> int:
    """How many runs :func:`list_owned_runs` pages through."""
    stmt = sa.select(sa.func.count()).select_from(Run)
    if owner_id is not None:
        stmt = stmt.where(Run.owner_id == owner_id)
    return int(session.scalar(stmt) or 0)


def candidate_owned_by(session: Session, candidate_id: int, owner_id: int) -> bool:
    """Whether a run of ``owner_id`` proposed the candidate (first, or as a duplicate)."""
    stmt = sa.select(
        sa.exists()
        .where(Proposal.candidate_id == candidate_id)
        .where(Proposal.run_id == Run.id)
        .where(Run.owner_id == owner_id)
    )
    return bool(session.scalar(stmt))


# -- batch lookups of the search loop's store (archive.run_store) ------------------------------


def candidate_ids_by_key(session: Session, task_id: int, keys: list[str]) -> dict[str, int]:
    """Duplicate-detection key -> id of the candidates of ``task_id`` with one of ``keys``.

    Keys the task has no candidate for are left out.
    """
    if not keys:
        return {}
    stmt = sa.select(Candidate.key_sha256, Candidate.id).where(
        Candidate.task_id == task_id, Candidate.key_sha256.in_(sorted(set(keys)))
    )
    return {key: cid for key, cid in session.execute(stmt)}


def latest_results(session: Session, candidate_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Candidate id -> the result dict of its newest evaluation (unevaluated ones left out)."""
    if not candidate_ids:
        return {}
    newest = (
        sa.select(sa.func.max(Evaluation.id))
        .where(Evaluation.candidate_id.in_(sorted(set(candidate_ids))))
        .group_by(Evaluation.candidate_id)
    )
    stmt = sa.select(Evaluation.candidate_id, Evaluation.result).where(Evaluation.id.in_(newest))
    return {cid: result for cid, result in session.execute(stmt)}

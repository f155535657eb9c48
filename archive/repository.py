"""Reading and writing the archive: plain functions taking a :class:`~sqlalchemy.orm.Session`.

The caller owns the session and the transaction: these functions flush (so new rows have
ids) but never commit. Lookups by a user-given id raise a :class:`~archive.errors.NotFoundError`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.errors import CandidateNotFound, RunNotFound, TaskNotFound
from archive.models import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Candidate,
    Elite,
    Evaluation,
    Proposal,
    Run,
    RunStat,
    Task,
    utcnow,
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
) -> Task:
    """Store a validated task file; a new row each time (see :func:`find_task_by_sha`)."""
    task = Task(
        name=name,
        source=source,
        source_sha256=sha256(source),
        meta=dict(meta or {}),
        validation=dict(validation or {}),
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
    """
    get_task(session, task_id)
    run = Run(
        task_id=task_id,
        config=dict(config or {}),
        status="queued",
        budget=budget,
        seed=seed,
        device=device,
        objective_label=objective_label,
        archive_state=archive_state,
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

    ``running`` sets ``started_at`` (the first time) and clears ``finished_at`` and
    ``error`` (a resumed run); a terminal status sets ``finished_at``.

    Raises
    ------
    ValueError
        ``status`` is not one of :data:`~archive.models.RUN_STATUSES`.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
    run = get_run(session, run_id)
    now = utcnow()
    run.status = status
    if status == "running":
        run.started_at = run.started_at or now
        run.finished_at = None
        run.error = None
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


# -- candidates and evaluations ----------------------------------------------------------------


def get_candidate(session: Session, candidate_id: int) -> Candidate:
    """The candidate ``candidate_id``; raises :class:`~archive.errors.CandidateNotFound`."""
    candidate = session.get(Candidate, candidate_id)
    if candidate is None:
        raise CandidateNotFound(candidate_id)
    return candidate


def candidate_by_key(session: Session, task_id: int, key: str) -> Candidate | None:
    """The candidate of ``task_id`` with duplicate-detection key ``key``, if any."""
    stmt = sa.select(Candidate).where(Candidate.task_id == task_id, Candidate.key_sha256 == key)
    return session.scalars(stmt).first()


def latest_evaluation(session: Session, candidate_id: int) -> Evaluation | None:
    """The candidate's newest evaluation (None while it has none)."""
    stmt = (
        sa.select(Evaluation)
        .where(Evaluation.candidate_id == candidate_id)
        .order_by(Evaluation.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def candidate_in_run(session: Session, run_id: int, candidate_id: int) -> bool:
    """Whether run ``run_id`` proposed the candidate (first, or as a duplicate)."""
    stmt = sa.select(
        sa.exists().where(Proposal.run_id == run_id, Proposal.candidate_id == candidate_id)
    )
    return bool(session.scalar(stmt))


def _proposed_by(run_id: int) -> sa.Select[tuple[int]]:
    return sa.select(Proposal.candidate_id).where(Proposal.run_id == run_id)


def _latest_evaluation_ids(run_id: int) -> sa.Subquery:
    return (
        sa.select(Evaluation.candidate_id, sa.func.max(Evaluation.id).label("evaluation_id"))
        .where(Evaluation.candidate_id.in_(_proposed_by(run_id)))
        .group_by(Evaluation.candidate_id)
        .subquery()
    )


def candidates_of_run(
    session: Session,
    run_id: int,
    verdict: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[tuple[Candidate, Evaluation | None]]:
    """The candidates a run proposed (duplicates of earlier runs included), by id.

    Each comes with its newest evaluation (None while unevaluated). ``verdict`` keeps only
    candidates whose newest evaluation has that verdict.
    """
    latest = _latest_evaluation_ids(run_id)
    stmt = (
        sa.select(Candidate, Evaluation)
        .outerjoin(latest, latest.c.candidate_id == Candidate.id)
        .outerjoin(Evaluation, Evaluation.id == latest.c.evaluation_id)
        .where(Candidate.id.in_(_proposed_by(run_id)))
        .order_by(Candidate.id)
        .limit(limit)
        .offset(offset)
    )
    if verdict is not None:
        stmt = stmt.where(Evaluation.verdict == verdict)
    return [(c, e) for c, e in session.execute(stmt)]


def evaluations_of_run(session: Session, run_id: int) -> list[tuple[Candidate, Evaluation]]:
    """Every evaluation of every candidate the run proposed, in the order they were stored.

    Re-measures are separate rows; candidates the run proposed as duplicates come with the
    evaluations stored for them (by whichever run).
    """
    stmt = (
        sa.select(Candidate, Evaluation)
        .join(Evaluation, Evaluation.candidate_id == Candidate.id)
        .where(Candidate.id.in_(_proposed_by(run_id)))
        .order_by(Evaluation.id)
    )
    return [(c, e) for c, e in session.execute(stmt)]


def verdict_counts(session: Session, run_id: int) -> dict[str, int]:
    """How many of the run's evaluated candidates have each verdict (newest evaluation)."""
    latest = _latest_evaluation_ids(run_id)
    stmt = (
        sa.select(Evaluation.verdict, sa.func.count())
        .join(latest, Evaluation.id == latest.c.evaluation_id)
        .group_by(Evaluation.verdict)
    )
    return {v: n for v, n in session.execute(stmt)}


# -- elites and progress -----------------------------------------------------------------------


def current_elites(session: Session, run_id: int) -> list[Elite]:
    """The run's current elites (one per occupied cell), by cell."""
    stmt = (
        sa.select(Elite)
        .where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
        .order_by(Elite.cell)
    )
    return list(session.scalars(stmt))


def elite_history(session: Session, run_id: int, cell: int | None = None) -> list[Elite]:
    """Every elite the run ever had (replaced ones included), oldest first."""
    stmt = sa.select(Elite).where(Elite.run_id == run_id).order_by(Elite.id)
    if cell is not None:
        stmt = stmt.where(Elite.cell == cell)
    return list(session.scalars(stmt))


def best_elite(session: Session, run_id: int) -> Elite | None:
    """The run's current elite with the highest objective (None for an empty archive)."""
    stmt = (
        sa.select(Elite)
        .where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
        .order_by(Elite.objective.desc(), Elite.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def run_stats(session: Session, run_id: int) -> list[RunStat]:
    """The run's progress points, oldest first."""
    stmt = sa.select(RunStat).where(RunStat.run_id == run_id).order_by(RunStat.id)
    return list(session.scalars(stmt))


def latest_run_stat(session: Session, run_id: int) -> RunStat | None:
    """The run's newest progress point, if any."""
    stmt = sa.select(RunStat).where(RunStat.run_id == run_id).order_by(RunStat.id.desc())
    return session.scalars(stmt.limit(1)).first()

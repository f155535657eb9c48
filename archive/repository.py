"""Reading and writing the archive: plain functions taking a :class:`~sqlalchemy.orm.Session`.

The caller owns the session and the transaction: these functions flush (so new rows have
ids) but never commit. Lookups by a user-given id raise a :class:`~archive.errors.NotFoundError`.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, defer

from archive.errors import CandidateNotFound, NotFoundError, RunNotFound, TaskNotFound
from archive.models import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    USER_ROLES,
    ApiKey,
    Candidate,
    Elite,
    Evaluation,
    Proposal,
    Run,
    RunStat,
    Task,
    User,
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
        status="queued",
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


def _candidate_ids_of_run(run_id: Any, verdict: Any | None) -> sa.Select[tuple[int]]:
    """The ids of the run's candidates (each once), only those whose newest evaluation has
    ``verdict`` if given (values or bound parameters); unordered."""
    if verdict is None:
        return sa.select(Proposal.candidate_id).where(Proposal.run_id == run_id).distinct()
    latest = _latest_evaluation_ids(run_id)
    return (
        sa.select(latest.c.candidate_id)
        .join(Evaluation, Evaluation.id == latest.c.evaluation_id)
        .where(Evaluation.verdict == verdict)
    )


def _page_with_latest(page: sa.Subquery) -> sa.Select[tuple[Candidate, Evaluation]]:
    """The candidates whose ids ``page`` holds, each with its newest evaluation (or None)."""
    latest = (
        sa.select(Evaluation.candidate_id, sa.func.max(Evaluation.id).label("evaluation_id"))
        .where(Evaluation.candidate_id.in_(sa.select(page.c.candidate_id)))
        .group_by(Evaluation.candidate_id)
        .subquery()
    )
    return (
        sa.select(Candidate, Evaluation)
        .join(page, page.c.candidate_id == Candidate.id)
        .outerjoin(latest, latest.c.candidate_id == Candidate.id)
        .outerjoin(Evaluation, Evaluation.id == latest.c.evaluation_id)
        .order_by(Candidate.id)
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
    candidates whose newest evaluation has that verdict. What a list does not show is
    deferred (the candidate's source, the evaluation's timing, features, hardware, messages
    and whole result): it is loaded on first access, while the session is open.
    """
    params = {"run_id": run_id, "verdict": verdict, "limit": limit, "offset": offset}
    stmt = _candidate_page_statement(verdict is not None)
    return [(c, e) for c, e in session.execute(stmt, params)]


@functools.cache
def _candidate_page_statement(by_verdict: bool) -> sa.Select[tuple[Candidate, Evaluation]]:
    # Built once, with bound parameters: building it anew took as long as running it.
    # The page's ids first, then the rows of those alone: sorting and joining every candidate
    # of a large run with its evaluation, to keep 50, is what made a page slow. Decoding the
    # deferred JSON (raw timing samples...) was most of the rest.
    verdict = sa.bindparam("verdict", type_=sa.String) if by_verdict else None
    ids = _candidate_ids_of_run(sa.bindparam("run_id", type_=sa.Integer), verdict)
    page = (
        ids.order_by(ids.selected_columns[0])
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .offset(sa.bindparam("offset", type_=sa.Integer))
    )
    return _page_with_latest(page.subquery()).options(
        defer(Candidate.source),
        defer(Candidate.genome),
        defer(Evaluation.messages),
        defer(Evaluation.timing),
        defer(Evaluation.features),
        defer(Evaluation.hardware),
        defer(Evaluation.params),
        defer(Evaluation.result),
    )


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


def current_elite_cells(session: Session, run_id: int) -> list[sa.Row[Any]]:
    """The run's current elites with what a table of them shows of their candidates, best
    first, in one query: rows with ``cell, candidate_id, objective, measures`` (the elite's),
    ``params, label, emitter`` (its candidate's) and ``verified`` (a worker other than a remote
    one evaluated it: see :mod:`archive.leases`)."""
    trusted = (
        sa.exists()
        .where(
            Evaluation.candidate_id == Elite.candidate_id,
            sa.or_(Evaluation.worker.is_(None), ~Evaluation.worker.startswith("remote:")),
        )
        .label("verified")
    )
    stmt = (
        sa.select(
            Elite.cell,
            Elite.candidate_id,
            Elite.objective,
            Elite.measures,
            Candidate.params,
            Candidate.label,
            Candidate.emitter,
            trusted,
        )
        .join(Candidate, Candidate.id == Elite.candidate_id)
        .where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
        .order_by(Elite.objective.desc(), Elite.cell)
    )
    return list(session.execute(stmt))


def count_current_elites(session: Session, run_id: int) -> int:
    """How many cells of the run's archive are occupied."""
    stmt = sa.select(sa.func.count()).where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
    return int(session.scalar(stmt) or 0)


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


def count_candidates_of_run(session: Session, run_id: int, verdict: str | None = None) -> int:
    """How many candidates :func:`candidates_of_run` pages through (same ``verdict`` filter)."""
    stmt = _candidate_count_statement(verdict is not None)
    return int(session.scalar(stmt, {"run_id": run_id, "verdict": verdict}) or 0)


@functools.cache
def _candidate_count_statement(by_verdict: bool) -> sa.Select[tuple[int]]:
    verdict = sa.bindparam("verdict", type_=sa.String) if by_verdict else None
    ids = _candidate_ids_of_run(sa.bindparam("run_id", type_=sa.Integer), verdict).subquery()
    return sa.select(sa.func.count()).select_from(ids)


def candidate_owned_by(session: Session, candidate_id: int, owner_id: int) -> bool:
    """Whether a run of ``owner_id`` proposed the candidate (first, or as a duplicate)."""
    stmt = sa.select(
        sa.exists()
        .where(Proposal.candidate_id == candidate_id)
        .where(Proposal.run_id == Run.id)
        .where(Run.owner_id == owner_id)
    )
    return bool(session.scalar(stmt))


# -- users and API keys ------------------------------------------------------------------------


def add_user(session: Session, name: str, role: str) -> User:
    """Create a user with ``role`` (one of :data:`~archive.models.USER_ROLES`)."""
    if role not in USER_ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {USER_ROLES}")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, user_id: int) -> User:
    """The user ``user_id``; raises :class:`~archive.errors.NotFoundError`."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError("user", user_id)
    return user


def count_users(session: Session) -> int:
    """How many users there are (0 on a fresh database)."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(User)) or 0)


def add_api_key(session: Session, user_id: int, prefix: str, key_hash: str, name: str) -> ApiKey:
    """Store a key of ``user_id`` by its hash (the caller hashes; the key is never stored)."""
    key = ApiKey(user_id=user_id, prefix=prefix, key_hash=key_hash, name=name)
    session.add(key)
    session.flush()
    return key


def api_key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    """The key with this sha256, revoked or not."""
    return session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == key_hash)).first()


def get_api_key(session: Session, key_id: int) -> ApiKey:
    """The key ``key_id``; raises :class:`~archive.errors.NotFoundError`."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError("API key", key_id, "GET /api/v1/keys lists the keys")
    return key


def list_api_keys(session: Session, limit: int = 50, offset: int = 0) -> list[tuple[ApiKey, User]]:
    """Keys with their users, oldest first."""
    stmt = (
        sa.select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)
        .order_by(ApiKey.id)
        .limit(limit)
        .offset(offset)
    )
    return [(k, u) for k, u in session.execute(stmt)]


def count_api_keys(session: Session) -> int:
    """How many keys :func:`list_api_keys` pages through."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) or 0)


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    """Mark the key revoked (it stops authenticating); revoking again keeps the first time."""
    key = get_api_key(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


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

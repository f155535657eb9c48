"""Reading back what runs found: their candidates and evaluations, elites and progress points.

Plain query functions taking a :class:`~sqlalchemy.orm.Session`, for the CLI, API and
controller; they only read. A run's candidates are those it proposed (first, or as duplicates of
an earlier run's), each with its newest evaluation. :mod:`archive.repository` re-exports them.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, defer

from archive.errors import CandidateNotFound
from archive.models import Candidate, Elite, Evaluation, Job, Proposal, RunStat

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


def count_candidates_of_run(session: Session, run_id: int, verdict: str | None = None) -> int:
    """How many candidates :func:`candidates_of_run` pages through (same ``verdict`` filter)."""
    stmt = _candidate_count_statement(verdict is not None)
    return int(session.scalar(stmt, {"run_id": run_id, "verdict": verdict}) or 0)


@functools.cache
def _candidate_count_statement(by_verdict: bool) -> sa.Select[tuple[int]]:
    verdict = sa.bindparam("verdict", type_=sa.String) if by_verdict else None
    ids = _candidate_ids_of_run(sa.bindparam("run_id", type_=sa.Integer), verdict).subquery()
    return sa.select(sa.func.count()).select_from(ids)


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


def run_counts(session: Session, run_id: int) -> dict[str, Any]:
    """What the run's proposals, jobs and gate refusals came to, read in three queries.

    ``proposed``: proposals of its emitters (duplicates included); ``duplicates``: those that
    repeated a candidate already proposed (by this run or an earlier run of the task), answered
    from its stored result where it had one; ``job_verdicts``: the verdicts of its jobs'
    evaluations (re-measures of near-ties and verifications of remote claims included), by
    verdict; ``gate_verdicts``: the verdicts the static gate gave, before any job, to
    candidates this run first proposed; ``candidates_evaluated``: distinct candidates among its
    jobs' evaluations.
    """
    proposed, duplicates = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((Proposal.duplicate, 1), else_=0)), 0),
        ).where(Proposal.run_id == run_id)
    ).one()
    jobs = (
        sa.select(Evaluation.verdict, Job.candidate_id)
        .join(Job, Evaluation.job_id == Job.id)
        .where(Job.run_id == run_id)
        .subquery()
    )
    job_rows = session.execute(
        sa.select(jobs.c.verdict, sa.func.count()).group_by(jobs.c.verdict)
    ).all()
    candidates = session.scalar(sa.select(sa.func.count(sa.distinct(jobs.c.candidate_id))))
    gate_rows = session.execute(
        sa.select(Evaluation.verdict, sa.func.count())
        .join(Candidate, Candidate.id == Evaluation.candidate_id)
        .where(Evaluation.job_id.is_(None), Candidate.run_id == run_id)
        .group_by(Evaluation.verdict)
    ).all()
    return {
        "proposed": int(proposed),
        "duplicates": int(duplicates),
        "job_verdicts": {v: int(n) for v, n in job_rows},
        "gate_verdicts": {v: int(n) for v, n in gate_rows},
        "candidates_evaluated": int(candidates or 0),
    }


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
    ``params, label, emitter`` (its candidate's), ``objective_label`` (how its newest timed
    evaluation measured it) and ``verified`` (a worker other than a remote one evaluated it:
    see :mod:`archive.leases`)."""
    # Set-based, not one subquery per elite: the planner joins three small aggregates (a
    # correlated subquery per row got a nested-loop plan on freshly loaded PostgreSQL tables).
    elite_ids = (
        sa.select(Elite.candidate_id)
        .where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
        .scalar_subquery()
    )
    newest_timed = (
        sa.select(Evaluation.candidate_id, sa.func.max(Evaluation.id).label("evaluation_id"))
        .where(Evaluation.candidate_id.in_(elite_ids), Evaluation.objective_label.is_not(None))
        .group_by(Evaluation.candidate_id)
        .subquery()
    )
    measured = aliased(Evaluation)
    trusted = (
        sa.select(Evaluation.candidate_id)
        .where(
            Evaluation.candidate_id.in_(elite_ids),
            sa.or_(Evaluation.worker.is_(None), ~Evaluation.worker.startswith("remote:")),
        )
        .group_by(Evaluation.candidate_id)
        .subquery()
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
            measured.objective_label,
            trusted.c.candidate_id.is_not(None).label("verified"),
        )
        .join(Candidate, Candidate.id == Elite.candidate_id)
        .outerjoin(newest_timed, newest_timed.c.candidate_id == Elite.candidate_id)
        .outerjoin(measured, measured.id == newest_timed.c.evaluation_id)
        .outerjoin(trusted, trusted.c.candidate_id == Elite.candidate_id)
        .where(Elite.run_id == run_id, Elite.replaced_at.is_(None))
        .order_by(Elite.objective.desc(), Elite.cell)
    )
    return list(session.execute(stmt))


def count_proposals(session: Session, run_id: int) -> int:
    """How many proposals the run has stored (duplicates included)."""
    stmt = sa.select(sa.func.count()).select_from(Proposal).where(Proposal.run_id == run_id)
    return int(session.scalar(stmt) or 0)


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

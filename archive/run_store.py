"""The search loop's :class:`evolution.ports.Store`, backed by the database, for one run.

Each call is one short session that commits before returning, so a killed controller loses
at most the call in flight. Duplicate detection (per task, across runs) and ingestion
(per job id) are enforced by unique constraints, so two processes racing on the same
candidate or the same result end with one row, not two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from archive import models as m
from archive import repository
from evolution.candidate import CandidateSpec, normalise_source, outcome_from_result
from evolution.ports import OTHER_RUN, Job, JobResult, Proposal, RunStats


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def spec_of(candidate: m.Candidate) -> CandidateSpec:
    """The :class:`CandidateSpec` a stored candidate was proposed as."""
    return CandidateSpec(
        source=candidate.source,
        params=dict(candidate.params),
        emitter=candidate.emitter,
        parent_ids=tuple(candidate.parent_ids),
        label=candidate.label,
        genome=tuple(candidate.genome) if candidate.genome is not None else None,
    )


def evaluation_row(
    candidate_id: int, result: dict[str, Any], job_id: str | None = None
) -> m.Evaluation:
    """An :class:`~archive.models.Evaluation` filled from an evaluator result dict."""
    outcome = outcome_from_result(candidate_id, result)
    objective = _finite(outcome.objective)
    return m.Evaluation(
        candidate_id=candidate_id,
        job_id=job_id,
        verdict=outcome.verdict,
        correct=bool(result.get("correct", False)),
        objective=objective,
        objective_label=outcome.objective_label if objective is not None else None,
        speedup_vs_eager=_finite(result.get("speedup_vs_eager")),
        speedup_vs_compile=_finite(result.get("speedup_vs_compile")),
        messages=list(result.get("messages") or []),
        timing=result.get("timing"),
        features=dict(result.get("features") or {}),
        hardware=dict(result.get("hardware") or {}),
        params=dict(result.get("params") or {}),
        worker=result.get("worker"),
        duration_s=_finite((result.get("stages_s") or {}).get("total_s")),
        result=result,
    )


def _evaluation_of_job(session: Session, job_id: str) -> int | None:
    stmt = sa.select(m.Evaluation.id).where(m.Evaluation.job_id == job_id)
    return session.scalars(stmt).first()


class RunStore:
    """:class:`evolution.ports.Store` of run ``run_id``.

    Parameters
    ----------
    session_factory:
        Makes sessions (see :func:`archive.db.session_factory`); the schema must be current.
    run_id:
        The run; raises :class:`~archive.errors.RunNotFound` if there is none.
    """

    def __init__(self, session_factory: Callable[[], Session], run_id: int) -> None:
        self._sessions = session_factory
        self.run_id = run_id
        with self._sessions() as session:
            self.task_id = repository.get_run(session, run_id).task_id

    def propose(self, spec: CandidateSpec) -> Proposal:
        """Record a proposal; a candidate the task already has is a duplicate.

        A duplicate comes back with the existing candidate's id and its newest evaluation's
        result (None while it is being evaluated). Either way a proposal row is recorded.
        """
        key = spec.key
        with self._sessions() as session:
            existing = repository.candidate_by_key(session, self.task_id, key)
            if existing is None:
                try:
                    return self._insert(session, spec, key)
                except IntegrityError:
                    # Another process inserted the same key since our lookup.
                    session.rollback()
                    existing = repository.candidate_by_key(session, self.task_id, key)
                    if existing is None:
                        raise
            evaluation = repository.latest_evaluation(session, existing.id)
            session.add(
                m.Proposal(
                    run_id=self.run_id,
                    candidate_id=existing.id,
                    emitter=spec.emitter,
                    duplicate=True,
                )
            )
            session.commit()
            return Proposal(
                existing.id, duplicate=True, result=evaluation.result if evaluation else None
            )

    def _insert(self, session: Session, spec: CandidateSpec, key: str) -> Proposal:
        candidate = m.Candidate(
            task_id=self.task_id,
            run_id=self.run_id,
            source=spec.source,
            params=dict(spec.params),
            key_sha256=key,
            source_sha256=repository.sha256(normalise_source(spec.source)),
            emitter=spec.emitter,
            parent_ids=list(spec.parent_ids),
            label=spec.label,
            genome=list(spec.genome) if spec.genome is not None else None,
        )
        session.add(candidate)
        session.flush()
        session.add(
            m.Proposal(
                run_id=self.run_id,
                candidate_id=candidate.id,
                emitter=spec.emitter,
                duplicate=False,
            )
        )
        session.commit()
        return Proposal(candidate.id, duplicate=False)

    def reject(self, candidate_id: int, result: dict[str, Any]) -> None:
        """Record a static-gate refusal as the candidate's evaluation (no job)."""
        with self._sessions() as session:
            session.add(evaluation_row(candidate_id, result))
            session.commit()

    def dispatched(self, job: Job) -> None:
        """Record that ``job`` was sent to a worker (again: a no-op)."""
        with self._sessions() as session:
            if session.get(m.Job, job.job_id) is not None:
                return
            session.add(
                m.Job(
                    id=job.job_id,
                    run_id=self.run_id,
                    candidate_id=job.candidate_id,
                    status="dispatched",
                )
            )
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if session.get(m.Job, job.job_id) is None:
                    raise

    def ingest(self, job_result: JobResult) -> bool:
        """Store a job's result and mark the job done; False when the job was already ingested.

        A result for a job that was never recorded as dispatched (or was marked lost) is
        still stored: the measurement is valid.
        """
        job_id = job_result.job_id
        with self._sessions() as session:
            if _evaluation_of_job(session, job_id) is not None:
                return False
            result = job_result.result
            job = session.get(m.Job, job_id)
            if job is None:
                job = m.Job(id=job_id, run_id=self.run_id, candidate_id=job_result.candidate_id)
                session.add(job)
                session.flush()  # no relationship() orders the two inserts: the job goes first
            job.status = "done"
            job.finished_at = m.utcnow()
            job.worker = result.get("worker") or job.worker
            session.add(evaluation_row(job_result.candidate_id, result, job_id))
            try:
                session.commit()
            except IntegrityError:
                # Delivered twice and ingested concurrently: the other one won.
                session.rollback()
                if _evaluation_of_job(session, job_id) is not None:
                    return False
                raise
            return True

    def elite_changed(
        self,
        cell: int,
        candidate_id: int,
        objective: float,
        measures: list[float],
        previous_id: int | None,
    ) -> None:
        """Close the cell's current elite (if any) and open ``candidate_id``'s tenure."""
        now = m.utcnow()
        with self._sessions() as session:
            session.execute(
                sa.update(m.Elite)
                .where(
                    m.Elite.run_id == self.run_id,
                    m.Elite.cell == cell,
                    m.Elite.replaced_at.is_(None),
                )
                .values(replaced_at=now)
                .execution_options(synchronize_session=False)
            )
            session.add(
                m.Elite(
                    run_id=self.run_id,
                    cell=int(cell),
                    candidate_id=candidate_id,
                    objective=float(objective),
                    measures=[float(x) for x in measures],
                    created_at=now,
                )
            )
            session.commit()

    def record_stats(self, stats: RunStats) -> None:
        """Append a point to the run's progress curves."""
        with self._sessions() as session:
            session.add(
                m.RunStat(
                    run_id=self.run_id,
                    evaluations=stats.evaluations,
                    elites=stats.elites,
                    coverage=float(stats.coverage),
                    qd_score=float(stats.qd_score),
                    best_objective=_finite(stats.best_objective),
                    best_candidate_id=stats.best_candidate_id,
                    verdicts=dict(stats.verdicts),
                )
            )
            session.commit()

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """Candidates this run created that have no evaluation, by id (to dispatch again).

        Called when a run (re)starts: their jobs still marked ``dispatched`` died with the
        previous controller and are marked ``lost``.
        """
        unevaluated = ~sa.exists().where(m.Evaluation.candidate_id == m.Candidate.id)
        created = sa.select(m.Proposal.candidate_id).where(
            m.Proposal.run_id == self.run_id, m.Proposal.duplicate.is_(False)
        )
        with self._sessions() as session:
            stmt = (
                sa.select(m.Candidate)
                .where(m.Candidate.id.in_(created), unevaluated)
                .order_by(m.Candidate.id)
            )
            candidates = list(session.scalars(stmt))
            session.execute(
                sa.update(m.Job)
                .where(
                    m.Job.run_id == self.run_id,
                    m.Job.status == "dispatched",
                    ~sa.exists().where(m.Evaluation.candidate_id == m.Job.candidate_id),
                )
                .values(status="lost", finished_at=m.utcnow())
                .execution_options(synchronize_session=False)
            )
            session.commit()
            return [(c.id, spec_of(c)) for c in candidates]

    def evaluated(self) -> list[tuple[int, CandidateSpec, dict[str, Any]]]:
        """Every stored evaluation of the candidates this run proposed, in ingestion order.

        A re-measured candidate appears once per evaluation; duplicates of earlier runs'
        candidates come with their stored evaluations. Replaying these rows rebuilds the run.
        """
        with self._sessions() as session:
            pairs = repository.evaluations_of_run(session, self.run_id)
            job_ids = [e.job_id for _, e in pairs if e.job_id]
            stmt = sa.select(m.Job.id, m.Job.run_id).where(m.Job.id.in_(job_ids))
            runs = {job_id: run_id for job_id, run_id in session.execute(stmt)}
            rows = []
            for c, e in pairs:
                result = dict(e.result)
                if e.job_id and runs.get(e.job_id, self.run_id) != self.run_id:
                    result[OTHER_RUN] = True
                rows.append((c.id, spec_of(c), result))
            return rows

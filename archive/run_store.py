"""The search loop's :class:`evolution.ports.Store`, backed by the database, for one run.

Each call is one short transaction that commits before returning, so a killed controller loses
at most the call in flight. The loop uses the batch methods: one transaction per round of
proposals, per round of jobs and per batch of results (with the elite changes and progress
points it produced), written as multi-row Core statements: at hundreds of results per second,
per-call commits and the ORM's per-object bookkeeping were most of the controller's time.

Duplicate detection (per task, across runs) and ingestion (per job id) are enforced by unique
constraints with ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite), so two
processes racing on the same candidate or the same result end with one row, not two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from archive import models as m
from archive import repository
from archive.errors import SchemaError
from archive.rows import candidate_keys, evaluation_values, finite_or_none, spec_of
from archive.status import JobStatus
from evolution.candidate import CandidateSpec
from evolution.ports import OTHER_RUN, EliteChange, Job, JobResult, Proposal, RunStats

# INSERT statements with ON CONFLICT, per backend.
_INSERTS: dict[str, Callable[[Any], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}
# The tables, for Core statements (the hot paths skip the ORM's per-object bookkeeping).
_CANDIDATES = m.Candidate.__table__
_PROPOSALS = m.Proposal.__table__
_JOBS = m.Job.__table__
_EVALUATIONS = m.Evaluation.__table__
_ELITES = m.Elite.__table__
_RUN_STATS = m.RunStat.__table__


def _evaluation_insert(backend: str) -> tuple[Any, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The INSERT of evaluations (skipping ingested jobs, returning the job ids inserted), and
    how to turn :func:`evaluation_values` into its parameters.

    On PostgreSQL the ``timing`` column is taken from the result on the server: the timing
    block (raw samples and all) is half of a result, so the result is serialised, sent and
    parsed once instead of twice. The stored values are the same (a null timing is NULL).
    """
    insert = _INSERTS[backend](_EVALUATIONS).on_conflict_do_nothing(index_elements=["job_id"])
    if backend != "postgresql":
        return insert.returning(_EVALUATIONS.c.job_id), lambda values: values
    doc = sa.bindparam("result_doc", type_=_EVALUATIONS.c.result.type)
    timing = sa.func.nullif(
        sa.cast(doc, postgresql.JSONB)["timing"], sa.cast(sa.literal("null"), postgresql.JSONB)
    )

    def adapt(values: dict[str, Any]) -> dict[str, Any]:
        out = dict(values)
        out["result_doc"] = out.pop("result")
        del out["timing"]
        return out

    stmt = insert.values(result=doc, timing=timing).returning(_EVALUATIONS.c.job_id)
    return stmt, adapt


class RunStore:
    """:class:`evolution.ports.Store` of run ``run_id``.

    Parameters
    ----------
    session_factory:
        Makes sessions (see :func:`archive.db.session_factory`); the schema must be current.
    run_id:
        The run; raises :class:`~archive.errors.RunNotFound` if there is none.
    fence:
        Called first in every write transaction with its session; it raises to refuse the
        write (:meth:`services.runs.ownership.RunOwnership.fence`: the run's lease is no
        longer this process's, see :mod:`archive.run_leases`).

    Raises
    ------
    SchemaError
        The database is neither PostgreSQL nor SQLite.
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        run_id: int,
        *,
        fence: Callable[[Session], None] | None = None,
    ) -> None:
        self._sessions = session_factory
        self.run_id = run_id
        self._fence = fence or (lambda session: None)
        with self._sessions() as session:
            self.task_id = repository.get_run(session, run_id).task_id
            backend = session.get_bind().dialect.name
        if backend not in _INSERTS:
            raise SchemaError(
                f"kernelmap keeps its archive in SQLite or PostgreSQL, not {backend}: "
                "give a sqlite:/// or postgresql+psycopg:// database URL"
            )
        self._insert = _INSERTS[backend]
        self._evaluation_insert = _evaluation_insert(backend)

    # --- proposals and jobs -------------------------------------------------------------------

    def propose(self, spec: CandidateSpec) -> Proposal:
        """Record one proposal (see :meth:`propose_many`)."""
        return self.propose_many([spec])[0]

    def propose_many(self, specs: Sequence[CandidateSpec]) -> list[Proposal]:
        """Record proposals in order, in one transaction; a candidate the task has is a duplicate.

        A duplicate comes back with the existing candidate's id and its newest evaluation's
        result (None while it is being evaluated); a spec with the key of an earlier spec of
        the batch is a duplicate of it. Either way a proposal row is recorded per spec.
        """
        if not specs:
            return []
        hashes = [candidate_keys(spec) for spec in specs]
        keys = [key for key, _ in hashes]
        with self._sessions() as session:
            self._fence(session)
            ids = repository.candidate_ids_by_key(session, self.task_id, keys)
            # key -> (the first spec with it, its source sha256), for keys the task lacks
            new: dict[str, tuple[CandidateSpec, str]] = {}
            for spec, (key, source_sha) in zip(specs, hashes, strict=True):
                if key not in ids:
                    new.setdefault(key, (spec, source_sha))
            created = self._insert_candidates(session, new)
            raced = [key for key in new if key not in created]
            if raced:
                # Another process inserted these keys since our lookup (ON CONFLICT skipped
                # them): they are duplicates of its rows.
                ids.update(repository.candidate_ids_by_key(session, self.task_id, raced))
                if missing := [key for key in raced if key not in ids]:
                    raise RuntimeError(f"candidate keys {missing} were neither inserted nor found")
            results = repository.latest_results(session, list(ids.values()))
            out: list[Proposal] = []
            for key in keys:
                if key in created:
                    # The first spec with a new key created it; later ones are duplicates.
                    out.append(Proposal(created.pop(key), duplicate=False))
                    ids[key] = out[-1].candidate_id
                else:
                    cid = ids[key]
                    out.append(Proposal(cid, duplicate=True, result=results.get(cid)))
            session.execute(
                sa.insert(_PROPOSALS),
                [
                    {
                        "run_id": self.run_id,
                        "candidate_id": p.candidate_id,
                        "emitter": spec.emitter,
                        "duplicate": p.duplicate,
                    }
                    for spec, p in zip(specs, out, strict=True)
                ],
            )
            session.commit()
            return out

    def _insert_candidates(
        self, session: Session, new: dict[str, tuple[CandidateSpec, str]]
    ) -> dict[str, int]:
        """Insert candidates by key, skipping keys that exist; returns key -> id of those made."""
        if not new:
            return {}
        rows = [
            {
                "task_id": self.task_id,
                "run_id": self.run_id,
                "source": spec.source,
                "params": dict(spec.params),
                "key_sha256": key,
                "source_sha256": source_sha,
                "emitter": spec.emitter,
                "parent_ids": list(spec.parent_ids),
                "label": spec.label,
                "genome": list(spec.genome) if spec.genome is not None else None,
            }
            # In key order: two runs proposing overlapping batches at once then wait on each
            # other's keys in the same order (on PostgreSQL) instead of deadlocking.
            for key, (spec, source_sha) in sorted(new.items())
        ]
        stmt = (
            self._insert(_CANDIDATES)
            .on_conflict_do_nothing(index_elements=["task_id", "key_sha256"])
            .returning(_CANDIDATES.c.key_sha256, _CANDIDATES.c.id)
        )
        return {key: cid for key, cid in session.execute(stmt, rows)}

    def reject(self, candidate_id: int, result: dict[str, Any]) -> None:
        """Record a static-gate refusal as the candidate's evaluation (no job)."""
        with self._sessions() as session:
            self._fence(session)
            session.execute(sa.insert(_EVALUATIONS), [evaluation_values(candidate_id, result)])
            session.commit()

    def dispatched(self, job: Job) -> None:
        """Record that ``job`` was sent to a worker (again: a no-op)."""
        self.dispatched_many([job])

    def dispatched_many(self, jobs: Sequence[Job]) -> None:
        """Record, in one transaction, that ``jobs`` are sent to workers (a known job is
        ``dispatched`` again unless it is done)."""
        if not jobs:
            return
        now = m.utcnow()
        rows = [
            {
                "id": job.job_id,
                "run_id": self.run_id,
                "candidate_id": job.candidate_id,
                "status": JobStatus.DISPATCHED,
                "created_at": now,
            }
            for job in jobs
        ]
        # A job sent again under its id after a restart is dispatched again (it was ``lost``);
        # a finished one stays done.
        insert = self._insert(_JOBS)
        stmt = insert.on_conflict_do_update(
            index_elements=["id"],
            set_={"status": JobStatus.DISPATCHED, "finished_at": None},
            where=_JOBS.c.status != JobStatus.DONE,
        )
        with self._sessions() as session:
            self._fence(session)
            session.execute(stmt, rows)
            session.commit()

    # --- results, elites, progress ------------------------------------------------------------

    def ingest(self, job_result: JobResult) -> bool:
        """Store one result (see :meth:`ingest_many`); False when the job was already ingested."""
        return self.ingest_many([job_result])[0]

    def ingest_many(
        self,
        results: Sequence[JobResult],
        elites: Sequence[EliteChange] = (),
        stats: Sequence[RunStats] = (),
    ) -> list[bool]:
        """Store results, elite changes and progress points in one transaction.

        Each new result's job is marked done (a job never recorded as dispatched, or marked
        lost, is recorded now: the measurement is valid) and its evaluation stored. A job
        already ingested, by an earlier call, another process or earlier in ``results``, is
        left as it is and reported False. ``elites`` are applied in order: the last change of
        a cell is its current elite, earlier ones are closed at once.

        Returns
        -------
        list[bool]
            Per result, whether it was stored by this call.
        """
        first: dict[str, int] = {}
        for i, r in enumerate(results):
            first.setdefault(r.job_id, i)
        fresh = [False] * len(results)
        if not (first or elites or stats):
            return fresh
        now = m.utcnow()
        with self._sessions() as session:
            self._fence(session)
            # An ingested job is skipped by the statements themselves (its job row is done,
            # its evaluation exists): no lookup first, and no race between lookup and write.
            for job_id in self._store_results(session, [results[i] for i in first.values()], now):
                fresh[first[job_id]] = True
            self._store_elites(session, elites, now)
            if stats:
                session.execute(sa.insert(_RUN_STATS), [self._stat_values(s) for s in stats])
            session.commit()
        return fresh

    def _store_results(self, session: Session, results: list[JobResult], now: Any) -> set[str]:
        """Mark the jobs done and insert their evaluations; returns the job ids inserted."""
        if not results:
            return set()
        upsert = self._insert(_JOBS)
        upsert = upsert.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "status": JobStatus.DONE,
                "finished_at": upsert.excluded.finished_at,
                "worker": sa.func.coalesce(upsert.excluded.worker, _JOBS.c.worker),
            },
            # A job ingested concurrently (its evaluation below then loses) stays as it is.
            where=_JOBS.c.status != JobStatus.DONE,
        )
        session.execute(
            upsert,
            [
                {
                    "id": r.job_id,
                    "run_id": self.run_id,
                    "candidate_id": r.candidate_id,
                    "status": JobStatus.DONE,
                    "worker": r.result.get("worker"),
                    "created_at": now,
                    "finished_at": now,
                }
                # In job id order: two transactions ingesting overlapping batches then lock
                # the jobs in the same order (on PostgreSQL) instead of deadlocking.
                for r in sorted(results, key=lambda r: r.job_id)
            ],
        )
        stmt, adapt = self._evaluation_insert
        rows = [adapt(evaluation_values(r.candidate_id, r.result, r.job_id)) for r in results]
        return set(session.scalars(stmt, rows))

    def _store_elites(self, session: Session, elites: Sequence[EliteChange], now: Any) -> None:
        """Close the changed cells' current elites and open the new tenures, in order."""
        if not elites:
            return
        last = {int(e.cell): i for i, e in enumerate(elites)}
        session.execute(
            sa.update(_ELITES)
            .where(
                _ELITES.c.run_id == self.run_id,
                _ELITES.c.cell.in_(sorted(last)),
                _ELITES.c.replaced_at.is_(None),
            )
            .values(replaced_at=now)
        )
        session.execute(
            sa.insert(_ELITES),
            [
                {
                    "run_id": self.run_id,
                    "cell": int(e.cell),
                    "candidate_id": e.candidate_id,
                    "objective": float(e.objective),
                    "measures": [float(x) for x in e.measures],
                    "created_at": now,
                    # Replaced later in this same batch: closed at once.
                    "replaced_at": None if last[int(e.cell)] == i else now,
                }
                for i, e in enumerate(elites)
            ],
        )

    def _stat_values(self, stats: RunStats) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "evaluations": stats.evaluations,
            "elites": stats.elites,
            "coverage": float(stats.coverage),
            "qd_score": float(stats.qd_score),
            "best_objective": finite_or_none(stats.best_objective),
            "best_candidate_id": stats.best_candidate_id,
            "verdicts": dict(stats.verdicts),
        }

    def elite_changed(
        self,
        cell: int,
        candidate_id: int,
        objective: float,
        measures: list[float],
        previous_id: int | None,
    ) -> None:
        """Close the cell's current elite (if any) and open ``candidate_id``'s tenure."""
        change = EliteChange(cell, candidate_id, objective, tuple(measures), previous_id)
        self.ingest_many([], [change])

    def record_stats(self, stats: RunStats) -> None:
        """Append a point to the run's progress curves."""
        self.ingest_many([], (), [stats])

    # --- resume -------------------------------------------------------------------------------

    def open_jobs(self) -> dict[int, str]:
        """Candidate id -> id of its newest job of this run still ``dispatched`` with no
        evaluation: what a previous controller had in flight. Call before :meth:`pending`
        (which marks those jobs ``lost``); sending them again under these ids makes a late
        result of the old delivery and the new one the same job, ingested once."""
        unevaluated = ~sa.exists().where(m.Evaluation.candidate_id == m.Job.candidate_id)
        stmt = (
            sa.select(m.Job.candidate_id, m.Job.id)
            .where(m.Job.run_id == self.run_id, m.Job.status == JobStatus.DISPATCHED, unevaluated)
            .order_by(m.Job.created_at, m.Job.id)
        )
        with self._sessions() as session:
            return {cid: job_id for cid, job_id in session.execute(stmt)}

    def pending(self) -> list[tuple[int, CandidateSpec]]:
        """Candidates this run created that have no evaluation, by id (to dispatch again).

        Called when a run (re)starts: their jobs still marked ``dispatched`` died with the
        previous controller and are marked ``lost``.
        """
        unevaluated = ~sa.exists().where(m.Evaluation.candidate_id == m.Candidate.id)
        # Its own proposals, and duplicates of never-evaluated candidates it dispatched.
        created = sa.union(
            sa.select(m.Proposal.candidate_id).where(
                m.Proposal.run_id == self.run_id, m.Proposal.duplicate.is_(False)
            ),
            sa.select(m.Job.candidate_id).where(m.Job.run_id == self.run_id),
        )
        with self._sessions() as session:
            self._fence(session)
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
                    m.Job.status == JobStatus.DISPATCHED,
                    ~sa.exists().where(m.Evaluation.candidate_id == m.Job.candidate_id),
                )
                .values(status=JobStatus.LOST, finished_at=m.utcnow())
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

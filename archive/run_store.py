"""The search loop's :class:`evolution.ports.Store`, backed by the database, for one run.

Each call is one short transaction that commits before returning, so a killed controller loses
at most the call in flight. The loop uses the batch methods: one transaction per round of
proposals, per round of jobs and per batch of results (with the elite changes and progress
points it produced), written as multi-row Core statements: at hundreds of results per second,
per-call commits and the ORM's per-object bookkeeping were most of the controller's time.

On PostgreSQL each batch INSERT is one short statement with the batch as one JSON parameter
(``INSERT ... SELECT ... FROM jsonb_to_recordset(:rows) ORDER BY i``, see
:class:`archive.rows.BatchInsert`):
the statement text never changes, so psycopg prepares it once and the server plans it once,
and the rows are serialised by one call of the C JSON encoder (:func:`archive.rows.json_text`).
Multi-row ``VALUES`` lists (SQLAlchemy's "insertmanyvalues") were re-parsed by psycopg and
re-planned by the server on every batch, and one ``executemany`` execution per row cost the
server an executor start per row; together with the JSON columns' cleaning copy that was most
of the store's time. SQLite keeps plain ``executemany`` statements (one process, no round trips).
Results are compressed with lz4 where the server has it (see ``_LZ4``).

Duplicate detection (per task, across runs) and ingestion (per job id) are enforced by unique
constraints with ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite), so two
processes racing on the same candidate or the same result end with one row, not two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import models as m
from archive import repository
from archive.errors import SchemaError
from archive.rows import (
    INSERTS,
    BatchInsert,
    batch_inserts,
    candidate_keys,
    evaluation_values,
    finite_or_none,
    spec_of,
)
from archive.status import JobStatus
from evolution.candidate import CandidateSpec
from evolution.ports import OTHER_RUN, EliteChange, Job, JobResult, Proposal, RunStats

# Results are compressed with lz4 where the server has it (PostgreSQL 14 or later, built with
# lz4; columns without a COMPRESSION of their own follow this setting): a result and its timing
# block (raw samples) are stored compressed, and lz4 cost the server a third less per result
# than the default pglz. The documents read back the same.
_LZ4_AVAILABLE = sa.text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)
_LZ4 = sa.text("SET LOCAL default_toast_compression = lz4")
# The tables, for Core statements (the hot paths skip the ORM's per-object bookkeeping).
_EVALUATIONS = m.Evaluation.__table__
_ELITES = m.Elite.__table__
_RUN_STATS = m.RunStat.__table__


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
            self._lz4 = backend == "postgresql" and bool(session.scalar(_LZ4_AVAILABLE))
        if backend not in INSERTS:
            raise SchemaError(
                f"kernelmap keeps its archive in SQLite or PostgreSQL, not {backend}: "
                "give a sqlite:/// or postgresql+psycopg:// database URL"
            )
        self._timing_from_result = backend == "postgresql"  # see batch_inserts()
        self._batch: dict[str, BatchInsert] = batch_inserts(backend)

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
        now = m.utcnow()
        with self._sessions() as session:
            self._fence(session)
            ids = repository.candidate_ids_by_key(session, self.task_id, keys)
            # key -> (the first spec with it, its source sha256), for keys the task lacks
            new: dict[str, tuple[CandidateSpec, str]] = {}
            for spec, (key, source_sha) in zip(specs, hashes, strict=True):
                if key not in ids:
                    new.setdefault(key, (spec, source_sha))
            created = self._insert_candidates(session, new, now)
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
            self._batch["proposals"].execute(
                session,
                [
                    {
                        "candidate_id": p.candidate_id,
                        "emitter": spec.emitter,
                        "duplicate": p.duplicate,
                    }
                    for spec, p in zip(specs, out, strict=True)
                ],
                run_id=self.run_id,
                created_at=now,
            )
            session.commit()
            return out

    def _insert_candidates(
        self, session: Session, new: dict[str, tuple[CandidateSpec, str]], now: Any
    ) -> dict[str, int]:
        """Insert candidates by key, skipping keys that exist; returns key -> id of those made."""
        if not new:
            return {}
        rows = [
            {
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
        made = self._batch["candidates"].execute(
            session, rows, task_id=self.task_id, run_id=self.run_id, created_at=now
        )
        return {key: cid for key, cid in made}

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
        # One row per job id (the first): a multi-row upsert may not touch a row twice.
        rows: dict[str, dict[str, Any]] = {}
        for job in jobs:
            rows.setdefault(job.job_id, {"id": job.job_id, "candidate_id": job.candidate_id})
        with self._sessions() as session:
            self._fence(session)
            self._batch["dispatched"].execute(
                session,
                list(rows.values()),
                run_id=self.run_id,
                status=JobStatus.DISPATCHED,
                created_at=m.utcnow(),
            )
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
            if self._lz4 and first:
                session.execute(_LZ4)
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
        self._batch["done"].execute(
            session,
            [
                {"id": r.job_id, "candidate_id": r.candidate_id, "worker": r.result.get("worker")}
                # In job id order: two transactions ingesting overlapping batches then lock
                # the jobs in the same order (on PostgreSQL) instead of deadlocking.
                for r in sorted(results, key=lambda r: r.job_id)
            ],
            run_id=self.run_id,
            status=JobStatus.DONE,
            created_at=now,
            finished_at=now,
        )
        rows = [evaluation_values(r.candidate_id, r.result, r.job_id) for r in results]
        if self._timing_from_result:
            for row in rows:
                del row["timing"]
        inserted = self._batch["evaluations"].execute(session, rows, created_at=now)
        return set(inserted.scalars())

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

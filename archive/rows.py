"""The search loop's values as the archive stores them, and back, and the batch INSERTs that
write them.

A :class:`~evolution.candidate.CandidateSpec` is stored as a candidate under its duplicate-detection
keys (:func:`candidate_keys`) and read back with :func:`spec_of`; an evaluator result dict is
stored as an evaluation whose columns :func:`evaluation_values` picks out of it (non-finite
numbers become NULL). :func:`json_text` writes JSON documents as the database's JSON columns
store them. :class:`BatchInsert` writes a batch of rows in one statement (on PostgreSQL with the
batch as one JSON parameter); :func:`batch_inserts` are those of
:class:`archive.run_store.RunStore`. Used by :mod:`archive.run_store` and by benchmarks that
fill a database."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from archive import models as m
from archive.db import json_dumps
from archive.status import JobStatus
from evolution.candidate import CandidateSpec, normalised_digest, outcome_from_result


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None for None, NaN and infinities (stored as NULL)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_text(value: Any) -> str:
    """``value`` as JSON text, as :func:`archive.db.json_dumps` (the JSON columns' serialiser)
    writes it: at once by the C encoder for plain JSON, cleaned first otherwise."""
    return json_dumps(value)


def candidate_keys(spec: CandidateSpec) -> tuple[str, str]:
    """``(key_sha256, source_sha256)`` of a spec, as stored on its candidate.

    ``key_sha256`` is :attr:`CandidateSpec.key` (:func:`evolution.candidate.candidate_key`),
    computed from the source's cached canonical form; ``source_sha256`` is the sha256 of
    the canonical form (:mod:`evolution.canonical`).
    """
    source_hash = normalised_digest(spec.source)  # cached: once per distinct source
    key = source_hash.copy()
    key.update(b"\0" + json.dumps(spec.params, sort_keys=True, default=str).encode())
    return key.hexdigest(), source_hash.hexdigest()


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


def evaluation_values(
    candidate_id: int, result: dict[str, Any], job_id: str | None = None
) -> dict[str, Any]:
    """The column values of an :class:`~archive.models.Evaluation` of an evaluator result."""
    outcome = outcome_from_result(candidate_id, result)
    objective = finite_or_none(outcome.objective)
    return {
        "candidate_id": candidate_id,
        "job_id": job_id,
        "verdict": outcome.verdict,
        "correct": bool(result.get("correct", False)),
        "objective": objective,
        "objective_label": outcome.objective_label if objective is not None else None,
        "speedup_vs_eager": finite_or_none(result.get("speedup_vs_eager")),
        "speedup_vs_compile": finite_or_none(result.get("speedup_vs_compile")),
        "messages": list(result.get("messages") or []),
        "timing": result.get("timing"),
        "features": dict(result.get("features") or {}),
        "hardware": dict(result.get("hardware") or {}),
        "params": dict(result.get("params") or {}),
        "worker": result.get("worker"),
        "duration_s": finite_or_none((result.get("stages_s") or {}).get("total_s")),
        "result": result,
    }


def evaluation_row(
    candidate_id: int, result: dict[str, Any], job_id: str | None = None
) -> m.Evaluation:
    """An :class:`~archive.models.Evaluation` filled from an evaluator result dict."""
    return m.Evaluation(**evaluation_values(candidate_id, result, job_id))


# --- writing batches of rows ----------------------------------------------------------------

#: INSERT statements with ON CONFLICT, per backend (the backends the archive runs on).
INSERTS: dict[str, Callable[[Any], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}
_CANDIDATES = m.Candidate.__table__
_PROPOSALS = m.Proposal.__table__
_JOBS = m.Job.__table__
_EVALUATIONS = m.Evaluation.__table__

#: A parameter sent as the text it is given (no serialiser, no cast): PostgreSQL types it by
#: where it is used (the jsonb argument of ``jsonb_to_recordset``).
_AS_GIVEN = sa.types.NullType()


@dataclasses.dataclass(frozen=True)
class BatchInsert:
    """An INSERT of a batch of rows into ``table``, built for one backend.

    Each row gives the columns ``per_row``; the columns ``constants`` take the same value in
    every row (the run, the time); on PostgreSQL ``derived`` computes further columns from the
    row's columns (SQL expressions on the batch table). Run it with :meth:`execute`.
    """

    table: sa.Table
    per_row: tuple[str, ...]
    constants: tuple[str, ...]
    backend: str
    finish: Callable[[Any], Any] = lambda insert: insert
    derived: Callable[[Any], dict[str, Any]] = lambda batch: {}
    #: The statement, built once (SQLAlchemy caches its compiled form).
    statement: Any = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend != "postgresql":
            # executemany: the rows carry every column (execute() merges the constants in).
            stmt = self.finish(INSERTS[self.backend](self.table))
        else:
            # The rows arrive as one JSON array of objects ({"i": position, column: value...})
            # and are inserted in the order of "i" (ids, lock order).
            columns = [sa.column(n, self.table.c[n].type) for n in self.per_row]
            batch = (
                sa.func.jsonb_to_recordset(sa.bindparam("rows", type_=_AS_GIVEN))
                .table_valued(sa.column("i", sa.Integer), *columns)
                .render_derived(name="batch", with_types=True)
            )
            values = {n: batch.c[n] for n in self.per_row}
            values.update((n, sa.bindparam(n, type_=self.table.c[n].type)) for n in self.constants)
            values.update(self.derived(batch))
            select = sa.select(*values.values()).order_by(batch.c.i)
            insert = postgresql.insert(self.table).from_select(
                list(values), select, include_defaults=False
            )
            stmt = self.finish(insert)
        object.__setattr__(self, "statement", stmt)

    def execute(
        self, session: Session, rows: Sequence[dict[str, Any]], **constants: Any
    ) -> sa.CursorResult[Any]:
        """Insert ``rows`` (dicts of the ``per_row`` columns, in order) with ``constants``."""
        if self.backend == "postgresql":
            batch = json_text([{"i": i, **row} for i, row in enumerate(rows)])
            return session.execute(self.statement, {"rows": batch, **constants})
        return session.execute(self.statement, [{**row, **constants} for row in rows])


def batch_inserts(backend: str) -> dict[str, BatchInsert]:
    """The batch INSERTs of :class:`archive.run_store.RunStore` for ``backend``, by name."""
    pg = backend == "postgresql"
    spec_columns = ("source", "params", "emitter", "parent_ids", "label", "genome")
    candidates = BatchInsert(
        _CANDIDATES,
        ("key_sha256", "source_sha256", *spec_columns),
        ("task_id", "run_id", "created_at"),
        backend,
        finish=lambda insert: insert.on_conflict_do_nothing(
            index_elements=["task_id", "key_sha256"]
        ).returning(_CANDIDATES.c.key_sha256, _CANDIDATES.c.id),
    )
    proposals = BatchInsert(
        _PROPOSALS, ("candidate_id", "emitter", "duplicate"), ("run_id", "created_at"), backend
    )

    # A job sent again under its id after a restart is dispatched again (it was ``lost``); a
    # finished one stays done.
    def redispatch(insert: Any) -> Any:
        return insert.on_conflict_do_update(
            index_elements=["id"],
            set_={"status": JobStatus.DISPATCHED, "finished_at": None},
            where=_JOBS.c.status != JobStatus.DONE,
        )

    dispatched = BatchInsert(
        _JOBS, ("id", "candidate_id"), ("run_id", "status", "created_at"), backend, redispatch
    )

    # A job ingested concurrently (its evaluation then loses) stays as it is.
    def finished(insert: Any) -> Any:
        return insert.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "status": JobStatus.DONE,
                "finished_at": insert.excluded.finished_at,
                "worker": sa.func.coalesce(insert.excluded.worker, _JOBS.c.worker),
            },
            where=_JOBS.c.status != JobStatus.DONE,
        )

    done = BatchInsert(
        _JOBS,
        ("id", "candidate_id", "worker"),
        ("run_id", "status", "created_at", "finished_at"),
        backend,
        finished,
    )
    # On PostgreSQL the ``timing`` column is taken from the result on the server: the timing
    # block (raw samples and all) is half of a result, so it is serialised, sent and parsed
    # once instead of twice. The stored values are the same (a null timing is NULL).
    columns = [c for c in _EVALUATION_COLUMNS if not (pg and c == "timing")]
    evaluations = BatchInsert(
        _EVALUATIONS,
        tuple(columns),
        ("created_at",),
        backend,
        finish=lambda insert: insert.on_conflict_do_nothing(index_elements=["job_id"]).returning(
            _EVALUATIONS.c.job_id
        ),
        derived=lambda batch: {
            "timing": sa.func.nullif(batch.c.result["timing"], sa.literal_column("'null'::jsonb"))
        },
    )
    return {
        "candidates": candidates,
        "proposals": proposals,
        "dispatched": dispatched,
        "done": done,
        "evaluations": evaluations,
    }


#: The columns :func:`archive.rows.evaluation_values` fills.
_EVALUATION_COLUMNS = tuple(evaluation_values(0, {}))

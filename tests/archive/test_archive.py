"""The database archive on SQLite and PostgreSQL: migrations, engine settings, repository."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from archive import db, repository
from archive.errors import RunNotFound, SchemaError, TaskNotFound
from archive.models import Base, Elite, Evaluation
from archive.models import Job as JobRow
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import Job, JobResult, RunStats

TABLES = {
    "tasks",
    "runs",
    "candidates",
    "proposals",
    "jobs",
    "evaluations",
    "elites",
    "run_stats",
}


def ok_result(median_ms: float = 1.0, eager_ms: float = 2.0) -> dict:
    """A correct GPU result shaped like ``EvalResult.to_dict()``."""
    return {
        "verdict": "OK",
        "correct": True,
        "speedup_vs_eager": eager_ms / median_ms,
        "speedup_vs_compile": None,
        "timing": {
            "device": "cuda",
            "method": "cuda-events",
            "candidate": {"median_ms": median_ms, "iqr_ms": 0.01, "samples_ms": [median_ms] * 3},
            "eager": {"median_ms": eager_ms, "iqr_ms": 0.02, "samples_ms": [eager_ms] * 3},
            "compile": None,
        },
        "features": {"tensor_cores": 0},
        "messages": [],
        "device": "cuda",
        "hardware": {"name": "NVIDIA H100"},
        "stages_s": {"total_s": 3.5},
        "params": {"BLOCK": 256},
    }


# -- engine and migrations ---------------------------------------------------------------------


def test_fresh_database_is_migrated_to_head_and_ensure_schema_is_idempotent(db_url):
    eng = db.make_engine(db_url)
    try:
        assert db.current_revision(eng) is None
        db.ensure_schema(eng)
        assert db.current_revision(eng) == db.head_revision()
        assert TABLES <= set(sa.inspect(eng).get_table_names())
        db.ensure_schema(eng)  # a second command opening the same database
        db.upgrade(db_url)  # and by URL
        assert db.current_revision(eng) == db.head_revision()
    finally:
        eng.dispose()


def test_commands_opening_a_fresh_database_at_once_all_succeed(db_url):
    # Separate processes (a controller, API workers) and threads of one process, all released
    # at the same instant once imported.
    start = time.time() + 2.0
    script = (
        "import sys, time; from archive import db; e = db.make_engine(sys.argv[1]); "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); db.ensure_schema(e)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, db_url, str(start)]) for _ in range(3)]
    engines = [db.make_engine(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def open_database(eng: Engine) -> None:
        try:
            time.sleep(max(0.0, start - time.time()))
            db.ensure_schema(eng)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_database, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
        assert errors == []
        assert db.current_revision(engines[0]) == db.head_revision()
    finally:
        for eng in engines:
            eng.dispose()


def test_migrations_match_the_models(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_database_from_a_newer_kernelmap_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fffffff'"))
    with pytest.raises(SchemaError, match="upgrade kernelmap"):
        db.ensure_schema(engine)


def test_tables_without_alembic_version_are_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
    with pytest.raises(SchemaError, match="fresh database"):
        db.ensure_schema(engine)


def test_sqlite_file_directory_is_created_with_wal_busy_timeout_and_foreign_keys(tmp_path):
    url = db.default_url(tmp_path / "not" / "yet")
    assert url == f"sqlite:///{tmp_path / 'not' / 'yet' / 'kernelmap.db'}"
    eng = db.make_engine(url)
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == (
                db.SQLITE_BUSY_TIMEOUT_MS
            )
        assert (tmp_path / "not" / "yet" / "kernelmap.db").exists()
    finally:
        eng.dispose()


def test_foreign_keys_are_enforced(sessions):
    with sessions() as s:
        with pytest.raises(TaskNotFound):
            repository.create_run(s, 999, budget=1, seed=0, device="cpu", objective_label="x")
        s.add(Elite(run_id=999, cell=0, candidate_id=999, objective=0.0, measures=[]))
        with pytest.raises(sa.exc.IntegrityError):
            s.flush()


# -- repository --------------------------------------------------------------------------------


def make_run(s: Session, source: str = "class Model: pass\n") -> int:
    task = repository.add_task(s, "softmax", source, meta={"ATOL": 1e-4}, validation={"ok": 1})
    run = repository.create_run(
        s,
        task.id,
        budget=100,
        seed=2**32 - 1,  # numpy's largest seed
        device="cuda",
        objective_label="gpu-speedup",
        config={"emitters": ["params"]},
    )
    s.commit()
    return run.id


def test_tasks_and_runs_round_trip(sessions):
    with sessions() as s:
        run_id = make_run(s)
        other = make_run(s, "class Model: x = 1\n")
    with sessions() as s:
        run = repository.get_run(s, run_id)
        assert run.status == "queued" and run.config == {"emitters": ["params"]}
        assert run.started_at is None and run.archive_state is None and run.seed == 2**32 - 1
        assert [r.id for r in repository.list_runs(s)] == [other, run_id]
        assert [r.id for r in repository.list_runs(s, limit=1)] == [other]
        task = repository.get_task(s, run.task_id)
        assert task.meta == {"ATOL": 1e-4}
        assert repository.find_task_by_sha(s, task.source_sha256).id == task.id
        assert repository.find_task_by_sha(s, "0" * 64) is None
        with pytest.raises(RunNotFound, match="kernelmap runs"):
            repository.get_run(s, 12345)


def test_run_status_stamps_times_in_utc(sessions):
    with sessions() as s:
        run_id = make_run(s)
        repository.set_run_status(s, run_id, "running")
        s.commit()
    with sessions() as s:
        run = repository.get_run(s, run_id)
        assert run.started_at.tzinfo is not None and run.finished_at is None
        assert abs(run.started_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
        started = run.started_at
        repository.set_run_status(s, run_id, "failed", error="worker pool died")
        s.commit()
    with sessions() as s:
        run = repository.get_run(s, run_id)
        assert run.status == "failed" and run.error == "worker pool died"
        assert run.finished_at >= started
        assert [r.id for r in repository.list_runs(s, status="failed")] == [run_id]
        repository.set_run_status(s, run_id, "running")  # resumed
        assert run.finished_at is None and run.error is None and run.started_at == started
        with pytest.raises(ValueError, match="unknown run status"):
            repository.set_run_status(s, run_id, "sleeping")


def test_candidates_of_run_show_newest_verdict_and_filter(sessions):
    with sessions() as s:
        run_id = make_run(s)
    store = RunStore(sessions, run_id)
    a = store.propose(CandidateSpec("A = 1\n")).candidate_id
    b = store.propose(CandidateSpec("B = 1\n")).candidate_id
    c = store.propose(CandidateSpec("C = 1\n")).candidate_id
    store.reject(b, {"verdict": "STATIC_REJECT", "messages": ["uses torch.nn.functional"]})
    store.ingest(JobResult("j-a", a, {"verdict": "INCORRECT", "correct": False}))
    store.ingest(JobResult("j-a2", a, ok_result()))  # re-measured later: newest counts
    with sessions() as s:
        rows = repository.candidates_of_run(s, run_id)
        assert [(c_.id, e.verdict if e else None) for c_, e in rows] == [
            (a, "OK"),
            (b, "STATIC_REJECT"),
            (c, None),
        ]
        only_ok = repository.candidates_of_run(s, run_id, verdict="OK")
        assert [c_.id for c_, _ in only_ok] == [a]
        assert [c_.id for c_, _ in repository.candidates_of_run(s, run_id, limit=1, offset=1)] == [
            b
        ]
        assert repository.verdict_counts(s, run_id) == {"OK": 1, "STATIC_REJECT": 1}
        assert repository.latest_evaluation(s, a).job_id == "j-a2"
        assert repository.candidate_in_run(s, run_id, a)
        assert not repository.candidate_in_run(s, run_id + 1, a)


def test_evaluation_columns_are_filled_from_the_result(sessions):
    with sessions() as s:
        run_id = make_run(s)
    store = RunStore(sessions, run_id)
    cid = store.propose(CandidateSpec("A = 1\n", params={"BLOCK": 256})).candidate_id
    result = ok_result(median_ms=0.5, eager_ms=2.0)
    result["features"]["nan_feature"] = float("nan")  # JSONB rejects NaN: stored as null
    result["features"]["numpy"] = np.float32(0.5)
    store.ingest(JobResult("j1", cid, result))
    with sessions() as s:
        ev = repository.latest_evaluation(s, cid)
        assert ev.verdict == "OK" and ev.correct is True
        assert ev.objective == pytest.approx(math.log(4.0))
        assert ev.objective_label == "gpu-speedup"
        assert ev.speedup_vs_eager == pytest.approx(4.0) and ev.speedup_vs_compile is None
        assert ev.duration_s == 3.5 and ev.params == {"BLOCK": 256}
        assert ev.hardware == {"name": "NVIDIA H100"}
        assert ev.timing["candidate"]["samples_ms"] == [0.5] * 3
        assert ev.features == {"tensor_cores": 0, "nan_feature": None, "numpy": 0.5}
        assert ev.result["verdict"] == "OK" and ev.created_at.tzinfo is not None
        n_ok = s.scalar(sa.select(sa.func.count()).where(Evaluation.verdict == "OK"))
        assert n_ok == 1


def test_best_elite_and_stats(sessions):
    with sessions() as s:
        run_id = make_run(s)
    store = RunStore(sessions, run_id)
    a = store.propose(CandidateSpec("A = 1\n")).candidate_id
    b = store.propose(CandidateSpec("B = 1\n")).candidate_id
    with sessions() as s:
        assert repository.best_elite(s, run_id) is None
        assert repository.latest_run_stat(s, run_id) is None
    store.elite_changed(0, a, 0.5, [0.1, 0.2], None)
    store.elite_changed(1, b, 0.9, [0.7, 0.2], None)
    store.record_stats(RunStats(2, 2, 0.02, 1.4, 0.9, b, {"OK": 2}))
    store.record_stats(RunStats(3, 2, 0.02, 1.4, 0.9, b, {"OK": 2, "INCORRECT": 1}))
    with sessions() as s:
        best = repository.best_elite(s, run_id)
        assert (best.candidate_id, best.cell, best.measures) == (b, 1, [0.7, 0.2])
        stats = repository.run_stats(s, run_id)
        assert [p.evaluations for p in stats] == [2, 3]
        assert repository.latest_run_stat(s, run_id).verdicts == {"OK": 2, "INCORRECT": 1}


def test_store_dispatch_job_rows(sessions):
    with sessions() as s:
        run_id = make_run(s)
    store = RunStore(sessions, run_id)
    cid = store.propose(CandidateSpec("A = 1\n")).candidate_id
    job = Job("job-1", cid, "A = 1\n", {})
    store.dispatched(job)
    store.dispatched(job)  # re-sent: still one row
    with sessions() as s:
        rows = list(s.scalars(sa.select(JobRow)))
        assert [(j.id, j.status, j.run_id) for j in rows] == [("job-1", "dispatched", run_id)]

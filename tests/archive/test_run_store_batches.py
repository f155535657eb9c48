"""RunStore's batch statements on SQLite and PostgreSQL: what they store, fenced and repeated.

The batch INSERTs (one JSON parameter per batch on PostgreSQL) store each value as the JSON
columns did before (floats exactly, non-finite numbers as null, numpy values as plain ones), a
batch sent twice stores once, and a store whose lease was lost writes nothing at all: no
proposal, job, evaluation, elite or progress point.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository
from archive import models as m
from archive.rows import json_text
from archive.run_leases import LeaseLost
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import EliteChange, Job, JobResult, RunStats
from services.runs.ownership import RunOwnership
from tests.clock import Clock


def _run(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        task = repository.add_task(s, "softmax", "class Model: pass\n")
        run = repository.create_run(
            s, task.id, budget=10, seed=0, device="cuda", objective_label="gpu-speedup"
        )
        s.commit()
        return run.id


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model))


def _timed(median_ms: float, samples: list) -> dict:
    stats = {"median_ms": median_ms, "samples_ms": samples, "ci95_ms": [0.9 * median_ms, 1.1]}
    return {
        "verdict": "OK",
        "correct": True,
        "device": "cuda",
        "speedup_vs_eager": 1 / median_ms,
        "timing": {"device": "cuda", "candidate": stats, "eager": {"median_ms": 1.0}},
        "features": {"n_regs": 40, "note": 'quotes " and \\ backslashes, \u00e9'},
        "params": {"BLOCK": 256},
        "stages_s": {"total_s": 1.25},
    }


def test_json_text_writes_what_the_json_columns_write() -> None:
    plain = {"a": [0.1, 1 / 3, 1e-300, 12345678.123456789], "b": {"c": None, "d": "é\n"}}
    odd = {"nan": math.nan, "inf": [math.inf], "np": np.float32(0.5), "i": np.int64(3)}
    for value in (plain, odd, [plain, odd], None, "text"):
        assert json_text(value) == db.json_dumps(value)
    assert json.loads(json_text(odd)) == {"nan": None, "inf": [None], "np": 0.5, "i": 3}


def test_batch_values_are_stored_exactly(sessions) -> None:
    store = RunStore(sessions, _run(sessions))
    spec = CandidateSpec("K = 1\n", {"BLOCK": 256, "x": 0.1}, "params", (7, 8), "k", (0.25, 1e-9))
    (p,) = store.propose_many([spec])
    samples = [0.1 + i / 3 for i in range(100)]
    exact = _timed(0.4123456789012345, samples)
    odd = _timed(0.5, [math.nan, 1.0])  # a NaN sample: stored as null, like the JSON columns
    odd["features"]["n_regs"] = np.int64(48)  # numpy values: stored as plain ones
    failed = {"verdict": "INCORRECT", "correct": False, "messages": ["max abs error 3e-1"]}
    batch = [JobResult(f"j{i}", p.candidate_id, r) for i, r in enumerate((exact, odd, failed))]
    assert store.ingest_many(batch) == [True, True, True]
    with sessions() as s:
        rows = {e.job_id: e for e in s.scalars(sa.select(m.Evaluation))}
        cand = repository.get_candidate(s, p.candidate_id)
    assert rows["j0"].result == exact and rows["j0"].timing == exact["timing"]
    assert rows["j0"].timing["candidate"]["samples_ms"] == samples  # every float exactly
    assert rows["j0"].objective == math.log(1.0 / 0.4123456789012345)
    assert rows["j0"].features == exact["features"] and rows["j0"].duration_s == 1.25
    assert rows["j1"].result["timing"]["candidate"]["samples_ms"] == [None, 1.0]
    assert rows["j1"].features["n_regs"] == 48
    assert rows["j2"].timing is None and rows["j2"].messages == ["max abs error 3e-1"]
    assert [rows[f"j{i}"].id for i in range(3)] == sorted(e.id for e in rows.values())
    assert (cand.params, cand.parent_ids, cand.genome) == (
        {"BLOCK": 256, "x": 0.1},
        [7, 8],
        [0.25, 1e-9],
    )
    assert [(cid, got) for cid, got, _ in store.evaluated()] == [(p.candidate_id, spec)] * 3


def test_a_batch_sent_twice_stores_once(sessions) -> None:
    store = RunStore(sessions, _run(sessions))
    props = store.propose_many([CandidateSpec(f"K = {i}\n") for i in range(4)])
    jobs = [Job(f"j{i}", p.candidate_id, "", {}) for i, p in enumerate(props)]
    store.dispatched_many(jobs + jobs[:2])  # a job twice in one round: one row
    store.dispatched_many(jobs)
    results = [JobResult(j.job_id, j.candidate_id, _timed(0.5, [0.5])) for j in jobs]
    assert store.ingest_many(results) == [True] * 4
    assert store.ingest_many(results[::-1]) == [False] * 4
    store.dispatched_many(jobs)  # done jobs stay done
    assert _count(sessions, m.Evaluation) == 4 and _count(sessions, m.Job) == 4
    with sessions() as s:
        assert set(s.scalars(sa.select(m.Job.status))) == {"done"}


def test_a_store_whose_lease_was_lost_writes_nothing(sessions) -> None:
    run_id = _run(sessions)
    clock = Clock()
    old = RunOwnership(sessions, run_id, "ctl-old", 3.0, clock=clock, notify=lambda _: None)
    assert old.acquire()
    store = RunStore(sessions, run_id, fence=old.fence)
    props = store.propose_many([CandidateSpec(f"K = {i}\n") for i in range(3)])
    jobs = [Job(f"j{i}", p.candidate_id, "", {}) for i, p in enumerate(props)]
    store.dispatched_many(jobs)
    before = {model: _count(sessions, model) for model in (m.Candidate, m.Proposal, m.Job)}

    clock.advance(10)  # the old owner stalled past its lease...
    assert RunOwnership(sessions, run_id, "ctl-new", 3.0, clock=clock).acquire()  # ...taken
    results = [JobResult(j.job_id, j.candidate_id, _timed(0.5, [0.5])) for j in jobs]
    elite = EliteChange(1, props[0].candidate_id, 0.7, (0.1, 0.2), None)
    point = RunStats(3, 1, 0.1, 0.7, 0.7, props[0].candidate_id, {"OK": 3})
    with pytest.raises(LeaseLost):
        store.ingest_many(results, [elite], [point])
    with pytest.raises(LeaseLost):
        store.propose_many([CandidateSpec("NEW = 1\n")])
    with pytest.raises(LeaseLost):
        store.dispatched_many([Job("j-late", props[0].candidate_id, "", {})])
    with pytest.raises(LeaseLost):
        store.pending()
    assert {model: _count(sessions, model) for model in before} == before
    for model in (m.Evaluation, m.Elite, m.RunStat):
        assert _count(sessions, model) == 0
    with sessions() as s:
        assert set(s.scalars(sa.select(m.Job.status))) == {"dispatched"}


@pytest.mark.postgres
def test_results_are_compressed_with_lz4_where_the_server_has_it(tmp_path) -> None:
    from archive.testing import temporary_database

    with temporary_database("postgres", tmp_path / "data") as url:
        engine = db.make_engine(url)
        try:
            db.ensure_schema(engine)
            sessions = db.session_factory(engine)
            store = RunStore(sessions, _run(sessions))
            (p,) = store.propose_many([CandidateSpec("K = 1\n")])
            samples = [0.5 + i / 7 for i in range(300)]  # a document worth compressing
            assert store.ingest_many([JobResult("j", p.candidate_id, _timed(0.5, samples))])
            with sessions() as s:
                lz4, default = s.execute(sa.text(
                    "SELECT 'lz4' = ANY(enumvals), reset_val FROM pg_settings"
                    " WHERE name = 'default_toast_compression'"
                )).one()  # fmt: skip
                got = s.execute(sa.text(
                    "SELECT pg_column_compression(result), pg_column_compression(timing),"
                    " current_setting('default_toast_compression') FROM evaluations"
                )).one()  # fmt: skip
                stored = s.scalar(sa.select(m.Evaluation.result))
            assert got[:2] == (("lz4", "lz4") if lz4 else (default, default))
            assert got[2] == default  # set for the ingest transaction only
            assert stored["timing"]["candidate"]["samples_ms"] == samples
        finally:
            engine.dispose()

"""RunStore, the search loop's database: duplicates, idempotent ingestion, crash recovery."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository
from archive import models as m
from archive.errors import RunNotFound
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import Job, JobResult, Store

SOURCE = "class ModelNew:\n    pass\n"


def new_run(sessions: sessionmaker[Session], task_id: int | None = None) -> RunStore:
    """A run of task ``task_id`` (a new task when None) and its store."""
    with sessions() as s:
        if task_id is None:
            task_id = repository.add_task(s, "softmax", "class Model: pass\n").id
        run = repository.create_run(
            s, task_id, budget=10, seed=0, device="cpu", objective_label="cpu-time"
        )
        s.commit()
        return RunStore(sessions, run.id)


def result(verdict: str = "OK", **extra) -> dict:
    return {"verdict": verdict, "correct": verdict == "OK", "messages": [], **extra}


def count(sessions: sessionmaker[Session], model: type, *where) -> int:
    with sessions() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(model).where(*where))


def test_run_store_is_a_store(sessions):
    store: Store = new_run(sessions)  # the protocol, checked by type checkers
    for name in ("propose", "reject", "dispatched", "ingest", "elite_changed", "pending"):
        assert callable(getattr(store, name))
    with pytest.raises(RunNotFound):
        RunStore(sessions, 4242)


def test_duplicates_are_detected_across_runs_of_a_task_but_not_across_tasks(sessions):
    first = new_run(sessions)
    second = new_run(sessions, first.task_id)
    other_task = new_run(sessions)
    spec = CandidateSpec(SOURCE, {"BLOCK": 256}, emitter="seed", label="seed.py")

    p1 = first.propose(spec)
    assert not p1.duplicate and p1.result is None
    # Same kernel, reformatted and commented, same params: a duplicate, still unevaluated.
    reformatted = CandidateSpec("# a comment\nclass ModelNew:  \n    pass\n", {"BLOCK": 256})
    p2 = second.propose(reformatted)
    assert (p2.candidate_id, p2.duplicate, p2.result) == (p1.candidate_id, True, None)
    # Different params: a different candidate.
    assert not first.propose(CandidateSpec(SOURCE, {"BLOCK": 512})).duplicate
    # Another task: never a duplicate of this one's candidates.
    p3 = other_task.propose(spec)
    assert not p3.duplicate and p3.candidate_id != p1.candidate_id

    first.ingest(JobResult("job-1", p1.candidate_id, result(speedup_vs_eager=1.5)))
    p4 = second.propose(spec)
    assert p4.duplicate and p4.result["speedup_vs_eager"] == 1.5

    assert count(sessions, m.Candidate) == 3
    # Every proposal is recorded, duplicates included.
    with sessions() as s:
        rows = s.scalars(
            sa.select(m.Proposal).where(m.Proposal.run_id == second.run_id).order_by(m.Proposal.id)
        ).all()
        assert [(p.candidate_id, p.duplicate) for p in rows] == [(p1.candidate_id, True)] * 2
        cand = repository.get_candidate(s, p1.candidate_id)
        assert (cand.run_id, cand.label, cand.params) == (first.run_id, "seed.py", {"BLOCK": 256})


def test_same_job_ingested_twice_is_stored_once(sessions):
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    store.dispatched(Job("job-1", cid, SOURCE, {}))
    assert store.ingest(JobResult("job-1", cid, result(worker="gpu-3")))
    assert not store.ingest(JobResult("job-1", cid, result("INCORRECT")))  # redelivered
    assert count(sessions, m.Evaluation) == 1
    with sessions() as s:
        job = s.get(m.Job, "job-1")
        assert (job.status, job.worker) == ("done", "gpu-3") and job.finished_at is not None
        assert repository.latest_evaluation(s, cid).verdict == "OK"


def test_result_of_an_unrecorded_job_is_still_stored(sessions):
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    assert store.ingest(JobResult("never-dispatched", cid, result()))
    assert not store.ingest(JobResult("never-dispatched", cid, result()))
    with sessions() as s:
        assert s.get(m.Job, "never-dispatched").status == "done"


def test_static_rejects_are_evaluations_without_a_job(sessions):
    store = new_run(sessions)
    a = store.propose(CandidateSpec("A = 1\n")).candidate_id
    b = store.propose(CandidateSpec("B = 1\n")).candidate_id
    store.reject(a, result("STATIC_REJECT", messages=["calls torch.softmax"]))
    store.reject(b, result("STATIC_REJECT"))  # several NULL job ids are fine
    with sessions() as s:
        ev = repository.latest_evaluation(s, a)
        assert (ev.verdict, ev.job_id, ev.messages) == (
            "STATIC_REJECT",
            None,
            ["calls torch.softmax"],
        )
    assert [cid for cid, _ in store.pending()] == []


def test_pending_after_a_crash_returns_unevaluated_candidates_and_marks_jobs_lost(db_url):
    # First controller: proposes three, dispatches two, gets one result, then is killed.
    engine = db.make_engine(db_url)
    db.ensure_schema(engine)
    store = new_run(db.session_factory(engine))
    specs = [
        CandidateSpec(
            f"X = {i}\n", {"BLOCK": 2**i}, emitter="params", parent_ids=(1,), genome=(0.5,)
        )
        for i in range(3)
    ]
    ids = [store.propose(spec).candidate_id for spec in specs]
    for i in ids[:2]:
        store.dispatched(Job(f"job-{i}", i, "", {}))
    store.ingest(JobResult(f"job-{ids[0]}", ids[0], result()))
    engine.dispose()

    # The resumed controller, in a new engine.
    engine = db.make_engine(db_url)
    try:
        sessions = db.session_factory(engine)
        resumed = RunStore(sessions, store.run_id)
        pending = resumed.pending()
        assert pending == [(ids[1], specs[1]), (ids[2], specs[2])]
        with sessions() as s:
            jobs = {j.id: j.status for j in s.scalars(sa.select(m.Job))}
        assert jobs == {f"job-{ids[0]}": "done", f"job-{ids[1]}": "lost"}
        # A lost job's result that arrives after all is still valid.
        assert resumed.ingest(JobResult(f"job-{ids[1]}", ids[1], result()))
        assert resumed.pending() == [(ids[2], specs[2])]
    finally:
        engine.dispose()


def test_pending_ignores_duplicates_and_other_runs(sessions):
    first = new_run(sessions)
    second = new_run(sessions, first.task_id)
    cid = first.propose(CandidateSpec(SOURCE)).candidate_id
    assert second.propose(CandidateSpec(SOURCE)).duplicate
    assert [c for c, _ in first.pending()] == [cid]
    assert second.pending() == []


def test_evaluated_replays_every_evaluation_of_the_run_in_order(sessions):
    first = new_run(sessions)
    a = first.propose(CandidateSpec("A = 1\n")).candidate_id
    b = first.propose(CandidateSpec("B = 1\n")).candidate_id
    first.propose(CandidateSpec("C = 1\n"))  # never evaluated
    first.ingest(JobResult("jb", b, result("INCORRECT")))
    first.ingest(JobResult("ja", a, result()))
    first.ingest(JobResult("ja-remeasure", a, result(speedup_vs_eager=2.0)))
    assert [(cid, r["verdict"]) for cid, _, r in first.evaluated()] == [
        (b, "INCORRECT"),
        (a, "OK"),
        (a, "OK"),
    ]
    assert first.evaluated()[2][2]["speedup_vs_eager"] == 2.0

    second = new_run(sessions, first.task_id)
    d = second.propose(CandidateSpec("D = 1\n")).candidate_id
    second.ingest(JobResult("jd", d, result()))
    second.propose(CandidateSpec("A = 1\n"))  # a duplicate: its stored results count
    got = second.evaluated()
    assert [cid for cid, _, _ in got] == [a, a, d]
    assert got[0][1] == CandidateSpec("A = 1\n")


def test_elite_history_keeps_one_current_elite_per_cell(sessions):
    store = new_run(sessions)
    a, b, c = (store.propose(CandidateSpec(f"K = {i}\n")).candidate_id for i in range(3))
    store.elite_changed(5, a, 0.1, [0.5, 0.5], None)
    store.elite_changed(5, b, 0.2, [0.5, 0.6], a)
    store.elite_changed(5, c, 0.3, [0.4, 0.6], b)
    store.elite_changed(6, a, 0.1, [0.9, 0.1], None)
    with sessions() as s:
        current = repository.current_elites(s, store.run_id)
        assert [(e.cell, e.candidate_id) for e in current] == [(5, c), (6, a)]
        history = repository.elite_history(s, store.run_id, cell=5)
        assert [e.candidate_id for e in history] == [a, b, c]
        assert [e.replaced_at is not None for e in history] == [True, True, False]
        assert history[0].replaced_at <= history[1].created_at
        # The database itself refuses a second current elite in a cell.
        s.add(m.Elite(run_id=store.run_id, cell=5, candidate_id=a, objective=0.0, measures=[]))
        with pytest.raises(sa.exc.IntegrityError):
            s.flush()


def test_lost_insert_race_on_the_same_key_yields_one_candidate(sessions, monkeypatch):
    first = new_run(sessions)
    second = new_run(sessions, first.task_id)
    winner = first.propose(CandidateSpec(SOURCE))
    # `second` looked the key up just before `first` committed: its lookup missed.
    real = repository.candidate_by_key
    calls: list[int] = []

    def stale_then_real(*args):
        calls.append(1)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(repository, "candidate_by_key", stale_then_real)
    loser = second.propose(CandidateSpec(SOURCE))
    assert (loser.candidate_id, loser.duplicate) == (winner.candidate_id, True)
    assert len(calls) == 2  # it did insert, hit the unique constraint, and looked again
    assert count(sessions, m.Candidate) == 1
    assert count(sessions, m.Proposal) == 2


def test_concurrent_proposals_of_one_candidate_yield_one_candidate(engine):
    # Several controllers (threads, each with its own sessions) propose the same kernel at once.
    sessions = db.session_factory(engine)
    first = new_run(sessions)
    stores = [first] + [new_run(sessions, first.task_id) for _ in range(5)]
    barrier = threading.Barrier(len(stores))
    out: list = []
    errors: list = []

    def propose(store: RunStore) -> None:
        try:
            barrier.wait()
            out.append(store.propose(CandidateSpec(SOURCE, {"BLOCK": 128})))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=propose, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len({p.candidate_id for p in out}) == 1
    assert sorted(p.duplicate for p in out) == [False] + [True] * (len(stores) - 1)
    assert count(sessions, m.Candidate) == 1


def test_concurrent_ingestion_of_one_job_stores_it_once(engine):
    sessions = db.session_factory(engine)
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    store.dispatched(Job("job-x", cid, SOURCE, {}))
    barrier = threading.Barrier(4)
    out: list[bool] = []

    def ingest() -> None:
        barrier.wait()
        out.append(RunStore(sessions, store.run_id).ingest(JobResult("job-x", cid, result())))

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(out) == [False, False, False, True]
    assert count(sessions, m.Evaluation) == 1


def test_evaluations_another_run_paid_for_are_marked(sessions):
    from evolution.ports import OTHER_RUN

    first = new_run(sessions)
    second = new_run(sessions, first.task_id)
    spec = CandidateSpec(SOURCE, {"BLOCK": 128}, emitter="seed")
    cid = first.propose(spec).candidate_id
    job = Job("paid-by-first", cid, SOURCE, {"BLOCK": 128})
    first.dispatched(job)
    first.ingest(JobResult(job.job_id, cid, result()))
    assert second.propose(spec).duplicate
    [(_, _, theirs)] = second.evaluated()
    [(_, _, ours)] = first.evaluated()
    assert theirs.get(OTHER_RUN) is True and OTHER_RUN not in ours

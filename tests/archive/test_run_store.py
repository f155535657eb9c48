"""RunStore, the search loop's database: duplicates, idempotent ingestion, crash recovery."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository
from archive import models as m
from archive.errors import RunNotFound
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.canonical import canonical_form
from evolution.descriptors import parse_dims
from evolution.emitters import ParamEmitter
from evolution.fakes import FakeDispatcher, bowl_ms, fake_result
from evolution.grid import MapArchive
from evolution.loop import SearchLoop
from evolution.ports import EliteChange, Job, JobResult, RunStats, Store

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
    real = repository.candidate_ids_by_key
    calls: list[int] = []

    def stale_then_real(*args):
        calls.append(1)
        return {} if len(calls) == 1 else real(*args)

    monkeypatch.setattr(repository, "candidate_ids_by_key", stale_then_real)
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


# --- batch methods (what the search loop calls) ----------------------------------------------


def test_batch_ingest_is_idempotent_per_job_within_and_across_batches(sessions):
    store = new_run(sessions)
    a, b, c = (store.propose(CandidateSpec(f"K = {i}\n")).candidate_id for i in range(3))
    store.dispatched_many([Job("ja", a, "", {}), Job("jb", b, "", {})])
    batch = [
        JobResult("ja", a, result(worker="gpu-1")),
        JobResult("jb", b, result("INCORRECT")),
        JobResult("ja", a, result("TIMEOUT")),  # delivered twice in one batch
        JobResult("jc", c, result()),  # never recorded as dispatched: still valid
    ]
    assert store.ingest_many(batch) == [True, True, False, True]
    assert store.ingest_many(batch[:2] + [JobResult("jc", c, result())]) == [False] * 3
    assert store.ingest(JobResult("jb", b, result())) is False
    assert count(sessions, m.Evaluation) == 3
    with sessions() as s:
        jobs = {j.id: (j.status, j.worker) for j in s.scalars(sa.select(m.Job))}
        assert jobs == {"ja": ("done", "gpu-1"), "jb": ("done", None), "jc": ("done", None)}
        assert repository.latest_evaluation(s, a).verdict == "OK"  # the first delivery won
    # Stored in batch order: the replay order of resume.
    assert [(cid, r["verdict"]) for cid, _, r in store.evaluated()] == [
        (a, "OK"),
        (b, "INCORRECT"),
        (c, "OK"),
    ]


def test_a_batch_is_stored_whole_or_not_at_all(sessions):
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    store.dispatched_many([Job("j1", cid, SOURCE, {})])
    bad = EliteChange(cell=3, candidate_id=987654, objective=0.5, measures=(0.1,), previous_id=None)
    stats = RunStats(1, 1, 0.1, 0.5, 0.5, cid, {"OK": 1})
    with pytest.raises(sa.exc.IntegrityError):  # no such candidate: the whole batch fails
        store.ingest_many([JobResult("j1", cid, result())], [bad], [stats])
    assert count(sessions, m.Evaluation) == 0 and count(sessions, m.RunStat) == 0
    with sessions() as s:
        assert s.get(m.Job, "j1").status == "dispatched"
    assert [c for c, _ in store.pending()] == [cid]  # handed back, as if in flight
    good = dataclasses.replace(bad, candidate_id=cid)
    assert store.ingest_many([JobResult("j1", cid, result())], [good], [stats]) == [True]
    assert count(sessions, m.Evaluation) == 1 and count(sessions, m.RunStat) == 1
    with sessions() as s:
        assert [(e.cell, e.candidate_id) for e in repository.current_elites(s, store.run_id)] == [
            (3, cid)
        ]


def test_batch_elite_changes_keep_one_current_elite_per_cell_in_order(sessions):
    store = new_run(sessions)
    a, b, c = (store.propose(CandidateSpec(f"K = {i}\n")).candidate_id for i in range(3))
    store.ingest_many([], [EliteChange(5, a, 0.1, (0.5, 0.5), None)])
    changes = [
        EliteChange(5, b, 0.2, (0.5, 0.6), a),
        EliteChange(6, a, 0.1, (0.9, 0.1), None),
        EliteChange(5, c, 0.3, (0.4, 0.6), b),  # the same cell twice in one batch
    ]
    points = [RunStats(n, 2, 0.02, 0.4, 0.3, c, {"OK": n}) for n in (7, 9)]
    assert store.ingest_many([], changes, points) == []
    with sessions() as s:
        current = repository.current_elites(s, store.run_id)
        assert [(e.cell, e.candidate_id) for e in current] == [(5, c), (6, a)]
        history = repository.elite_history(s, store.run_id, cell=5)
        assert [e.candidate_id for e in history] == [a, b, c]
        assert [e.replaced_at is not None for e in history] == [True, True, False]
        assert history[2].measures == [0.4, 0.6]
        assert [p.evaluations for p in repository.run_stats(s, store.run_id)] == [7, 9]


def test_propose_many_finds_duplicates_in_the_task_and_in_the_batch(sessions):
    first = new_run(sessions)
    second = new_run(sessions, first.task_id)
    old = first.propose(CandidateSpec("OLD = 1\n", {"BLOCK": 64}))
    first.ingest(JobResult("j-old", old.candidate_id, result(speedup_vs_eager=3.0)))
    pending = first.propose(CandidateSpec("PENDING = 1\n"))
    specs = [
        CandidateSpec("NEW = 1\n", {"BLOCK": 128}, emitter="params", genome=(0.25,)),
        CandidateSpec("# reformatted\nOLD = 1\n", {"BLOCK": 64}),
        CandidateSpec("NEW = 1\n", {"BLOCK": 128}, emitter="params"),  # same key as the first
        CandidateSpec("PENDING = 1\n"),
        CandidateSpec("NEW = 1\n", {"BLOCK": 256}),
    ]
    got = second.propose_many(specs)
    assert [p.duplicate for p in got] == [False, True, True, True, False]
    assert got[1].candidate_id == old.candidate_id and got[1].result["speedup_vs_eager"] == 3.0
    assert got[2].candidate_id == got[0].candidate_id and got[2].result is None
    assert (got[3].candidate_id, got[3].result) == (pending.candidate_id, None)
    assert len({got[0].candidate_id, got[4].candidate_id, old.candidate_id}) == 3
    assert second.propose_many([]) == []
    with sessions() as s:
        rows = s.scalars(
            sa.select(m.Proposal).where(m.Proposal.run_id == second.run_id).order_by(m.Proposal.id)
        ).all()
        assert [(r.candidate_id, r.duplicate) for r in rows] == [
            (p.candidate_id, p.duplicate) for p in got
        ]
        new = repository.get_candidate(s, got[0].candidate_id)
        assert (new.run_id, new.emitter, new.genome) == (second.run_id, "params", [0.25])
        # The stored keys are the search's keys (CandidateSpec.key and the normalised source).
        for spec, p in zip(specs, got, strict=True):
            cand = repository.get_candidate(s, p.candidate_id)
            assert cand.key_sha256 == spec.key
            assert cand.source_sha256 == repository.sha256(canonical_form(spec.source))
    assert [c for c, _ in second.pending()] == sorted([got[0].candidate_id, got[4].candidate_id])


def test_dispatched_many_records_each_job_once(sessions):
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    jobs = [Job(f"j{i}", cid, SOURCE, {}) for i in range(3)]
    store.dispatched_many(jobs)
    store.ingest(JobResult("j0", cid, result()))
    store.dispatched_many(jobs)  # again: no-op, a done job stays done
    store.dispatched_many([])
    with sessions() as s:
        assert {j.id: j.status for j in s.scalars(sa.select(m.Job))} == {
            "j0": "done",
            "j1": "dispatched",
            "j2": "dispatched",
        }


def test_concurrent_overlapping_batches_store_each_job_once(engine):
    # Four ingesters get the same ten results in different orders at the same time.
    sessions = db.session_factory(engine)
    store = new_run(sessions)
    cids = [store.propose(CandidateSpec(f"K = {i}\n")).candidate_id for i in range(10)]
    store.dispatched_many([Job(f"j{i}", cid, "", {}) for i, cid in enumerate(cids)])
    batch = [JobResult(f"j{i}", cid, result()) for i, cid in enumerate(cids)]
    orders = [batch, batch[::-1], batch[5:] + batch[:5], batch[::2] + batch[1::2]]
    barrier = threading.Barrier(len(orders))
    out: list[dict[str, bool]] = []
    errors: list[BaseException] = []

    def ingest(results: list[JobResult]) -> None:
        try:
            barrier.wait()
            flags = RunStore(sessions, store.run_id).ingest_many(results)
            out.append({r.job_id: f for r, f in zip(results, flags, strict=True)})
        except BaseException as exc:  # surfaced by the assertion below (e.g. a deadlock)
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for job in (r.job_id for r in batch):
        assert sum(flags[job] for flags in out) == 1  # exactly one ingester stored it
    assert count(sessions, m.Evaluation) == 10


def test_concurrent_overlapping_proposals_yield_one_candidate_per_key(engine):
    sessions = db.session_factory(engine)
    first = new_run(sessions)
    stores = [first] + [new_run(sessions, first.task_id) for _ in range(3)]
    specs = [CandidateSpec(SOURCE, {"BLOCK": 2**i}) for i in range(8)]
    orders = [specs, specs[::-1], specs[4:] + specs[:4], specs[1::2] + specs[::2]]
    barrier = threading.Barrier(len(stores))
    out: list[dict[str, tuple[int, bool]]] = []
    errors: list[BaseException] = []

    def propose(store: RunStore, batch: list[CandidateSpec]) -> None:
        try:
            barrier.wait()
            got = store.propose_many(batch)
            pairs = zip(batch, got, strict=True)
            out.append({s.key: (p.candidate_id, p.duplicate) for s, p in pairs})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=propose, args=a) for a in zip(stores, orders, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for spec in specs:
        seen = [got[spec.key] for got in out]
        assert len({cid for cid, _ in seen}) == 1
        assert sorted(dup for _, dup in seen) == [False, True, True, True]
    assert count(sessions, m.Candidate) == 8


def test_an_evaluation_row_holds_what_the_result_says(sessions):
    store = new_run(sessions)
    cid = store.propose(CandidateSpec(SOURCE)).candidate_id
    timing = {"device": "cuda", "candidate": {"median_ms": 0.5, "samples_ms": [0.49, 0.5, 0.52]}}
    timed = result(
        timing=timing,
        features={"n_regs": 40},
        hardware={"name": "H100"},
        params={"BLOCK": 256},
        worker="gpu-2",
        stages_s={"total_s": 1.5},
        speedup_vs_eager=2.0,
    )
    batch = [
        JobResult("timed", cid, timed),
        JobResult("null-timing", cid, result("INCORRECT", timing=None)),
        JobResult("no-timing", cid, result("RUNTIME_ERROR", messages=["boom"])),
    ]
    assert store.ingest_many(batch) == [True] * 3
    with sessions() as s:
        rows = {e.job_id: e for e in s.scalars(sa.select(m.Evaluation))}
        ev = rows["timed"]
        assert ev.result == timed and ev.timing == timing
        assert (ev.features, ev.hardware, ev.params) == (
            {"n_regs": 40},
            {"name": "H100"},
            {"BLOCK": 256},
        )
        assert (ev.worker, ev.duration_s, ev.speedup_vs_eager) == ("gpu-2", 1.5, 2.0)
        assert rows["no-timing"].messages == ["boom"]
        # No timing is SQL NULL (not a JSON null), whatever the backend.
        nulls = s.scalars(sa.select(m.Evaluation.job_id).where(m.Evaluation.timing.is_(None)))
        assert sorted(nulls) == ["no-timing", "null-timing"]


# --- the search loop on the database ----------------------------------------------------------


class KilledAt:
    """Forwards to a RunStore; raises (a killed controller) on the ``at``-th ``ingest_many``."""

    def __init__(self, inner: RunStore, at: int) -> None:
        self.inner = inner
        self.at = at
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def ingest_many(self, results, elites=(), stats=()):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("killed")
        return self.inner.ingest_many(results, elites, stats)


def search(store, budget: int):
    """A parameter search of the bowl with instant fake results (some delivered twice)."""
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    space = {"BLOCK": [2**k for k in range(5, 14)], "num_warps": [1, 2, 4, 8, 16, 32]}
    emitter = ParamEmitter(SOURCE, space, archive.dims, "fam", seed=3)
    dispatcher = FakeDispatcher(
        lambda job: fake_result(job.params, bowl_ms(job.params)), 6, seed=5, redeliver=0.3
    )
    loop = SearchLoop(archive, [emitter], dispatcher, store, budget, stats_interval_s=0.0)
    return loop, archive, dispatcher


def test_a_killed_search_resumes_from_the_database_to_the_same_archive(sessions):
    store = new_run(sessions)
    loop, _, first = search(KilledAt(store, at=4), 40)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    stored = count(sessions, m.Evaluation)
    assert 0 < stored < len(first.submitted)  # the batch being learned was lost, in flight

    loop, archive, second = search(RunStore(sessions, store.run_id), 40)
    assert loop.resume() == stored
    lost = {cid for cid, _ in RunStore(sessions, store.run_id).pending()}
    summary = loop.run()
    assert summary.evaluations == 40
    assert lost <= {j.candidate_id for j in second.submitted}
    # The jobs in flight when it was killed are sent again under their own ids: a late
    # delivery of the first attempt and the second are one job, stored once.
    first_ids = {j.job_id for j in first.submitted}
    resent = first_ids & {j.job_id for j in second.submitted}
    assert resent and {j.candidate_id for j in second.submitted if j.job_id in resent} == lost
    with sessions() as s:
        jobs = {j.id: j.status for j in s.scalars(sa.select(m.Job))}
        assert set(jobs.values()) == {"done"}
        assert len(jobs) == len(first_ids | {j.job_id for j in second.submitted})
        evaluated = s.scalars(sa.select(m.Evaluation.job_id)).all()
        assert len(evaluated) == len(set(evaluated)) == 40  # one per job, none twice
        assert {j for j, st in jobs.items() if st == "done"} == set(evaluated)
        current = repository.current_elites(s, store.run_id)
        assert sorted((e.cell, e.candidate_id) for e in current) == sorted(
            (cell, cid) for cell, cid, *_ in archive.elites()
        )
        assert repository.latest_run_stat(s, store.run_id).evaluations == 40
    again, rebuilt, _ = search(RunStore(sessions, store.run_id), 40)
    assert again.resume() == 40
    assert rebuilt.elites() == archive.elites()

"""archive.leases on SQLite and PostgreSQL: enrolment, claims under concurrency, leases, results.

The claim race runs several threads, each with its own session and connection, claiming from
the same queue at once: every job must be handed out exactly once on both backends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from archive import leases, repository
from archive.models import Candidate, Job, RemoteJob, Worker, utcnow
from services import keys


def _setup_run(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """A task, a run and a candidate; their run id and candidate id."""
    with sessions() as s:
        task = repository.add_task(s, "t", "print(1)")
        run = repository.create_run(
            s, task.id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
        )
        cand = Candidate(
            task_id=task.id,
            run_id=run.id,
            source="x",
            params={},
            key_sha256=uuid.uuid4().hex * 2,
            source_sha256="0" * 64,
            emitter="seed",
        )
        s.add(cand)
        s.commit()
        return run.id, cand.id


def _offer(
    sessions: sessionmaker[Session], run_id: int, cid: int, n: int, hw: str = "cpu"
) -> list[str]:
    """Offer ``n`` jobs (oldest first, one created_at apart); their ids."""
    ids = []
    base = utcnow()
    with sessions() as s:
        for i in range(n):
            job_id = uuid.uuid4().hex
            s.add(Job(id=job_id, run_id=run_id, candidate_id=cid))
            s.flush()
            job = leases.offer(s, job_id, run_id, hw, {"job_id": job_id, "n": i})
            job.created_at = base + dt.timedelta(milliseconds=i)
            ids.append(job_id)
        s.commit()
    return ids


def _worker(sessions: sessionmaker[Session], name: str = "w", hw: str = "cpu") -> Worker:
    with sessions() as s:
        worker, _ = leases.enrol_worker(s, None, name, hw, {"gpu": "test"})
        s.commit()
        return worker


def _job(sessions: sessionmaker[Session], job_id: str) -> RemoteJob:
    with sessions() as s:
        job = s.get(RemoteJob, job_id)
        assert job is not None
        return job


@pytest.fixture
def run(sessions: sessionmaker[Session]) -> tuple[int, int]:
    return _setup_run(sessions)


def test_enrolment_stores_only_the_hash_and_the_token_authenticates(sessions):
    with sessions() as s:
        user, _ = keys.create_key(s, "worker", "enroller")
        worker, token = leases.enrol_worker(s, user.id, "gpu-box", "h100", {"gpu": "H100"})
        s.commit()
        worker_id = worker.id
    assert token.startswith("kmw_") and len(token) == 47
    with sessions() as s:
        row = s.get(Worker, worker_id)
        assert row.token_hash == leases.hash_token(token) and token not in str(row.__dict__)
        # The stored form is the sha256 of the whole token: databases of earlier versions work.
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert row.token_prefix == token[:8] and row.enrolled_by == user.id
        assert leases.worker_by_token(s, token).id == worker_id
        assert leases.worker_by_token(s, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert leases.worker_by_token(s, "km_" + token[4:]) is None
        assert leases.worker_by_token(s, None) is None
        assert leases.worker_by_token(s, token + "A" * 200) is None  # refused before hashing
        leases.revoke_worker(s, worker_id)
        s.commit()
        assert leases.worker_by_token(s, token) is None
        with pytest.raises(leases.WorkerNotFound):
            leases.revoke_worker(s, worker_id + 100)


def test_claim_takes_the_oldest_job_of_the_workers_hardware_class(sessions, run):
    run_id, cid = run
    cpu_jobs = _offer(sessions, run_id, cid, 3, "cpu")
    _offer(sessions, run_id, cid, 1, "h100")
    w = _worker(sessions, "w", "cpu")
    got = []
    with sessions() as s:
        for _ in range(4):
            job = leases.claim(s, w, 60)
            got.append(job.job_id if job else None)
        s.commit()
    assert got == [*cpu_jobs, None]
    job = _job(sessions, cpu_jobs[0])
    assert job.status == "leased" and job.worker_id == w.id
    assert 55 < (job.lease_expires_at - utcnow()).total_seconds() <= 60


def test_only_the_holder_extends_an_unexpired_lease(sessions, run):
    run_id, cid = run
    (job_id,) = _offer(sessions, run_id, cid, 1)
    a, b = _worker(sessions, "a"), _worker(sessions, "b")
    with sessions() as s:
        leases.claim(s, a, 10)
        assert leases.extend(s, a, job_id, 120)
        assert not leases.extend(s, b, job_id, 120)
        assert not leases.extend(s, a, "no-such-job", 120)
        s.commit()
    assert (_job(sessions, job_id).lease_expires_at - utcnow()).total_seconds() > 100
    with sessions() as s:  # expired but not yet reaped: no longer extendable
        assert not leases.extend(s, a, job_id, 120, now=utcnow() + dt.timedelta(seconds=200))


def test_the_first_result_wins_and_the_server_marks_it_unverified(sessions, run):
    run_id, cid = run
    (job_id,) = _offer(sessions, run_id, cid, 1)
    a, b = _worker(sessions, "alpha"), _worker(sessions, "beta")
    sent = {"verdict": "OK", "unverified": False, "trusted": True, "worker": "trusted-celery"}
    with sessions() as s:
        leases.claim(s, a, 60)
        with pytest.raises(leases.NotLeaseHolder):
            leases.complete(s, b, job_id, {"verdict": "OK"})
        assert leases.complete(s, a, job_id, sent) is True
        assert leases.complete(s, a, job_id, {"verdict": "INCORRECT"}) is False
        assert leases.complete(s, b, job_id, {"verdict": "INCORRECT"}) is False
        with pytest.raises(leases.RemoteJobNotFound):
            leases.complete(s, a, "nope", {"verdict": "OK"})
        s.commit()
    job = _job(sessions, job_id)
    assert job.status == "done" and job.lease_expires_at is None and job.finished_at
    assert job.result["verdict"] == "OK"
    assert job.result["unverified"] is True and "trusted" not in job.result
    assert job.result["worker"] == "remote:alpha"


def test_a_reaped_lease_is_requeued_and_its_late_result_still_counts(sessions, run):
    run_id, cid = run
    first, second = _offer(sessions, run_id, cid, 2)
    a, b = _worker(sessions, "a"), _worker(sessions, "b")
    later = utcnow() + dt.timedelta(seconds=61)
    with sessions() as s:
        leases.claim(s, a, 60)
        leases.claim(s, a, 60)
        assert leases.reap(s, utcnow()) == 0  # nothing expired yet
        assert leases.reap(s, later) == 2
        s.commit()
    for job_id in (first, second):
        job = _job(sessions, job_id)
        assert (job.status, job.attempts, job.lease_expires_at) == ("queued", 1, None)
    with sessions() as s:
        # a's late result for the first job: nobody else claimed it, the measurement is valid.
        assert leases.complete(s, a, first, {"verdict": "OK"}) is True
        # b claims the second job: a's late result for it is refused, b's is taken.
        assert leases.claim(s, b, 60).job_id == second
        with pytest.raises(leases.NotLeaseHolder):
            leases.complete(s, a, second, {"verdict": "OK"})
        assert leases.complete(s, b, second, {"verdict": "INCORRECT"}) is True
        s.commit()
    assert _job(sessions, second).result["worker"] == "remote:b"


def test_a_job_lost_max_attempts_times_fails(sessions, run):
    run_id, cid = run
    (job_id,) = _offer(sessions, run_id, cid, 1)
    w = _worker(sessions)
    now = utcnow()
    for attempt in range(1, 4):
        with sessions() as s:
            assert leases.claim(s, w, 1, now=now).job_id == job_id
            now += dt.timedelta(seconds=2)
            assert leases.reap(s, now, max_attempts=3) == 1
            s.commit()
        job = _job(sessions, job_id)
        assert job.attempts == attempt
        assert job.status == ("queued" if attempt < 3 else "done")
    assert job.result["verdict"] == "RUNTIME_ERROR"
    assert "kept losing it" in job.result["messages"][0]
    with sessions() as s:
        assert leases.claim(s, w, 60, now=now) is None
        taken = leases.take_results(s, run_id)
        s.commit()
    assert [t.job_id for t in taken] == [job_id]


def test_results_are_taken_once_in_the_order_they_finished(sessions, run):
    run_id, cid = run
    ids = _offer(sessions, run_id, cid, 3)
    w = _worker(sessions)
    with sessions() as s:
        for _ in ids:
            leases.claim(s, w, 60)
        t0 = utcnow()
        leases.complete(s, w, ids[2], {"verdict": "OK"}, now=t0)
        leases.complete(s, w, ids[0], {"verdict": "OK"}, now=t0 + dt.timedelta(seconds=1))
        s.commit()
    with sessions() as s:
        first = [j.job_id for j in leases.take_results(s, run_id)]
        again = leases.take_results(s, run_id)
        s.commit()
    assert first == [ids[2], ids[0]] and again == []
    assert _job(sessions, ids[1]).status == "leased"


def test_revoking_a_worker_requeues_its_leases_and_refuses_its_results(sessions, run):
    run_id, cid = run
    (job_id,) = _offer(sessions, run_id, cid, 1)
    w = _worker(sessions)
    with sessions() as s:
        leases.claim(s, w, 60)
        leases.revoke_worker(s, w.id)
        s.commit()
    job = _job(sessions, job_id)
    assert (job.status, job.worker_id) == ("queued", None)
    with sessions() as s, pytest.raises(leases.NotLeaseHolder):
        leases.complete(s, w, job_id, {"verdict": "OK"})


def test_a_revoked_worker_claims_nothing(sessions, run):
    run_id, cid = run
    _offer(sessions, run_id, cid, 1)
    w = _worker(sessions)
    with sessions() as s:
        leases.revoke_worker(s, w.id)
        s.commit()
    with sessions() as s:  # ``w`` as a long-poll authenticated it, before the revocation
        assert leases.claim(s, w, 60) is None
        assert leases.has_queued(s, "cpu")


@pytest.mark.slow
def test_concurrent_claims_never_hand_out_a_job_twice(sessions, run):
    run_id, cid = run
    n_jobs, n_threads = 60, 8
    ids = _offer(sessions, run_id, cid, n_jobs)
    workers = [_worker(sessions, f"w{i}") for i in range(n_threads)]
    barrier = threading.Barrier(n_threads)
    claimed: list[list[str]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        try:
            barrier.wait()
            while True:
                with sessions() as s:
                    job = leases.claim(s, workers[i], 60)
                    s.commit()
                if job is None:
                    return
                claimed[i].append(job.job_id)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    flat = [j for c in claimed for j in c]
    assert sorted(flat) == sorted(ids)  # every job once, none twice
    assert sum(1 for c in claimed if c) > 1  # the claims really interleaved
    with sessions() as s:
        rows = s.execute(sa.select(RemoteJob.job_id, RemoteJob.worker_id)).all()
    holder = {jid: wid for jid, wid in rows}
    for i, c in enumerate(claimed):
        assert all(holder[j] == workers[i].id for j in c)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_claim_skips_a_row_another_transaction_is_claiming(sessions, run):
    run_id, cid = run
    first, second = _offer(sessions, run_id, cid, 2)
    a, b = _worker(sessions, "a"), _worker(sessions, "b")
    with sessions() as held:
        assert leases.claim(held, a, 60).job_id == first  # row locked, not committed
        with sessions() as s:
            # Does not wait for the lock (SKIP LOCKED): takes the next job.
            s.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            assert leases.claim(s, b, 60).job_id == second
            s.commit()
        held.commit()
    assert _job(sessions, first).worker_id == a.id

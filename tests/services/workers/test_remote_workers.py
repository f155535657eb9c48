"""Remote workers over HTTP: a real uvicorn server on a loopback port, the API on SQLite.

Covers enrolment (worker key only), the lease protocol (claim, heartbeat, idempotent result),
the reaper, token separation, revocation, the admin list, long-polls that hold no thread or
connection, and a real CPU evaluation by :func:`services.workers.remote.run_remote_worker` of a
job offered by :class:`services.dispatch.leases.LeaseDispatcher`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from archive import db, leases, repository
from archive.models import RemoteJob, Worker
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import Job
from services import keys
from services.api import create_app
from services.api.routes import remote
from services.config import Settings
from services.dispatch.leases import LeaseDispatcher
from services.workers import remote as remote_worker
from services.workers.remote import run_remote_worker
from services.workers.remote_client import RemoteWorkerError, check_url
from services.workers.tasks import job_message

DATA = Path(__file__).parents[2] / "data"
TASK_SOURCE = (DATA / "softmax_task.py").read_text()
SEED_SOURCE = (DATA / "chunked_softmax.py").read_text()
W = "/api/v1/workers"


@dataclasses.dataclass
class Server:
    """A running API on a loopback port, its database and keys of each role."""

    url: str
    sessions: sessionmaker[Session]
    admin: str
    user: str
    worker_key: str
    http: httpx.Client

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def register(self, name: str = "box", hardware_class: str = "cpu") -> tuple[int, str]:
        r = self.http.post(
            f"{W}/register",
            json={"name": name, "hardware_class": hardware_class, "hardware": {"gpu": "none"}},
            headers=self.auth(self.worker_key),
        )
        assert r.status_code == 201, r.text
        return r.json()["worker_id"], r.json()["token"]

    def claim(self, token: str, wait_s: float = 0) -> httpx.Response:
        return self.http.post(
            f"{W}/claim", params={"wait_s": wait_s}, headers=self.auth(token), timeout=40
        )

    def result(self, token: str, job_id: str, result: dict) -> httpx.Response:
        return self.http.post(
            f"{W}/jobs/{job_id}/result", json={"result": result}, headers=self.auth(token)
        )


def _serve(app, threads: int | None) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` with uvicorn in a thread; its URL and a function stopping it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        if threads is not None:  # the sync routes' and dependencies' threadpool
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await server.serve(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts servers on fresh SQLite databases; stops them afterwards."""
    stops: list[Callable[[], None]] = []
    engines: list[sa.Engine] = []

    def make(
        pool_size: int | None = None,
        threads: int | None = None,
        redis_url: str | None = None,
        redis_key_prefix: str = "",
    ) -> Server:
        data = tmp_path / f"server{len(stops)}"
        url = db.default_url(data)
        db.ensure_schema(migrating := db.make_engine(url))
        migrating.dispose()
        if pool_size is None:
            engine = db.make_engine(url)
        else:  # a small pool, to show what long-polls do (not) hold
            engine = sa.create_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=5,
                json_serializer=db.json_dumps,
            )
            sa.event.listen(engine, "connect", db._sqlite_pragmas)
        engines.append(engine)
        sessions = db.session_factory(engine)
        with sessions() as s:
            _, admin = keys.create_key(s, "admin", "root")
            _, user = keys.create_key(s, "user", "alice")
            _, worker_key = keys.create_key(s, "worker", "enrolment")
            s.commit()
        settings = Settings(
            data_dir=data, device="cpu", redis_url=redis_url, redis_key_prefix=redis_key_prefix
        )
        base, stop = _serve(create_app(sessions, settings), threads)
        http = httpx.Client(base_url=base, timeout=20)
        stops.append(http.close)
        stops.append(stop)
        return Server(base, sessions, admin, user, worker_key, http)

    yield make
    for stop in reversed(stops):
        stop()
    for engine in engines:
        engine.dispose()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


def _run(srv: Server) -> tuple[int, RunStore]:
    with srv.sessions() as s:
        task = repository.add_task(s, "softmax", TASK_SOURCE)
        run = repository.create_run(
            s, task.id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
        )
        s.commit()
        return run.id, RunStore(srv.sessions, run.id)


def _job(store: RunStore, params: dict | None = None) -> Job:
    """A recorded job of a new candidate of the run (as the loop records it before submit)."""
    params = params or {"BLOCK": 8, "num_warps": 2}
    proposal = store.propose(CandidateSpec(SEED_SOURCE, params, "params", (), "seed"))
    job = Job(uuid.uuid4().hex, proposal.candidate_id, SEED_SOURCE, params)
    store.dispatched(job)
    return job


def _dispatcher(srv: Server, run_id: int, hardware_class: str = "cpu") -> LeaseDispatcher:
    return LeaseDispatcher(
        srv.sessions, run_id, hardware_class, 2, TASK_SOURCE, {"timeout_s": 60.0, "device": "cpu"}
    )


def _row(srv: Server, job_id: str) -> RemoteJob:
    with srv.sessions() as s:
        row = s.get(RemoteJob, job_id)
        assert row is not None
        return row


OK = {"verdict": "OK", "correct": True, "messages": [], "params": {"BLOCK": 8}}


# -- enrolment ---------------------------------------------------------------------------------


def test_only_a_worker_key_enrols_and_the_body_is_checked(server):
    body = {"name": "gpu-box", "hardware_class": "h100", "hardware": {"gpu": "H100"}}
    post = server.http.post
    assert post(f"{W}/register", json=body).status_code == 401
    for key in (server.user, server.admin):
        r = post(f"{W}/register", json=body, headers=server.auth(key))
        assert r.status_code == 403 and "worker key" in r.json()["detail"]
    r = post(f"{W}/register", json=body, headers=server.auth(server.worker_key))
    assert r.status_code == 201
    token = r.json()["token"]
    assert token.startswith("kmw_")
    with server.sessions() as s:
        row = s.get(Worker, r.json()["worker_id"])
        assert (row.name, row.hardware_class, row.hardware) == ("gpu-box", "h100", {"gpu": "H100"})
        assert row.token_hash == leases.hash_token(token) and row.last_seen_at is None
    bad = [
        {**body, "name": ""},
        {**body, "name": "   "},
        {**body, "name": "x" * 201},
        {**body, "hardware_class": "H100"},
        {**body, "hardware_class": "-cuda"},
        {**body, "hardware_class": "a" * 65},
        {**body, "hardware": ["not", "an", "object"]},
        {**body, "hardware": {"blob": "x" * 17000}},
        {**body, "extra": 1},
    ]
    for b in bad:
        r = post(f"{W}/register", json=b, headers=server.auth(server.worker_key))
        assert r.status_code == 422, (b, r.text)
    r = post(
        f"{W}/register",
        content=json.dumps({**body, "hardware": {"x": "y" * 70000}}),
        headers=server.auth(server.worker_key),
    )
    assert r.status_code == 413


# -- the lease protocol ------------------------------------------------------------------------


def test_claim_heartbeat_and_an_idempotent_result_marked_unverified(server):
    run_id, store = _run(server)
    dispatcher = _dispatcher(server, run_id)
    _, token = server.register("alpha")
    assert server.claim(token).status_code == 204  # nothing offered yet
    job = _job(store)
    dispatcher.submit(job)
    r = server.claim(token, wait_s=5)
    assert r.status_code == 200, r.text
    claimed = r.json()
    assert claimed["job_id"] == job.job_id and claimed["lease_s"] == remote.LEASE_S
    assert claimed["job"] == job_message(job, TASK_SOURCE, {"timeout_s": 60.0})
    first_expiry = dt.datetime.fromisoformat(claimed["lease_expires_at"])

    time.sleep(0.05)
    r = server.http.post(f"{W}/jobs/{job.job_id}/heartbeat", headers=server.auth(token))
    assert r.status_code == 200
    assert dt.datetime.fromisoformat(r.json()["lease_expires_at"]) > first_expiry

    forged = {**OK, "unverified": False, "trusted": True, "worker": "celery@trusted"}
    r = server.result(token, job.job_id, forged)
    assert r.status_code == 200 and r.json() == {"accepted": True}
    r = server.result(token, job.job_id, {"verdict": "INCORRECT"})
    assert r.status_code == 200 and r.json() == {"accepted": False}
    stored = _row(server, job.job_id).result
    assert stored["verdict"] == "OK" and stored["unverified"] is True
    assert stored["worker"] == "remote:alpha" and "trusted" not in stored
    assert stored["params"] == {"BLOCK": 8} and "speedup_vs_eager" not in stored

    r = server.http.post(f"{W}/jobs/{job.job_id}/heartbeat", headers=server.auth(token))
    assert r.status_code == 409  # done: no lease to extend
    results = dispatcher.poll(2.0)
    assert [(x.job_id, x.candidate_id) for x in results] == [(job.job_id, job.candidate_id)]
    assert results[0].result["unverified"] is True
    assert dispatcher.poll(0.3) == []  # taken once
    assert server.claim(token).status_code == 204


def test_an_expired_lease_is_reaped_and_claimed_by_another_worker(server):
    run_id, store = _run(server)
    job = _job(store)
    _dispatcher(server, run_id).submit(job)
    _, slow = server.register("slow")
    _, fast = server.register("fast")
    assert server.claim(slow).json()["job_id"] == job.job_id
    assert server.claim(fast, wait_s=0.3).status_code == 204  # leased: not handed out twice
    with server.sessions() as s:  # the lease runs out (the slow worker died, say)
        s.get(RemoteJob, job.job_id).lease_expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(
            seconds=1
        )
        s.commit()
    r = server.claim(fast, wait_s=5)  # the reaper runs on claims
    assert r.status_code == 200 and r.json()["job_id"] == job.job_id
    row = _row(server, job.job_id)
    assert row.attempts == 1 and row.status == "leased"
    hb = server.http.post(f"{W}/jobs/{job.job_id}/heartbeat", headers=server.auth(slow))
    assert hb.status_code == 409
    late = server.result(slow, job.job_id, OK)
    assert late.status_code == 409 and "another worker" in late.json()["detail"]
    assert server.result(fast, job.job_id, OK).json() == {"accepted": True}
    assert _row(server, job.job_id).result["worker"] == "remote:fast"


def test_results_are_checked_before_they_reach_the_controller(server):
    run_id, store = _run(server)
    job = _job(store)
    _dispatcher(server, run_id).submit(job)
    _, token = server.register()
    server.claim(token)
    bad = [
        {"verdict": "GREAT"},
        {"correct": True},
        {"verdict": "OK", "messages": "not a list"},
        {"verdict": "OK", "timing": {"candidate": {"median_ms": -1.0}}},
        {"verdict": "OK", "timing": {"candidate": "fast"}},
        {"verdict": "OK", "features": {"x": "nul\x00here"}},
    ]
    for result in bad:
        r = server.result(token, job.job_id, result)
        assert r.status_code == 422, (result, r.text)
    huge = {"verdict": "OK", "messages": ["x" * (remote.MAX_RESULT_BYTES + 1)]}
    assert server.result(token, job.job_id, huge).status_code == 413
    assert server.result(token, "f" * 32, OK).status_code == 404
    assert _row(server, job.job_id).status == "leased"


# -- who may call what -------------------------------------------------------------------------


def test_worker_tokens_and_api_keys_are_not_interchangeable(server):
    _, token = server.register()
    assert server.http.get("/api/v1/tasks", headers=server.auth(token)).status_code == 401
    assert server.http.get(W, headers=server.auth(token)).status_code == 401
    for key in (server.worker_key, server.user, server.admin):
        assert server.claim(key).status_code == 401
    assert server.http.post(f"{W}/claim").status_code == 401
    assert server.claim("kmw_" + "A" * 43).status_code == 401
    r = server.http.post(f"{W}/heartbeat", headers=server.auth(token))
    assert r.status_code == 200 and r.json()["last_seen_at"]


def test_a_revoked_worker_is_refused_and_its_job_requeued(server):
    run_id, store = _run(server)
    job = _job(store)
    _dispatcher(server, run_id).submit(job)
    worker_id, token = server.register()
    server.claim(token)
    admin, user = server.auth(server.admin), server.auth(server.user)
    assert server.http.delete(f"{W}/{worker_id}", headers=user).status_code == 403
    r = server.http.delete(f"{W}/{worker_id}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert server.claim(token).status_code == 401
    assert server.result(token, job.job_id, OK).status_code == 401
    assert _row(server, job.job_id).status == "queued"
    assert server.http.delete(f"{W}/{worker_id + 99}", headers=admin).status_code == 404


def test_admins_list_remote_workers_page_by_page(server):
    ids = [server.register(f"w{i}")[0] for i in range(3)]
    assert server.http.get(W, headers=server.auth(server.user)).status_code == 403
    r = server.http.get(W, params={"limit": 2}, headers=server.auth(server.admin))
    assert r.status_code == 200
    page = r.json()
    assert [w["id"] for w in page["items"]] == ids[:2] and page["total"] == 3
    assert page["items"][0]["kind"] == "remote" and page["items"][0]["revoked"] is False
    assert "token" not in page["items"][0] and page["celery"] == []
    assert page["celery_error"] is None  # no Redis configured: no Celery fleet
    r = server.http.get(W, params={"offset": 2}, headers=server.auth(server.admin))
    assert [w["id"] for w in r.json()["items"]] == ids[2:]


def test_an_unreachable_redis_still_lists_the_remote_workers(make_server):
    srv = make_server(redis_url="redis://127.0.0.1:1/0")
    srv.register()
    r = srv.http.get(W, headers=srv.auth(srv.admin))
    assert r.status_code == 200
    assert r.json()["total"] == 1 and r.json()["celery"] == []
    assert "could not be listed" in r.json()["celery_error"]


@pytest.mark.redis
def test_live_celery_workers_are_listed_from_redis(make_server):
    from services.workers import fleet

    prefix = f"kernelmap-test-{uuid.uuid4().hex[:12]}:"
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", redis_key_prefix=prefix)
    srv = make_server(redis_url=settings.redis_url, redis_key_prefix=prefix)
    srv.register("remote-box")
    beat = fleet.Heartbeat(settings, "kernelmap-cpu-1@host", "cpu", {"gpu": None}, interval_s=5)
    with beat:
        r = srv.http.get(W, headers=srv.auth(srv.admin))
    assert r.status_code == 200
    body = r.json()
    assert [w["name"] for w in body["items"]] == ["remote-box"]
    assert [(w["name"], w["kind"]) for w in body["celery"]] == [("kernelmap-cpu-1@host", "celery")]
    assert body["celery_error"] is None


# -- long-polls --------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_long_polls_hold_no_thread_and_no_connection(make_server):
    # 2 connections and 4 threads for the whole API: 8 sync long-polls would starve both.
    srv = make_server(pool_size=2, threads=4)
    tokens = [srv.register(f"idle{i}")[1] for i in range(8)]
    run_id, store = _run(srv)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        polls = [pool.submit(srv.claim, t, 4.0) for t in tokens]
        time.sleep(1.0)  # every poll is waiting on the server now
        t0 = time.monotonic()
        r = srv.http.get("/api/v1/tasks", headers=srv.auth(srv.user))
        other_route_s = time.monotonic() - t0
        assert r.status_code == 200
        job = _job(store)
        t0 = time.monotonic()
        _dispatcher(srv, run_id).submit(job)
        answers = []
        for f in concurrent.futures.as_completed(polls):
            answers.append((f.result(), time.monotonic() - t0))
    got = [(a.json()["job_id"], s) for a, s in answers if a.status_code == 200]
    assert [j for j, _ in got] == [job.job_id]  # one poller got it, once
    assert got[0][1] < 1.5  # within a few poll intervals of being offered
    assert sorted(a.status_code for a, _ in answers) == [200] + [204] * 7
    assert other_route_s < 1.0


# -- the remote worker -------------------------------------------------------------------------


def test_plain_http_is_refused_except_to_loopback():
    with pytest.raises(RemoteWorkerError, match="plain http"):
        check_url("http://kernelmap.example.org")
    assert check_url("http://kernelmap.example.org/", insecure_http=True).endswith(".org")
    assert check_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_url("http://[::1]:8000") == "http://[::1]:8000"
    assert check_url("http://localhost:8000") == "http://localhost:8000"
    assert check_url("https://kernelmap.example.org") == "https://kernelmap.example.org"
    with pytest.raises(RemoteWorkerError):
        check_url("ftp://kernelmap.example.org")
    with pytest.raises(RemoteWorkerError, match="plain http"):
        run_remote_worker("http://10.0.0.1", "km_x", data_dir="/nonexistent")


def test_a_refused_enrolment_key_is_a_clear_error(server, tmp_path):
    with pytest.raises(RemoteWorkerError, match="refused the enrolment key"):
        run_remote_worker(
            server.url, server.user, device="cpu", data_dir=tmp_path / "w", max_jobs=1
        )


def _start_worker(srv: Server, data_dir: Path, **kw) -> tuple[threading.Thread, list]:
    out: list = []

    def target() -> None:
        try:
            out.append(
                run_remote_worker(
                    srv.url,
                    srv.worker_key,
                    hardware_class="cpu",
                    device="cpu",
                    name="laptop",
                    data_dir=data_dir,
                    **kw,
                )
            )
        except BaseException as e:  # reported by the test
            out.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _poll_until(dispatcher: LeaseDispatcher, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    results: list = []
    while not results and time.monotonic() < deadline:
        results = dispatcher.poll(0.5)
    return results


@pytest.mark.slow
def test_a_remote_worker_evaluates_a_leased_job_end_to_end(server, tmp_path, monkeypatch):
    # A lease shorter than the evaluation: only the worker's heartbeats keep it.
    monkeypatch.setattr(remote, "LEASE_S", 1.5)
    extended: list[str] = []

    def extend(session, worker, job_id, lease_s, now=None):
        extended.append(job_id)
        return real_extend(session, worker, job_id, lease_s, now=now)

    real_extend = leases.extend
    monkeypatch.setattr(leases, "extend", extend)

    def slow_evaluate(*args, **kwargs):
        # An evaluation longer than the lease whatever this machine's speed.
        time.sleep(remote.LEASE_S + 1.0)
        return real_evaluate(*args, **kwargs)

    real_evaluate = remote_worker.evaluate_job
    monkeypatch.setattr(remote_worker, "evaluate_job", slow_evaluate)
    run_id, store = _run(server)
    dispatcher = _dispatcher(server, run_id)
    job = _job(store)
    dispatcher.submit(job)
    data_dir = tmp_path / "worker"
    thread, out = _start_worker(server, data_dir, max_jobs=1)
    try:
        results = _poll_until(dispatcher, 90)
    finally:
        thread.join(30)
    assert out == [0]
    assert [(r.job_id, r.candidate_id) for r in results] == [(job.job_id, job.candidate_id)]
    result = results[0].result
    assert result["verdict"] == "OK", result["messages"]
    assert result["params"] == {"BLOCK": 8, "num_warps": 2}
    assert result["unverified"] is True and result["worker"] == "remote:laptop"
    assert len(extended) >= 2 and set(extended) == {job.job_id}
    row = _row(server, job.job_id)
    assert row.attempts == 0 and row.status == "done"  # never reaped: the heartbeats held it

    state = data_dir / "remote_worker.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved["token"].startswith("kmw_") and saved["url"] == server.url
    assert not list((data_dir / "remote_results").glob("*.json"))

    # A restart reuses the saved token: no second enrolment.
    job2 = _job(store, {"BLOCK": 16, "num_warps": 2})
    dispatcher.submit(job2)
    thread, out = _start_worker(server, data_dir, max_jobs=1)
    try:
        results = _poll_until(dispatcher, 60)
    finally:
        thread.join(30)
    assert out == [0] and [r.job_id for r in results] == [job2.job_id]
    with server.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Worker)) == 1


def test_a_result_left_on_disk_is_delivered_at_the_next_start(server, tmp_path, monkeypatch):
    monkeypatch.setattr(remote_worker, "CLAIM_WAIT_S", 0.5)
    run_id, store = _run(server)
    dispatcher = _dispatcher(server, run_id)
    data_dir = tmp_path / "worker"
    stop = threading.Event()
    # A first start enrols and stops; then the job is claimed with its token, as if that worker
    # had evaluated it and stopped before its post got through: the result is left on disk.
    thread, out = _start_worker(server, data_dir, stop=stop)
    deadline = time.monotonic() + 20
    while not (data_dir / "remote_worker.json").exists():
        assert time.monotonic() < deadline and thread.is_alive(), out
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert out == [0]
    job = _job(store)
    refused = _job(store, {"BLOCK": 4, "num_warps": 1})
    dispatcher.submit(job)
    dispatcher.submit(refused)
    token = json.loads((data_dir / "remote_worker.json").read_text())["token"]
    assert server.claim(token).json()["job_id"] == job.job_id
    assert server.claim(token).json()["job_id"] == refused.job_id
    pending = data_dir / "remote_results"
    pending.mkdir()
    for name, job_id, result in [
        ("left.json", job.job_id, OK),
        ("bad.json", refused.job_id, {"verdict": "SPLENDID"}),  # one the server refuses
    ]:
        saved = {"url": server.url, "job_id": job_id, "result": result}
        (pending / name).write_text(json.dumps(saved))

    stop = threading.Event()
    thread, out = _start_worker(server, data_dir, stop=stop)
    try:
        results = _poll_until(dispatcher, 20)
        if len(results) < 2:
            results += _poll_until(dispatcher, 5)
    finally:
        stop.set()
        thread.join(10)
    assert out == [0]
    got = {r.job_id: r.result for r in results}
    assert set(got) == {job.job_id, refused.job_id}
    assert got[job.job_id]["verdict"] == "OK"
    assert got[job.job_id]["worker"] == "remote:laptop"
    # The refused result is replaced by a failure saying why, so the job is not leased again.
    assert got[refused.job_id]["verdict"] == "RUNTIME_ERROR"
    assert "refused the result (422)" in got[refused.job_id]["messages"][0]
    assert not list(pending.iterdir())

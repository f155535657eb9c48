"""The Celery fleet under faults, on real Redis servers and real worker processes.

- A Redis restarted mid-run (a private ``redis-server`` on a free loopback port that keeps
  nothing on disk: every queued job, every job in flight and every unread result is lost):
  the run waits, sends its jobs again and completes its budget, each job recorded once.
- A broker connection that breaks while Redis keeps its data: jobs Redis still holds are not
  sent twice.
- A job whose result never comes is sent once more, then reported failed.
- A job whose worker dies on every delivery is quarantined after a bounded number of starts.
- A result acknowledged but never stored (the controller died in between) is evaluated again
  when the run resumes.

The shared Redis at 127.0.0.1:6379 is never restarted: tests that kill Redis start their own.
Each test has its own key prefix, deleted afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import sqlalchemy as sa

from archive import db, repository
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.descriptors import parse_dims
from evolution.emitters import SeedEmitter
from evolution.fakes import fake_result
from evolution.grid import MapArchive
from evolution.loop import SearchLoop
from evolution.ports import Job
from services.dispatch.celery_queue import CeleryDispatcher
from services.workers import tasks as worker_tasks
from services.workers.celery_app import REPORT, create_app
from tests.fleet_fixtures import (
    ROOT,
    SEED,
    TASK,
    celery_dispatcher,
    fleet_settings,
    new_queue,
)

pytestmark = pytest.mark.redis

SHARED_REDIS = "redis://127.0.0.1:6379/0"
REDIS_SERVER = shutil.which("redis-server")
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free loopback port; with ``--save ''`` and no
    append-only file, a restart forgets everything (the worst case for the fleet)."""

    def __init__(self, directory: Path, persist: bool = False) -> None:
        self.port = _free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # With ``persist``: an append-only file synced on every write, so a kill loses nothing.
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persist else []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            + self.persistence,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, (self.dir / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis, started; killed afterwards."""
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that keeps its data across a restart; killed afterwards."""
    server = PrivateRedis(tmp_path / "redis-aof", persist=True).start()
    yield server
    server.kill()


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    e = dict(
        os.environ,
        KERNELMAP_REDIS_URL=url,
        KERNELMAP_REDIS_KEY_PREFIX=f"kernelmap-test-{uuid.uuid4().hex[:12]}:",
        KERNELMAP_DATA_DIR=str(tmp_path / "data"),
        KERNELMAP_DEVICE="cpu",
        KERNELMAP_TIMEOUT_S="20",
        **extra,
    )
    e.pop("KERNELMAP_DATABASE_URL", None)
    return e


@pytest.fixture
def shared_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment on the shared Redis with a private key prefix, deleted afterwards."""
    e = _env(tmp_path, SHARED_REDIS)
    yield e
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=f"{e['KERNELMAP_REDIS_KEY_PREFIX']}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _job(candidate_id: int = 1, params: dict | None = None) -> Job:
    return Job(uuid.uuid4().hex, candidate_id, SEED.read_text(), params or {"BLOCK": 8})


def _poll_until(dispatcher: CeleryDispatcher, done: Callable[[list], bool], timeout_s: float):
    got: list = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"gave up waiting; results so far: {got}"
        got += dispatcher.poll(0.2)
    return got


def _queued_ids(client: redis.Redis, env: dict[str, str], queue: str) -> list[str]:
    raw = client.lrange(f"{env['KERNELMAP_REDIS_KEY_PREFIX']}eval.{queue}", 0, -1)
    return [json.loads(m)["headers"]["id"] for m in raw]


# --- Redis restarted during a run ---------------------------------------------------------------


class Evaluations:
    """Watches a run's SQLite database: when each evaluation with a job was stored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def count(self) -> int:
        return len(self.times)

    def _watch(self) -> None:
        engine = sa.create_engine(f"sqlite:///{self.path}")
        query = sa.text("SELECT count(*) FROM evaluations WHERE job_id IS NOT NULL")
        while not self._stop.is_set():
            try:
                with engine.connect() as c:
                    n = c.execute(query).scalar_one()
            except sa.exc.OperationalError:  # not created yet, or locked for a moment
                n = len(self.times)
            now = time.monotonic()
            self.times += [now] * (n - len(self.times))
            time.sleep(0.05)
        engine.dispose()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@needs_redis_server
@pytest.mark.slow
def test_a_run_survives_a_redis_restart_that_loses_everything(
    tmp_path, private_redis, start_worker
):
    budget = 8
    env = _env(tmp_path, private_redis.url, KERNELMAP_VISIBILITY_TIMEOUT_S="10")
    start_worker(env, "cpu")
    run = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", str(TASK), "--seed-candidate", str(SEED)]
        + ["--budget", str(budget), "--no-templates", "--workers", "2", "--json"]
        + ["--redis", private_redis.url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = Evaluations(tmp_path / "data" / "kernelmap.db")
    try:
        deadline = time.monotonic() + 90
        while watch.count() < 2:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no evaluation came back"
            time.sleep(0.05)
        before = watch.count()
        killed_at = time.monotonic()
        private_redis.kill()
        time.sleep(3.0)
        private_redis.start()
        restarted_at = time.monotonic()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        watch.stop()
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert (summary["status"], summary["stop_reason"]) == ("finished", "budget")
    assert summary["evaluations"] == budget
    assert 2 <= before < budget, "Redis was not killed mid-run"

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'kernelmap.db'}")
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT job_id, candidate_id FROM evaluations")).all()
        jobs = c.execute(sa.text("SELECT id, status FROM jobs")).all()
        keys = c.execute(sa.text("SELECT key_sha256 FROM candidates")).scalars().all()
    engine.dispose()
    job_ids = [r.job_id for r in rows if r.job_id is not None]
    assert len(job_ids) == budget == len(set(job_ids))  # one evaluation per job id
    assert sorted(j.id for j in jobs) == sorted(job_ids)  # every dispatched job came back
    assert {j.status for j in jobs} == {"done"}
    assert len(keys) == len(set(keys))  # no candidate twice

    assert "lost the Redis broker" in err
    back = re.search(r"is back after ([0-9.]+) s: sent (\d+) jobs in flight again", err)
    assert back, err[-3000:]
    # At least the job waiting in the queue when Redis died was lost with it and sent again.
    assert int(back.group(2)) >= 1
    last_before = max(t for t in watch.times if t <= killed_at)
    after = [last_before] + [t for t in watch.times if t > killed_at]
    gaps = [b - a for a, b in zip(after, after[1:], strict=False)]
    print(
        f"\nRedis down {restarted_at - killed_at:.1f} s; controller reconnected after"
        f" {back.group(1)} s and sent {back.group(2)} jobs again; first evaluation after the"
        f" kill {gaps[0]:.1f} s after the last one before it, longest gap between evaluations"
        f" {max(gaps):.1f} s; run finished {summary['evaluations']}/{budget},"
        f" {after[-1] - killed_at:.1f} s after the kill"
    )


@needs_redis_server
def test_jobs_submitted_while_the_broker_is_down_are_sent_when_it_is_back(tmp_path, private_redis):
    env = _env(tmp_path, private_redis.url)
    queue = new_queue()
    notes: list[str] = []
    dispatcher = celery_dispatcher(env, queue, "down", capacity=2, notify=notes.append)
    client = redis.Redis(port=private_redis.port)
    try:
        first, second = _job(1), _job(2)
        dispatcher.submit(first)
        assert _queued_ids(client, env, queue) == [first.job_id]
        private_redis.kill()
        dispatcher.submit(second)  # does not raise: kept for later
        assert dispatcher.poll(0.2) == []
        assert dispatcher.broker_down
        assert any("lost the Redis broker" in n and "waiting" in n for n in notes), notes
        private_redis.start()  # empty: the first job is gone
        _poll_until(dispatcher, lambda _: not dispatcher.broker_down, 15)
        assert dispatcher.poll(0.1) == []
        assert sorted(_queued_ids(client, env, queue)) == sorted([first.job_id, second.job_id])
        assert dispatcher.resubmitted == 1  # the first; the second was never sent before
        assert len(dispatcher.outages_s) == 1
        assert any("is back after" in n for n in notes), notes
    finally:
        client.close()
        dispatcher.close()


@needs_redis_server
def test_a_redis_restart_between_two_polls_is_noticed_and_its_lost_jobs_sent_again(
    tmp_path, private_redis
):
    env = _env(tmp_path, private_redis.url)
    queue = new_queue()
    notes: list[str] = []
    dispatcher = celery_dispatcher(env, queue, "quick", notify=notes.append)
    client = redis.Redis(port=private_redis.port)
    try:
        job = _job()
        dispatcher.submit(job)
        assert dispatcher.poll(0.1) == []
        private_redis.kill()  # and back at once, empty, while the dispatcher is not looking
        private_redis.start()
        _poll_until(dispatcher, lambda _: dispatcher.resubmitted == 1, 10)
        assert _queued_ids(client, env, queue) == [job.job_id]
        assert any("sent 1 jobs in flight again" in n for n in notes), notes
    finally:
        client.close()
        dispatcher.close()


@needs_redis_server
def test_jobs_a_restarted_redis_still_holds_are_not_sent_twice(tmp_path, persistent_redis):
    env = _env(tmp_path, persistent_redis.url)
    queue = new_queue()
    notes: list[str] = []
    dispatcher = celery_dispatcher(env, queue, "kept", capacity=2, notify=notes.append)
    client = redis.Redis(port=persistent_redis.port)
    try:
        job = _job()
        dispatcher.submit(job)
        persistent_redis.kill()
        time.sleep(0.5)
        persistent_redis.start()  # with its append-only file: the job is still queued
        _poll_until(dispatcher, lambda _: any("still held" in n for n in notes), 10)
        dispatcher.poll(0.1)
        assert _queued_ids(client, env, queue) == [job.job_id]  # once, not twice
        assert dispatcher.resubmitted == 0
        assert any("sent 0 jobs in flight again (1 still held by it" in n for n in notes), notes
    finally:
        client.close()
        dispatcher.close()


@needs_redis_server
def test_a_result_sent_while_redis_restarts_waits_for_it(tmp_path, private_redis):
    """A worker that finishes while the broker is away sends its result once it is back."""
    env = _env(tmp_path, private_redis.url)
    app = create_app(fleet_settings(env))
    task = SimpleNamespace(app=app, request=SimpleNamespace(hostname="kernelmap-test@host"))
    message = {"job_id": uuid.uuid4().hex, "candidate_id": 5}
    private_redis.kill()
    restart = threading.Timer(2.0, private_redis.start)
    restart.start()
    t0 = time.monotonic()
    try:
        worker_tasks.report(task, message, "controller.waits", {"verdict": "OK", "messages": []})
    finally:
        restart.join()
    waited = time.monotonic() - t0
    client = redis.Redis(port=private_redis.port)
    raw = client.lrange(f"{env['KERNELMAP_REDIS_KEY_PREFIX']}controller.waits", 0, -1)
    client.close()
    app.close()
    assert len(raw) == 1 and json.loads(raw[0])["headers"]["task"] == REPORT
    assert 2.0 <= waited < 20.0


# --- a result that never comes -------------------------------------------------------------------


def test_a_job_whose_result_never_comes_is_sent_once_more_then_reported_failed(shared_env):
    queue = new_queue()
    dispatcher = celery_dispatcher(shared_env, queue, "lost", result_deadline_s=0.5)
    client = redis.Redis.from_url(SHARED_REDIS)
    key = f"{shared_env['KERNELMAP_REDIS_KEY_PREFIX']}eval.{queue}"
    try:
        job = _job()
        dispatcher.submit(job)
        # Waiting in the queue (no worker yet): not lost, however long it waits.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            assert dispatcher.poll(0.2) == []
        assert dispatcher.resubmitted == 0 and client.llen(key) == 1
        client.delete(key)  # the job vanishes without a broker fault
        _poll_until(dispatcher, lambda _: dispatcher.resubmitted == 1, 5)
        assert _queued_ids(client, shared_env, queue) == [job.job_id]
        client.delete(key)  # and again
        results = _poll_until(dispatcher, lambda got: bool(got), 5)
    finally:
        client.close()
        dispatcher.close()
    assert [(r.job_id, r.candidate_id) for r in results] == [(job.job_id, job.candidate_id)]
    result = results[0].result
    assert result["verdict"] == "RUNTIME_ERROR"
    assert "no worker returned a result" in result["messages"][0]
    assert "sent 2 times" in result["messages"][0]


# --- poison jobs --------------------------------------------------------------------------------


def _deliveries(client: redis.Redis, env: dict[str, str], job_id: str) -> int | None:
    value = client.get(f"{env['KERNELMAP_REDIS_KEY_PREFIX']}kernelmap:deliveries:{job_id}")
    return None if value is None else int(value)


def _set_deliveries(client: redis.Redis, env: dict[str, str], job_id: str, n: int) -> None:
    client.set(f"{env['KERNELMAP_REDIS_KEY_PREFIX']}kernelmap:deliveries:{job_id}", n, ex=600)


@pytest.mark.slow
def test_a_job_that_killed_its_worker_too_often_is_quarantined_not_evaluated(
    shared_env, start_worker
):
    queue = new_queue()
    worker = start_worker(shared_env, queue)
    dispatcher = celery_dispatcher(shared_env, queue, "poison", capacity=2)
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        healthy = _job(1)
        dispatcher.submit(healthy)
        got = _poll_until(dispatcher, lambda got: bool(got), 60)
        assert got[0].result["verdict"] == "OK", got[0].result["messages"]
        # The count is dropped once the result is sent (just after the controller may see it).
        deadline = time.monotonic() + 5
        while _deliveries(client, shared_env, healthy.job_id) is not None:
            assert time.monotonic() < deadline, "the delivery count of a finished job stayed"
            time.sleep(0.05)

        poison = _job(2)
        # Its worker died on each of its MAX_DELIVERIES starts so far.
        _set_deliveries(client, shared_env, poison.job_id, worker_tasks.MAX_DELIVERIES)
        dispatcher.submit(poison)
        got = _poll_until(dispatcher, lambda got: bool(got), 30)
    finally:
        client.close()
        dispatcher.close()
    assert [r.job_id for r in got] == [poison.job_id]
    result = got[0].result
    assert result["verdict"] == "RUNTIME_ERROR"
    assert result["messages"][0].startswith(
        f"evaluated {worker_tasks.MAX_DELIVERIES} times, each time its worker died:"
        " the candidate is quarantined"
    )
    assert result["stages_s"] == {}  # never evaluated
    assert f"job {poison.job_id} (candidate 2): RUNTIME_ERROR" not in worker.text()
    assert re.search(rf"job {poison.job_id} .* quarantined, not evaluated", worker.text())


@pytest.mark.slow
def test_a_job_redelivered_after_its_worker_was_killed_is_counted_and_bounded(
    shared_env, start_worker
):
    env = {**shared_env, "KERNELMAP_VISIBILITY_TIMEOUT_S": "3"}
    queue = new_queue()
    first = start_worker(env, queue)
    dispatcher = celery_dispatcher(env, queue, "killed", result_deadline_s=1.0)
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        job = _job()
        # Two earlier starts already ended with a dead worker.
        _set_deliveries(client, env, job.job_id, worker_tasks.MAX_DELIVERIES - 1)
        dispatcher.submit(job)
        first.wait_for(rf"kernelmap\.evaluate\[{job.job_id}\] received", 30)
        time.sleep(0.3)  # the evaluation has started (its zygote takes longer than this)
        assert "succeeded" not in first.text()
        first.kill()  # the whole worker: the job stays unacknowledged in Redis
        assert _deliveries(client, env, job.job_id) == worker_tasks.MAX_DELIVERIES
        second = start_worker(env, queue)
        got = _poll_until(dispatcher, lambda got: bool(got), 40)  # after the visibility timeout
        # kombu may restore an unacknowledged message twice when two connections sweep at
        # once (at least once delivery): every delivery past the bound is quarantined.
        assert {r.job_id for r in got} == {job.job_id}
        for r in got:
            assert r.result["verdict"] == "RUNTIME_ERROR"
            assert "quarantined" in r.result["messages"][0]
            assert r.result["worker"].startswith(f"kernelmap-{queue}-{second.proc.pid}@")
        assert _deliveries(client, env, job.job_id) == worker_tasks.MAX_DELIVERIES + len(got)
        # Its result deadline passed several times while Redis held it unacknowledged: it
        # was left to the visibility timeout, never sent twice.
        assert dispatcher.resubmitted == 0
    finally:
        client.close()
        dispatcher.close()


# --- a result acknowledged but never stored -----------------------------------------------------


class _Crash(Exception):
    """The controller dies."""


class _DiesOnIngest(RunStore):
    """Dies when asked to store a result (one at a time, or a batch)."""

    def ingest(self, job_result):
        raise _Crash(job_result.job_id)

    def ingest_many(self, results, *args, **kwargs):
        if results:
            raise _Crash(results[0].job_id)
        return super().ingest_many(results, *args, **kwargs)


def test_a_result_acked_but_not_stored_is_evaluated_again_on_resume(shared_env, tmp_path):
    """The dispatcher acknowledges a report before the loop stores it: a controller dying in
    between loses the message, and the resumed run dispatches the candidate again."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        task_id = repository.add_task(s, "softmax", TASK.read_text()).id
        run_id = repository.create_run(
            s, task_id, budget=1, seed=0, device="cpu", objective_label="cpu-time"
        ).id
        s.commit()
    app = create_app(fleet_settings(shared_env))
    queue = new_queue()
    client = redis.Redis.from_url(SHARED_REDIS)
    reply_key = f"{shared_env['KERNELMAP_REDIS_KEY_PREFIX']}controller.{run_id}"
    spec = CandidateSpec(SEED.read_text(), {"BLOCK": 8, "num_warps": 2}, "seed", (), "seed")
    dims = parse_dims("block_size,num_warps_param", "cpu")

    class Fleet(CeleryDispatcher):
        """A dispatcher whose jobs a stand-in worker answers at once."""

        def submit(self, job: Job) -> None:
            super().submit(job)
            app.send_task(
                REPORT,
                kwargs={
                    "job_id": job.job_id,
                    "candidate_id": job.candidate_id,
                    "result": fake_result(job.params, 1.0, device="cpu"),
                    "worker": "stand-in",
                },
                queue=self.reply_to,
            )

    def search(store: RunStore) -> SearchLoop:
        fleet = Fleet(app, queue, run_id, 1, TASK.read_text())
        loop = SearchLoop(MapArchive(dims), [SeedEmitter([spec])], fleet, store, budget=1)
        loop.resume()
        try:
            loop.run()
        finally:
            fleet.close()
        return loop

    try:
        with pytest.raises(_Crash):
            search(_DiesOnIngest(sessions, run_id))
        assert client.llen(reply_key) == 0  # acknowledged: gone from Redis
        assert client.hlen(f"{shared_env['KERNELMAP_REDIS_KEY_PREFIX']}unacked") == 0
        with sessions() as s:
            assert s.execute(sa.text("SELECT status FROM jobs")).scalars().all() == ["dispatched"]
        loop = search(RunStore(sessions, run_id))  # the resumed controller
        assert loop.evaluations == 1
        with sessions() as s:
            query = sa.text("SELECT status, count(*) FROM jobs GROUP BY status")
            jobs = dict(s.execute(query).all())
            evaluations = s.execute(sa.text("SELECT count(*) FROM evaluations")).scalar_one()
        # Sent again under its own id: the one job is done, evaluated once.
        assert jobs == {"done": 1} and evaluations == 1
    finally:
        client.close()
        engine.dispose()

"""The Celery evaluation fleet on the real Redis at 127.0.0.1:6379 with real worker processes.

Each test has its own Redis key prefix (kombu's ``global_keyprefix``), so its queues, bindings
and unacknowledged-message index are private even when several test runs share the server;
the keys are deleted afterwards. Workers are ``kernelmap worker`` subprocesses in their own
process group, killed with the whole group whatever the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from evolution.ports import Job
from services.dispatch import celery_queue as celery_dispatch
from tests.fleet_fixtures import REDIS_URL, ROOT, SEED, TASK, celery_dispatcher, new_queue

pytestmark = pytest.mark.redis


def test_a_job_is_evaluated_by_a_worker_and_its_result_comes_back(env, start_worker):
    queue = new_queue()
    start_worker(env, queue)
    dispatcher = celery_dispatcher(
        env, queue, "t1", eval_config={"timeout_s": 60.0, "device": "cpu"}
    )
    try:
        job = Job(uuid.uuid4().hex, 7, SEED.read_text(), {"BLOCK": 8, "num_warps": 2})
        dispatcher.submit(job)
        results = []
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            results = dispatcher.poll(1.0)
    finally:
        dispatcher.close()
    assert [(r.job_id, r.candidate_id) for r in results] == [(job.job_id, 7)]
    result = results[0].result
    assert result["verdict"] == "OK", result["messages"]
    assert result["params"] == {"BLOCK": 8, "num_warps": 2}
    assert result["worker"].startswith(f"kernelmap-{queue}-")


def test_no_worker_on_the_queue_is_said_once(env, monkeypatch):
    monkeypatch.setattr(celery_dispatch, "NO_WORKER_AFTER_S", 0.3)
    notes: list[str] = []
    queue = new_queue()
    dispatcher = celery_dispatcher(env, queue, "t2", notify=notes.append)
    try:
        dispatcher.submit(Job(uuid.uuid4().hex, 1, SEED.read_text(), {}))
        for _ in range(4):
            assert dispatcher.poll(0.2) == []
    finally:
        dispatcher.close()
    assert len(notes) == 1
    assert f"eval.{queue}" in notes[0] and f"kernelmap worker --queue {queue}" in notes[0]


def _run(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _db(env: dict[str, str]) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{Path(env['KERNELMAP_DATA_DIR']) / 'kernelmap.db'}")


def test_run_with_redis_evaluates_on_the_fleet(env, start_worker):
    env = dict(env)
    url = env.pop("KERNELMAP_REDIS_URL")  # given on the command line instead
    start_worker({**env, "KERNELMAP_REDIS_URL": url}, "cpu")
    p = _run(
        env,
        str(TASK),
        "--seed-candidate",
        str(SEED),
        "--budget",
        "4",
        "--no-templates",
        "--redis",
        url,
        "--json",
    )
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = json.loads(out)
    assert summary["evaluations"] == 4 and summary["status"] == "finished"
    engine = _db(env)
    with engine.connect() as c:
        workers = c.execute(sa.text("SELECT worker FROM jobs WHERE status = 'done'")).scalars()
        assert [w.split("@")[0].rsplit("-", 1)[0] for w in workers] == ["kernelmap-cpu"] * 4
    engine.dispose()


def test_a_job_whose_worker_is_killed_is_evaluated_again_and_recorded_once(env, start_worker):
    env = {**env, "KERNELMAP_VISIBILITY_TIMEOUT_S": "4"}
    queue = "cpu"
    first = start_worker(env, queue)
    run = _run(env, str(TASK), "--budget", "1", "--no-templates", "--json")
    try:
        job_id = first.wait_for(r"kernelmap\.evaluate\[([0-9a-f]{32})\] received", 60).group(1)
        time.sleep(0.3)  # the evaluation has started (its zygote takes longer than this)
        assert "succeeded" not in first.text()
        first.kill()
        second = start_worker(env, queue)
        second.wait_for(rf"kernelmap\.evaluate\[{job_id}\] received", 30)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert json.loads(out)["evaluations"] == 1
    engine = _db(env)
    with engine.connect() as c:
        jobs = c.execute(sa.text("SELECT id, status, worker FROM jobs")).all()
        evaluations = c.execute(sa.text("SELECT job_id FROM evaluations")).scalars().all()
    engine.dispose()
    assert [(j.id, j.status) for j in jobs] == [(job_id, "done")]
    assert jobs[0].worker.startswith(f"kernelmap-cpu-{second.proc.pid}@")
    assert evaluations == [job_id]
    # Started twice, once with a worker that died; the count goes once the result is sent.
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{env['KERNELMAP_REDIS_KEY_PREFIX']}kernelmap:deliveries:{job_id}"
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(key)
    client.close()


def test_a_job_whose_pool_process_dies_is_retried_at_once(env, start_worker):
    queue = new_queue()
    worker = start_worker(env, queue)
    dispatcher = celery_dispatcher(env, queue, "t5")
    try:
        job = Job(uuid.uuid4().hex, 3, SEED.read_text(), {})
        dispatcher.submit(job)
        worker.wait_for(rf"kernelmap\.evaluate\[{job.job_id}\] received")
        time.sleep(0.3)
        pid = worker.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert children, "the worker has no pool process"
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        results = []
        deadline = time.monotonic() + 30  # well under the 570 s visibility timeout
        while not results and time.monotonic() < deadline:
            results = dispatcher.poll(1.0)
    finally:
        dispatcher.close()
    assert [r.job_id for r in results] == [job.job_id]
    assert results[0].result["verdict"] == "OK"
    assert "Retry in 0s: WorkerLostError" in worker.text()

"""``GET /metrics`` on SQLite and PostgreSQL, with the real Redis and without one.

The exposition text is read back with ``prometheus_client``'s parser (an implementation of the
format independent of ours); rows are written through the repository, the run store and the
models, as the service writes them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from archive import repository, run_leases
from archive.models import RemoteJob, Worker, utcnow
from archive.run_store import RunStore
from evaluator_worker.verdict import Verdict
from evolution.candidate import CandidateSpec
from evolution.ports import Job, JobResult
from services import keys
from services.api import create_app
from services.config import Settings
from services.workers import fleet
from services.workers.celery_app import EVALUATE
from services.workers.celery_app import create_app as create_celery_app

REDIS_URL = "redis://127.0.0.1:6379/0"
TASK_SOURCE = (Path(__file__).parents[2] / "data" / "softmax_task.py").read_text()
SEED_SOURCE = """\
import torch
import torch.nn as nn

SEARCH_SPACE = {"BLOCK": [64, 128, 256, 512]}


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""

Series = dict[tuple[str, frozenset], float]


@dataclasses.dataclass
class Scrape:
    """A parsed scrape: each sample by (name, labels), each family's type and help."""

    samples: Series
    types: dict[str, str]
    helps: dict[str, str]
    text: str

    def of(self, name: str) -> dict[frozenset, float]:
        """The samples of metric ``name``, by their labels."""
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def value(self, name: str, **labels: str) -> float:
        """The sample of ``name`` with exactly these ``labels`` (KeyError if none)."""
        return self.samples[(name, frozenset(labels.items()))]


def parse(text: str) -> Scrape:
    """Parse an exposition; a series given twice fails the test."""
    samples: Series = {}
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        helps[family.name] = family.documentation
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return Scrape(samples, types, helps, text)


@dataclasses.dataclass
class Api:
    """A client on a fresh app and a key of each role."""

    client: TestClient
    sessions: sessionmaker[Session]
    settings: Settings
    admin: str
    user: str
    worker: str

    def scrape(self) -> Scrape:
        """``GET /metrics`` with the admin key, checked and parsed."""
        response = self.client.get("/metrics", headers={"Authorization": f"Bearer {self.admin}"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(response.text)


def make_api(sessions: sessionmaker[Session], settings: Settings) -> Api:
    """The API on ``sessions`` with ``settings``, and a key of each role."""
    with sessions() as s:
        _, admin = keys.create_key(s, "admin", "root")
        _, user = keys.create_key(s, "user", "alice")
        _, worker = keys.create_key(s, "worker", "gpu-0")
        s.commit()
    client = TestClient(create_app(sessions, settings))
    return Api(client, sessions, settings, admin, user, worker)


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Api:
    """The API with no Redis configured."""
    return make_api(sessions, Settings(data_dir=tmp_path / "data", device="cpu"))


@pytest.fixture
def redis_api(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Api]:
    """The API on the real Redis, under a key prefix of this test's own."""
    prefix = f"kernelmap-test-{uuid.uuid4().hex[:12]}:"
    settings = Settings(
        data_dir=tmp_path / "data", device="cpu", redis_url=REDIS_URL, redis_key_prefix=prefix
    )
    yield make_api(sessions, settings)
    client = redis.Redis.from_url(REDIS_URL)
    found = list(client.scan_iter(match=f"{prefix}*"))
    if found:
        client.delete(*found)
    client.close()


def add_run(sessions: sessionmaker[Session], status: str = "queued") -> int:
    """A run (of a new task) in ``status``; its id."""
    with sessions() as s:
        task = repository.add_task(s, "softmax", TASK_SOURCE, {"dtype": "torch.float32"}, {})
        run = repository.create_run(
            s, task.id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
        )
        s.flush()
        if status != "queued":
            repository.set_run_status(s, run.id, status)
        s.commit()
        return run.id


def evaluate(store: RunStore, block: int, verdict: str) -> tuple[str, int]:
    """A candidate of the run, dispatched as a job and evaluated with ``verdict``."""
    proposal = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": block}, "params", ()))
    job_id = uuid.uuid4().hex
    store.dispatched(Job(job_id, proposal.candidate_id, SEED_SOURCE, {"BLOCK": block}))
    correct = verdict == "OK"
    store.ingest(JobResult(job_id, proposal.candidate_id, {"verdict": verdict, "correct": correct}))
    return job_id, proposal.candidate_id


def add_worker(
    s: Session, name: str, hardware_class: str, seen_s_ago: float | None, revoked: bool = False
) -> None:
    """An enrolled remote worker last heard from ``seen_s_ago`` seconds ago (None: never)."""
    now = utcnow()
    s.add(
        Worker(
            name=name,
            hardware_class=hardware_class,
            hardware={},
            token_prefix="km_w0000",
            token_hash=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
            created_at=now - dt.timedelta(hours=1),
            last_seen_at=None if seen_s_ago is None else now - dt.timedelta(seconds=seen_s_ago),
            revoked_at=now if revoked else None,
        )
    )


# -- access ----------------------------------------------------------------------------------------


def test_metrics_need_an_admin_key(api):
    assert api.client.get("/metrics").status_code == 401
    bad = api.client.get("/metrics", headers={"Authorization": "Bearer km_not_a_key"})
    assert bad.status_code == 401
    for key in (api.user, api.worker):
        response = api.client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 403
    assert api.client.get("/api/v1/metrics").status_code == 404  # not under the API prefix
    api.scrape()


# -- the database ----------------------------------------------------------------------------------


def test_an_empty_service_reports_zeros_and_no_fleet(api):
    scrape = api.scrape()
    assert "kernelmap_redis_up" not in scrape.types  # no Redis configured
    assert "kernelmap_queue_depth" not in scrape.types
    assert scrape.of("kernelmap_evaluations_total") == {
        frozenset({("verdict", v.value)}): 0 for v in Verdict
    }
    assert scrape.value("kernelmap_evaluations_per_second") == 0
    assert set(scrape.of("kernelmap_runs").values()) == {0}
    assert scrape.value("kernelmap_runs", status="running") == 0
    assert scrape.of("kernelmap_remote_jobs") == {
        frozenset({("status", s)}): 0 for s in ("queued", "leased", "done")
    }
    assert "kernelmap_workers" not in scrape.types
    for name, kind in scrape.types.items():
        assert kind in ("gauge", "counter") and scrape.helps[name], name


def test_evaluations_runs_workers_and_remote_jobs_are_counted(api):
    running = add_run(api.sessions, "running")
    add_run(api.sessions, "running")
    add_run(api.sessions, "finished")
    add_run(api.sessions)
    store = RunStore(api.sessions, running)
    job_ok, _ = evaluate(store, 64, "OK")
    evaluate(store, 128, "OK")
    job_bad, _ = evaluate(store, 256, "INCORRECT")
    job_old, old_candidate = evaluate(store, 512, "TIMEOUT")
    with api.sessions() as s:
        # One evaluation from two minutes ago: in the total, not in the rate.
        old = repository.latest_evaluation(s, old_candidate)
        old.created_at = utcnow() - dt.timedelta(seconds=120)
        for job_id, status in [(job_ok, "queued"), (job_bad, "queued"), (job_old, "leased")]:
            s.add(RemoteJob(job_id=job_id, run_id=running, hardware_class="h100", payload={}))
            s.flush()
            s.get(RemoteJob, job_id).status = status
        add_worker(s, "box-1", "h100", seen_s_ago=5)
        add_worker(s, "box-2", "h100", seen_s_ago=600)  # enrolled, silent for 10 minutes
        add_worker(s, "box-3", "a100", seen_s_ago=None)  # enrolled an hour ago, never seen
        add_worker(s, "box-4", "h100", seen_s_ago=1, revoked=True)
        s.commit()

    scrape = api.scrape()
    assert scrape.types["kernelmap_evaluations"] == "counter"
    assert scrape.value("kernelmap_evaluations_total", verdict="OK") == 2
    assert scrape.value("kernelmap_evaluations_total", verdict="INCORRECT") == 1
    assert scrape.value("kernelmap_evaluations_total", verdict="TIMEOUT") == 1
    assert scrape.value("kernelmap_evaluations_total", verdict="CUDA_FATAL") == 0
    assert scrape.value("kernelmap_evaluations_per_second") == pytest.approx(3 / 60)
    assert scrape.value("kernelmap_runs", status="running") == 2
    assert scrape.value("kernelmap_runs", status="finished") == 1
    assert scrape.value("kernelmap_runs", status="queued") == 1
    assert scrape.value("kernelmap_remote_jobs", status="queued") == 2
    assert scrape.value("kernelmap_remote_jobs", status="leased") == 1
    assert scrape.value("kernelmap_remote_jobs", status="done") == 0

    ages = scrape.of("kernelmap_worker_heartbeat_age_seconds")
    by_worker = {
        dict(labels)["worker"].split("#")[0]: (dict(labels), v) for labels, v in ages.items()
    }
    assert sorted(by_worker) == ["box-1", "box-2", "box-3"]  # the revoked one is gone
    labels, age = by_worker["box-1"]
    assert labels["kind"] == "remote" and labels["hardware_class"] == "h100"
    assert 5 <= age < 30
    assert 600 <= by_worker["box-2"][1] < 630
    assert 3600 <= by_worker["box-3"][1] < 3630
    # Live: heard from recently. A class with enrolled workers but none live is a 0.
    assert scrape.value("kernelmap_workers", kind="remote", hardware_class="h100") == 1
    assert scrape.value("kernelmap_workers", kind="remote", hardware_class="a100") == 0


def test_label_values_are_escaped(api):
    name = 'rack "7"\\gpu\nzero'
    with api.sessions() as s:
        add_worker(s, name, "h100", seen_s_ago=2)
        s.commit()
    scrape = api.scrape()
    (labels,) = scrape.of("kernelmap_worker_heartbeat_age_seconds")
    assert dict(labels)["worker"].rsplit("#", 1)[0] == name
    assert 'rack \\"7\\"\\\\gpu\\nzero' in scrape.text


# -- the Celery fleet ------------------------------------------------------------------------------


@pytest.mark.redis
def test_queues_and_celery_workers_come_from_redis(redis_api):
    settings = redis_api.settings
    app = create_celery_app(settings)
    try:
        for _ in range(3):
            app.send_task(EVALUATE, args=[{}], queue="eval.cuda")
        app.send_task(EVALUATE, args=[{}], queue="eval.cuda", priority=6)
        app.send_task(EVALUATE, args=[{}], queue="eval.h100")
    finally:
        app.close()
    with (
        fleet.Heartbeat(settings, "kernelmap-cuda-1@a", "cuda", {}, interval_s=5),
        fleet.Heartbeat(settings, "kernelmap-cuda-2@b", "cuda", {}, interval_s=5),
    ):
        scrape = redis_api.scrape()
    assert scrape.value("kernelmap_redis_up") == 1
    assert scrape.of("kernelmap_queue_depth") == {
        frozenset({("queue", "eval.cuda")}): 4,
        frozenset({("queue", "eval.h100")}): 1,
    }
    assert scrape.value("kernelmap_workers", kind="celery", hardware_class="cuda") == 2
    # A queue nobody consumes shows up as a class without workers.
    assert scrape.value("kernelmap_workers", kind="celery", hardware_class="h100") == 0
    for worker in ("kernelmap-cuda-1@a", "kernelmap-cuda-2@b"):
        age = scrape.value(
            "kernelmap_worker_heartbeat_age_seconds",
            worker=worker,
            kind="celery",
            hardware_class="cuda",
        )
        assert 0 <= age < 5
    # Stopped workers are gone from the next scrape.
    after = redis_api.scrape()
    assert after.of("kernelmap_worker_heartbeat_age_seconds") == {}
    assert after.value("kernelmap_workers", kind="celery", hardware_class="cuda") == 0


def test_an_unreachable_redis_is_reported_not_failed(sessions, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", device="cpu", redis_url="redis://127.0.0.1:1/0")
    api = make_api(sessions, settings)
    scrape = api.scrape()
    assert scrape.value("kernelmap_redis_up") == 0
    assert "kernelmap_queue_depth" not in scrape.types
    assert scrape.value("kernelmap_runs", status="running") == 0  # the rest is still there


def test_run_owners_controllers_and_lease_renewals_are_reported(api):
    held, other, expired = (add_run(api.sessions, "running") for _ in range(3))
    now = utcnow()
    with api.sessions() as s:
        run_leases.heartbeat(s, "ctl-a", max_runs=8, now=now)
        run_leases.heartbeat(s, "ctl-idle", max_runs=8, now=now)
        a = run_leases.acquire(s, held, "ctl-a", 60.0, now=now)
        run_leases.acquire(s, other, "cli-box:42", 60.0, now=now)
        run_leases.acquire(s, expired, "ctl-gone", 1.0, now=now - dt.timedelta(seconds=30))
        for _ in range(3):
            a = run_leases.renew(s, a, 60.0, now=now)
        s.commit()
    scrape = api.scrape()
    assert scrape.of("kernelmap_run_owner") == {
        frozenset({("run_id", str(held)), ("owner", "ctl-a")}): 1,
        frozenset({("run_id", str(other)), ("owner", "cli-box:42")}): 1,
    }
    assert scrape.value("kernelmap_controller_runs", controller="ctl-a") == 1
    assert scrape.value("kernelmap_controller_runs", controller="ctl-idle") == 0
    assert 0 <= scrape.value("kernelmap_controller_heartbeat_age_seconds", controller="ctl-a") < 30
    assert scrape.types["kernelmap_lease_renewals"] == "counter"
    assert scrape.value("kernelmap_lease_renewals_total", owner="ctl-a") == 3
    assert scrape.value("kernelmap_lease_renewals_total", owner="cli-box:42") == 0
    assert "ctl-gone" not in str(scrape.of("kernelmap_lease_renewals_total"))


def test_admins_list_the_controllers_and_their_runs(api):
    run_id = add_run(api.sessions, "running")
    with api.sessions() as s:
        run_leases.heartbeat(s, "ctl-a", max_runs=8)
        run_leases.acquire(s, run_id, "ctl-a", 60.0)
        s.commit()
    for key in (api.user, api.worker):
        denied = api.client.get("/api/v1/controllers", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403
    response = api.client.get(
        "/api/v1/controllers", headers={"Authorization": f"Bearer {api.admin}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lease_s"] == api.settings.lease_s
    (ctl,) = body["items"]
    assert ctl["name"] == "ctl-a" and ctl["alive"] and ctl["max_runs"] == 8
    assert [r["run_id"] for r in ctl["runs"]] == [run_id]
    assert ctl["runs"][0]["epoch"] == 1 and 0 < ctl["runs"][0]["expires_in_s"] <= 60

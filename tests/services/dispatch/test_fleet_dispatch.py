"""Routing a run's jobs between the Celery fleet and remote workers (services.dispatch.fleet),
and a remote worker serving a controller's run end to end."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from archive import db, leases, repository, run_control
from archive.models import Evaluation, utcnow
from evolution.fakes import FakeDispatcher, fake_result
from evolution.ports import Job
from services import keys
from services.api import create_app
from services.api.launch import create_queued_run
from services.config import Settings
from services.dispatch import fleet as fleet_dispatch
from services.dispatch.fleet import NO_TRUSTED_WORKER, FleetDispatcher
from services.runs import views
from services.runs.controller import Controller
from services.workers.remote import run_remote_worker

DATA = Path(__file__).parents[2] / "data"


def _fake() -> FakeDispatcher:
    return FakeDispatcher(lambda job: fake_result(job.params, 1.0), capacity=8)


def _enrol(sessions: sessionmaker[Session], hardware_class: str, seen_s_ago: float) -> None:
    with sessions() as s:
        user = repository.add_user(s, "enroller", "worker")
        worker, _ = leases.enrol_worker(s, user.id, "box", hardware_class, {})
        worker.last_seen_at = utcnow() - dt.timedelta(seconds=seen_s_ago)
        s.commit()


def _fleet(sessions, celery_n: int) -> tuple[FleetDispatcher, FakeDispatcher, FakeDispatcher]:
    celery, lease = _fake(), _fake()
    return FleetDispatcher(celery, lease, sessions, "cuda", lambda: celery_n, 8), celery, lease


def _job(candidate_id: int = 1, trusted_only: bool = False) -> Job:
    return Job(uuid.uuid4().hex, candidate_id, "src", {"BLOCK": 128}, trusted_only=trusted_only)


def test_jobs_go_to_celery_when_no_remote_worker_is_alive(sessions) -> None:
    _enrol(sessions, "cuda", seen_s_ago=3600)  # enrolled long ago, silent since
    fleet, celery, lease = _fleet(sessions, celery_n=2)
    for _ in range(3):
        fleet.submit(_job())
    assert len(celery.submitted) == 3 and lease.submitted == []
    assert len(fleet.poll(0.1)) == 3


def test_jobs_wait_for_any_worker_then_take_the_route_that_turned_up(sessions, monkeypatch):
    monkeypatch.setattr(fleet_dispatch, "REFRESH_S", 0.0)
    alive = {"celery": 0}
    celery, lease = _fake(), _fake()
    fleet = FleetDispatcher(celery, lease, sessions, "cuda", lambda: alive["celery"], 8)
    fleet.submit(_job())
    assert fleet.poll(0.05) == [] and celery.submitted == lease.submitted == []
    _enrol(sessions, "cuda", seen_s_ago=1)  # a remote worker turns up first
    fleet.poll(0.05)
    assert len(lease.submitted) == 1 and celery.submitted == []


def test_jobs_nobody_takes_go_to_the_celery_queue_in_the_end(sessions, monkeypatch):
    monkeypatch.setattr(fleet_dispatch, "REFRESH_S", 0.0)
    monkeypatch.setattr(fleet_dispatch, "PARK_MAX_S", 0.2)
    fleet, celery, lease = _fleet(sessions, celery_n=0)
    fleet.submit(_job())
    assert fleet.poll(0.05) == [] and celery.submitted == []
    time.sleep(0.2)
    assert len(fleet.poll(0.05)) == 1 and len(celery.submitted) == 1  # a bare celery worker


def test_jobs_go_to_remote_workers_when_no_celery_worker_is_alive(sessions) -> None:
    _enrol(sessions, "cuda", seen_s_ago=5)
    fleet, celery, lease = _fleet(sessions, celery_n=0)
    for _ in range(3):
        fleet.submit(_job())
    assert celery.submitted == [] and len(lease.submitted) == 3


def test_jobs_are_shared_by_workers_alive_on_both_routes(sessions) -> None:
    _enrol(sessions, "cuda", seen_s_ago=5)
    fleet, celery, lease = _fleet(sessions, celery_n=3)
    for _ in range(8):
        fleet.submit(_job())
    assert (len(celery.submitted), len(lease.submitted)) == (6, 2)  # 3 Celery : 1 remote


def test_a_trusted_re_measure_never_goes_to_a_remote_worker(sessions) -> None:
    _enrol(sessions, "cuda", seen_s_ago=5)
    fleet, celery, lease = _fleet(sessions, celery_n=1)
    fleet.submit(_job(7, trusted_only=True))
    assert len(celery.submitted) == 1 and lease.submitted == []


def test_without_a_trusted_worker_the_claim_comes_back_marked(sessions) -> None:
    _enrol(sessions, "cuda", seen_s_ago=5)
    fleet, celery, lease = _fleet(sessions, celery_n=0)
    lease.evaluate = lambda job: dict(fake_result(job.params, 0.01), unverified=True)
    fleet.submit(_job(7))
    (claim,) = fleet.poll(0.1)
    check = _job(7, trusted_only=True)
    fleet.submit(check)
    assert celery.submitted == [] and len(lease.submitted) == 1
    (back,) = fleet.poll(0.1)
    assert back.job_id == check.job_id and back.candidate_id == 7
    assert back.result["unverified"] is True and back.result["verification"] == NO_TRUSTED_WORKER
    assert back.result["timing"] == claim.result["timing"]


@pytest.mark.redis
@pytest.mark.slow
def test_a_remote_worker_serves_a_controllers_run(tmp_path: Path) -> None:
    """No Celery worker at all: the controller's jobs go to a remote worker over HTTP; its
    results are stored unverified, and what would improve the map is marked as not re-measured."""
    from tests.services.workers.test_remote_workers import _serve

    url = db.default_url(tmp_path / "server")
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    settings = Settings(
        data_dir=tmp_path / "server",
        device="cpu",
        redis_url="redis://127.0.0.1:6379/0",
        redis_key_prefix=f"test-{uuid.uuid4().hex[:8]}:",
        run_jobs_in_flight=2,
    )
    with sessions() as s:
        alice = repository.add_user(s, "alice", "user")
        _, enrolment = keys.create_key(s, "worker", "enrolment")
        task = repository.add_task(
            s, name="softmax", source=(DATA / "softmax_task.py").read_text(), meta={}
        )
        task.owner_id = alice.id
        run = create_queued_run(
            s,
            alice,
            task,
            budget=4,
            hardware="cpu",
            seed_sources=[(DATA / "chunked_softmax.py").read_text()],
            timeout_s=60,
            emitters=["gaussian"],
        )
        s.commit()
        run_id = run.id
    controller = Controller(settings, sessions)
    base, stop_server = _serve(create_app(sessions, settings, start_run=controller.wake), None)
    stop = threading.Event()
    threads = [
        threading.Thread(target=controller.serve_forever, args=(stop,), daemon=True),
        threading.Thread(
            target=run_remote_worker,
            args=(base, enrolment),
            kwargs=dict(
                hardware_class="cpu", device="cpu", data_dir=tmp_path / "remote", stop=stop
            ),
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with sessions() as s:
                status = run_control.status_of(s, run_id)
            if status in ("finished", "failed"):
                break
            time.sleep(0.5)
        assert status == "finished"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        stop_server()
    with sessions() as s:
        evaluations = list(s.query(Evaluation))
        assert len(evaluations) >= 4
        assert all(e.result.get("unverified") is True for e in evaluations)
        assert all(str(e.worker).startswith("remote:") for e in evaluations)
        elites = repository.current_elites(s, run_id)
        assert elites
        assert [c["verified"] for c in views.archive_table(s, run_id)] == [False] * len(elites)
        for elite in elites:
            latest = repository.latest_evaluation(s, elite.candidate_id)
            assert latest.result.get("verification") == NO_TRUSTED_WORKER
    engine.dispose()

"""What the Celery dispatcher says when jobs wait with no result: busy workers or none at all
(services.dispatch.celery_queue.stall_note), from the workers' heartbeats and, for the fleet
route, the remote workers alive."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pytest

from archive import leases, repository
from archive.models import utcnow
from evolution.fakes import FakeDispatcher, fake_result
from evolution.ports import Job
from services.dispatch import celery_queue
from services.dispatch import fleet as fleet_dispatch
from services.dispatch.celery_queue import NO_WORKER_AFTER_S, stall_note
from services.dispatch.fleet import FleetDispatcher
from services.workers.fleet import Heartbeat
from tests.fleet_fixtures import SEED, celery_dispatcher, fleet_settings, new_queue


def _worker(name: str, hardware_class: str = "cpu", age_s: float = 2.4) -> dict:
    return {"name": name, "kind": "celery", "hardware_class": hardware_class, "age_s": age_s}


def test_a_live_worker_of_the_class_is_said_busy_not_absent() -> None:
    note = stall_note("eval.cpu", "cpu", 31.2, 2, [_worker("kernelmap-cpu-7@box")])
    assert note is not None and note.kind == "busy" and note.level == logging.INFO
    assert note.text.startswith("2 jobs wait on eval.cpu and no result for 31 s")
    assert "1 worker of class cpu is alive and busy" in note.text
    assert "kernelmap-cpu-7@box, heartbeat 2 s ago" in note.text
    assert "start one" not in note.text


def test_many_live_workers_are_counted_past_the_first_few() -> None:
    workers = [_worker(f"w{i}") for i in range(5)]
    note = stall_note("eval.cpu", "cpu", 40.0, 1, workers)
    assert note is not None and note.kind == "busy"
    assert "5 workers of class cpu are alive and busy" in note.text
    assert "w0" in note.text and "w2" in note.text and "w3" not in note.text
    assert "2 more" in note.text


def test_no_live_worker_of_the_class_is_a_warning_saying_what_to_start() -> None:
    others = [_worker("kernelmap-cuda-1@gpu", hardware_class="cuda")]
    note = stall_note("eval.cpu", "cpu", 30.0, 1, others, broker="redis://127.0.0.1:6379/0")
    assert note is not None and note.kind == "absent" and note.level == logging.WARNING
    assert "no worker is alive for eval.cpu on redis://127.0.0.1:6379/0" in note.text
    assert "start one with `kernelmap worker --queue cpu`" in note.text


def test_remote_workers_alive_are_named_not_called_absent() -> None:
    note = stall_note("eval.cpu", "cpu", 30.0, 1, [], remote_alive=2)
    assert note is not None and note.kind == "absent"
    assert "no worker is alive" not in note.text
    assert "no cluster worker is alive for eval.cpu" in note.text
    assert "2 remote workers of class cpu are alive" in note.text
    assert "`kernelmap worker --queue cpu`" in note.text


@pytest.mark.parametrize(("idle_s", "waiting"), [(NO_WORKER_AFTER_S - 0.1, 3), (60.0, 0)])
def test_nothing_is_said_before_the_period_or_with_nothing_waiting(idle_s, waiting) -> None:
    assert stall_note("eval.cpu", "cpu", idle_s, waiting, []) is None


def _enrol_remote(sessions, hardware_class: str, seen_s_ago: float) -> None:
    with sessions() as s:
        user = repository.add_user(s, "enroller", "worker")
        worker, _ = leases.enrol_worker(s, user.id, "box", hardware_class, {})
        worker.last_seen_at = utcnow() - dt.timedelta(seconds=seen_s_ago)
        s.commit()


def test_the_fleet_tells_its_celery_route_how_many_remote_workers_are_alive(sessions, monkeypatch):
    monkeypatch.setattr(fleet_dispatch, "REFRESH_S", 0.0)
    celery = FakeDispatcher(lambda job: fake_result(job.params, 1.0), capacity=8)
    celery.remote_alive = None
    lease = FakeDispatcher(lambda job: fake_result(job.params, 1.0), capacity=8)
    FleetDispatcher(celery, lease, sessions, "cpu", lambda: 0, 8)
    assert celery.remote_alive() == 0
    _enrol_remote(sessions, "cpu", seen_s_ago=1)
    assert celery.remote_alive() == 1


@pytest.mark.redis
def test_a_heartbeat_makes_the_stall_busy_and_its_absence_a_warning(env, monkeypatch, caplog):
    monkeypatch.setattr(celery_queue, "NO_WORKER_AFTER_S", 0.2)
    monkeypatch.setattr(celery_queue, "STALL_CHECK_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger=celery_queue.__name__)
    queue = new_queue()  # nobody consumes it: the job stays waiting
    notes: list[str] = []
    name = f"kernelmap-{queue}-1@test"
    heartbeat = Heartbeat(fleet_settings(env), name, queue, {}, interval_s=30.0)
    dispatcher = celery_dispatcher(env, queue, "stall", notify=notes.append)
    try:
        assert heartbeat.beat()  # a live worker of the class, as `kernelmap worker` writes it
        dispatcher.submit(Job(uuid.uuid4().hex, 1, SEED.read_text(), {}))
        for _ in range(4):
            assert dispatcher.poll(0.15) == []
        busy = [r.getMessage() for r in caplog.records if "alive and busy" in r.getMessage()]
        assert len(busy) == 1, busy  # said once, not at every poll
        assert busy[0].startswith("run stall: 1 job waits on eval.") and name in busy[0]
        assert notes == []  # not a warning: nothing to start

        heartbeat.stop()  # the worker is gone
        for _ in range(3):
            assert dispatcher.poll(0.15) == []
    finally:
        dispatcher.close()
    assert len(notes) == 1, notes
    assert f"no worker is alive for eval.{queue}" in notes[0]
    assert f"`kernelmap worker --queue {queue}`" in notes[0]

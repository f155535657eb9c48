"""services.runs.ownership with a simulated clock: a stolen lease stops the old owner.

The old owner's lease expires (its process stalled past the lease), another owner takes the
run; from then on every write of the old owner's store is refused at the fence, its renewal
fails, its stop event is set and the loss is said. Also: ``kernelmap run --resume`` of a run
another live process is searching is refused with a message naming that owner.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from archive import repository, run_leases
from archive.models import Job as JobRow
from archive.run_leases import LeaseLost
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import Job
from services.config import Settings
from services.runs.ownership import RunOwnership
from services.runs.search import RunError, RunOptions, run_search
from tests.clock import Clock


def _run(sessions) -> int:
    with sessions() as s:
        task = repository.add_task(s, "t", "print(1)")
        run = repository.create_run(
            s, task.id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
        )
        s.commit()
        return run.id


def test_a_stolen_lease_fences_the_old_owner_and_stops_it(sessions) -> None:
    run_id = _run(sessions)
    clock = Clock()
    said: list[str] = []
    old = RunOwnership(sessions, run_id, "ctl-old", 3.0, clock=clock, notify=said.append)
    assert old.acquire()
    store = RunStore(sessions, run_id, fence=old.fence)
    (p,) = store.propose_many([CandidateSpec("x = 1\n", {}, "seed", (), "a.py")])
    store.dispatched_many([Job("job-1", p.candidate_id, "x = 1\n", {})])  # allowed: ours

    clock.advance(10)  # the old owner stalled past its lease ...
    new = RunOwnership(sessions, run_id, "ctl-new", 3.0, clock=clock)
    assert new.acquire()  # ... and another controller took the run
    with pytest.raises(LeaseLost, match="ctl-new took it"):
        store.dispatched_many([Job("job-2", p.candidate_id, "x = 1\n", {})])
    with pytest.raises(LeaseLost):
        store.propose_many([CandidateSpec("x = 2\n", {}, "seed", (), "b.py")])
    assert old.lost.is_set()
    assert said and "ctl-old no longer holds its lease" in said[0]
    assert "stopped dispatching" in said[0]
    assert not old.renew()  # and its renewals fail from now on
    with sessions() as s:
        assert run_leases.holder(s, run_id, now=clock()).owner == "ctl-new"
        jobs = s.scalars(sa.select(JobRow.id)).all()
    assert jobs == ["job-1"]  # nothing of the old owner landed after the takeover
    new_store = RunStore(sessions, run_id, fence=new.fence)
    new_store.dispatched_many([Job("job-3", p.candidate_id, "x = 1\n", {})])  # the new owner's


def test_the_keeper_notices_the_loss_and_sets_stop(sessions) -> None:
    run_id = _run(sessions)
    clock = Clock()
    old = RunOwnership(sessions, run_id, "ctl-old", 0.3, clock=clock, notify=lambda _: None)
    assert old.acquire()
    stop = threading.Event()
    old.keep(stop)
    try:
        clock.advance(5)
        assert RunOwnership(sessions, run_id, "ctl-new", 30.0, clock=clock).acquire()
        assert stop.wait(5), "the keeper did not stop the search"
        assert old.lost.is_set()
    finally:
        old.release()
    with sessions() as s:  # releasing a lost lease leaves the new owner's alone
        assert run_leases.holder(s, run_id, now=clock()).owner == "ctl-new"


def test_run_resume_of_a_run_another_process_searches_is_refused(db_url, tmp_path) -> None:
    from archive import db

    engine = db.make_engine(db_url)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    run_id = _run(sessions)
    with sessions() as s:
        repository.set_run_status(s, run_id, "interrupted")
        s.commit()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with sessions() as s:
            run_leases.acquire(s, run_id, "ctl-elsewhere", 60.0, pid=other.pid)
            s.commit()
        settings = Settings(data_dir=Path(tmp_path), database_url=db_url)
        with pytest.raises(RunError, match=r"run \d+ is being searched by ctl-elsewhere"):
            run_search(settings, RunOptions(resume=run_id, db_url=db_url, notify=lambda _: None))
    finally:
        other.kill()
        other.wait()
        engine.dispose()

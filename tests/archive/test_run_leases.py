"""archive.run_leases on SQLite and PostgreSQL, with a simulated clock: one owner per run.

Takes, renewals, expiry, takeover with a new epoch, the fence refusing an old owner, the
global per-user limit, a crashed local owner replaced at once, and many threads racing for one
run's lease (exactly one wins on both backends).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from archive import repository, run_leases, users
from archive.models import utcnow
from archive.run_leases import LeaseLost

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _runs(sessions: sessionmaker[Session], n: int, owner_id: int | None = None) -> list[int]:
    with sessions() as s:
        task = repository.add_task(s, "t", "print(1)", owner_id=owner_id)
        ids = []
        for _ in range(n):
            run = repository.create_run(
                s, task.id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
            )
            run.owner_id = owner_id
            ids.append(run.id)
        s.commit()
        return ids


def _acquire(sessions, run_id, owner, at, ttl=10.0, **kw):
    with sessions() as s:
        lease = run_leases.acquire(s, run_id, owner, ttl, now=_at(at), **kw)
        s.commit()
        return lease


def test_one_owner_until_expiry_then_a_takeover_with_a_new_epoch(sessions) -> None:
    (run,) = _runs(sessions, 1)
    a = _acquire(sessions, run, "ctl-a", 0)
    assert a is not None and a.epoch == 1
    assert _acquire(sessions, run, "ctl-b", 5) is None  # held
    with sessions() as s:
        renewed = run_leases.renew(s, a, 10.0, now=_at(8))
        s.commit()
    assert renewed is not None and renewed.expires_at == _at(18)
    assert _acquire(sessions, run, "ctl-b", 15) is None  # renewed: still held
    b = _acquire(sessions, run, "ctl-b", 18.5)
    assert b is not None and b.epoch == 2 and b.owner == "ctl-b"
    with sessions() as s:
        assert run_leases.renew(s, renewed, 10.0, now=_at(19)) is None  # a lost it
        with pytest.raises(LeaseLost, match="ctl-b took it"):
            run_leases.check(s, renewed)
        run_leases.check(s, b)  # b's writes pass
        assert run_leases.holder(s, run, now=_at(19)).owner == "ctl-b"


def test_an_expired_lease_nobody_took_is_renewed_by_its_owner(sessions) -> None:
    (run,) = _runs(sessions, 1)
    a = _acquire(sessions, run, "ctl-a", 0)
    with sessions() as s:
        again = run_leases.renew(s, a, 10.0, now=_at(60))
        s.commit()
        assert again is not None and again.epoch == a.epoch
        run_leases.check(s, again)


def test_release_hands_the_run_over_at_once(sessions) -> None:
    (run,) = _runs(sessions, 1)
    a = _acquire(sessions, run, "ctl-a", 0)
    with sessions() as s:
        assert run_leases.release(s, a, now=_at(1))
        s.commit()
    assert _acquire(sessions, run, "ctl-b", 1.5) is not None


def test_the_same_name_from_another_process_waits_for_the_lease(sessions) -> None:
    """A second process under one controller name is not the owner: no silent sharing."""
    (run,) = _runs(sessions, 1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _acquire(sessions, run, "ctl", 0, pid=proc.pid) is not None
        assert _acquire(sessions, run, "ctl", 1) is None  # same name, this pid: still held
    finally:
        proc.kill()
        proc.wait()
    # Its process is gone (same host): the lease is taken over at once, with a new epoch.
    lease = _acquire(sessions, run, "ctl", 2)
    assert lease is not None and lease.epoch == 2


def test_the_per_user_limit_counts_every_owners_leases(sessions) -> None:
    with sessions() as s:
        user = users.add_user(s, "alice", "user")
        s.commit()
        uid = user.id
    r1, r2, r3 = _runs(sessions, 3, owner_id=uid)
    assert _acquire(sessions, r1, "ctl-a", 0, per_user_limit=2) is not None
    assert _acquire(sessions, r2, "ctl-b", 0, per_user_limit=2) is not None
    assert _acquire(sessions, r3, "ctl-c", 0, per_user_limit=2) is None
    assert _acquire(sessions, r3, "ctl-c", 11, per_user_limit=2) is not None  # the others expired


def test_many_threads_racing_for_one_lease_yield_one_owner(sessions) -> None:
    (run,) = _runs(sessions, 1)
    _acquire(sessions, run, "old", 0, ttl=1.0)  # expired at 1: free for the racers at 5
    won: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def race(name: str) -> None:
        try:
            barrier.wait()
            with sessions() as s:
                lease = run_leases.acquire(s, run, name, 10.0, now=_at(5))
                s.commit()
            if lease is not None:
                won.append(name)
        except Exception as e:  # SQLite's "database is locked" counts as losing, loudly
            errors.append(e)

    threads = [threading.Thread(target=race, args=(f"c{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, (won, errors)
    with sessions() as s:
        assert run_leases.holder(s, run, now=_at(6)).owner == won[0]
        assert run_leases.holder(s, run, now=_at(6)).epoch == 2


def test_controllers_are_listed_with_the_runs_they_hold(sessions) -> None:
    r1, r2 = _runs(sessions, 2)
    now = utcnow()
    with sessions() as s:
        run_leases.heartbeat(s, "ctl-a", max_runs=4, now=now)
        run_leases.heartbeat(s, "ctl-b", max_runs=4, now=now - dt.timedelta(seconds=120))
        s.commit()
    with sessions() as s:
        run_leases.acquire(s, r1, "ctl-a", 30.0, now=now)
        run_leases.acquire(s, r2, "cli-host:99", 30.0, now=now)
        s.commit()
    with sessions() as s:
        rows = {c["name"]: c for c in run_leases.list_controllers(s, alive_s=30, now=now)}
    assert rows["ctl-a"]["alive"] and [r["run_id"] for r in rows["ctl-a"]["runs"]] == [r1]
    assert not rows["ctl-b"]["alive"] and rows["ctl-b"]["runs"] == []
    assert [r["run_id"] for r in rows["cli-host:99"]["runs"]] == [r2]

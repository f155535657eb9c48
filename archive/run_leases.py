"""Who drives a run: one owner at a time, by a lease in the database.

A process searches a run (proposes, dispatches, ingests) only while it holds the run's row in
``run_leases``: an ``owner`` name, an ``epoch`` and an ``expires_at`` it renews by heartbeat.

- :func:`acquire` takes a lease that is free, expired, ours already, or held by a process of
  this host that no longer exists (a crashed ``kernelmap run`` or controller is replaced at
  once, not after its lease runs out). A change of owner increments ``epoch``: the fencing
  token.
- :func:`renew` extends it; it fails (None) once another owner took the run, and the holder
  must stop driving it.
- :func:`check` is the fence: called in every write transaction of the run's store, it locks
  the lease row for share (PostgreSQL) and raises :class:`LeaseLost` unless the lease is still
  this owner's at this epoch. A takeover's update waits for that lock, so no write of an old
  owner lands after a new owner took the run.
- :func:`release` expires a lease now (a controller that stops hands its runs over at once).

The per-user limit on concurrent runs is global: :func:`acquire` counts the live leases of the
run's user under a lock on that user's row. ``controllers`` rows say which controllers are
alive (:func:`heartbeat`, :func:`list_controllers`).

Times are the callers' clocks (``now``), so hosts sharing a database need synchronised clocks
(NTP); tests pass a simulated clock. Like :mod:`archive.repository`, these functions flush,
never commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.models import ControllerRow, Run, RunLease, User, utcnow
from kernelmap_errors import KernelmapError


class LeaseLost(KernelmapError):
    """Another owner holds the run's lease now: this process must stop driving the run."""

    def __init__(self, run_id: int, owner: str, holder: str | None) -> None:
        self.run_id = run_id
        self.holder = holder
        super().__init__(
            f"run {run_id}: {owner} no longer holds its lease"
            + (f" ({holder} took it)" if holder and holder != owner else "")
            + "; it stopped dispatching and ingesting for this run"
        )


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease held: the fence :func:`check` compares ``owner`` and ``epoch`` with the row."""

    run_id: int
    owner: str
    epoch: int
    expires_at: dt.datetime


def this_host() -> str:
    """The host name leases record (with the pid) to tell a crashed local owner."""
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def dead_locally(row: RunLease) -> bool:
    """Whether the row's owner was a process of this host that no longer exists."""
    return row.host == this_host() and row.pid is not None and not _pid_alive(row.pid)


def acquire(
    session: Session,
    run_id: int,
    owner: str,
    ttl_s: float,
    *,
    now: dt.datetime | None = None,
    per_user_limit: int | None = None,
    pid: int | None = None,
) -> Lease | None:
    """Take run ``run_id``'s lease for ``ttl_s`` seconds; None if another owner holds it.

    With ``per_user_limit``, also None when the run's user already has that many runs leased
    (by any owner). ``pid`` is the owning process (default: this one).
    """
    now = now or utcnow()
    pid = os.getpid() if pid is None else pid
    if per_user_limit is not None:
        user_id = session.scalar(sa.select(Run.owner_id).where(Run.id == run_id))
        if user_id is not None:
            # Serialises acquisitions for one user across controllers (PostgreSQL; SQLite has
            # one writer anyway), so the count below cannot be raced past the limit.
            session.execute(sa.select(User.id).where(User.id == user_id).with_for_update())
            held = session.scalar(
                sa.select(sa.func.count())
                .select_from(RunLease)
                .join(Run, Run.id == RunLease.run_id)
                .where(
                    Run.owner_id == user_id,
                    RunLease.run_id != run_id,
                    RunLease.expires_at > now,
                )
            )
            if held >= per_user_limit:
                return None
    row = session.scalars(
        sa.select(RunLease).where(RunLease.run_id == run_id).with_for_update()
    ).one_or_none()
    until = now + dt.timedelta(seconds=ttl_s)
    if row is None:
        try:
            with session.begin_nested():
                row = RunLease(
                    run_id=run_id,
                    owner=owner,
                    host=this_host(),
                    pid=pid,
                    epoch=1,
                    expires_at=until,
                    acquired_at=now,
                    renewed_at=now,
                    renewals=0,
                )
                session.add(row)
                session.flush()
        except sa.exc.IntegrityError:
            return None  # another process inserted it first
        return Lease(run_id, owner, row.epoch, until)
    ours = (row.owner, row.host, row.pid) == (owner, this_host(), pid)
    free = ours or row.expires_at <= now or dead_locally(row)
    if not free:
        return None
    # Conditional on what was read, so that two acquirers of an expired lease cannot both win
    # (SQLite ignores FOR UPDATE; the WHERE clause is the guard there).
    epoch = row.epoch if ours else row.epoch + 1
    done = session.execute(
        sa.update(RunLease)
        .where(RunLease.run_id == run_id, RunLease.epoch == row.epoch)
        .values(
            owner=owner,
            host=this_host(),
            pid=pid,
            epoch=epoch,
            expires_at=until,
            acquired_at=now,
            renewed_at=now,
            renewals=row.renewals if ours else 0,
        )
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        return None
    session.expire(row)
    return Lease(run_id, owner, epoch, until)


def renew(
    session: Session, lease: Lease, ttl_s: float, *, now: dt.datetime | None = None
) -> Lease | None:
    """Extend ``lease`` by ``ttl_s`` from ``now``; None if it is no longer ours (see module)."""
    now = now or utcnow()
    until = now + dt.timedelta(seconds=ttl_s)
    done = session.execute(
        sa.update(RunLease)
        .where(
            RunLease.run_id == lease.run_id,
            RunLease.owner == lease.owner,
            RunLease.epoch == lease.epoch,
        )
        .values(expires_at=until, renewed_at=now, renewals=RunLease.renewals + 1)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        return None
    return dataclasses.replace(lease, expires_at=until)


#: The fence's query: a Core statement on the table (not an ORM query: it runs in every write
#: transaction of every run, so it skips the ORM's per-query work), built once.
_FENCE = (
    sa.select(RunLease.__table__.c.owner, RunLease.__table__.c.epoch)
    .where(RunLease.__table__.c.run_id == sa.bindparam("run_id"))
    .with_for_update(read=True)
)


def check(session: Session, lease: Lease) -> None:
    """The fence: raise :class:`LeaseLost` unless ``lease`` is still the row's (see module)."""
    row = session.connection().execute(_FENCE, {"run_id": lease.run_id}).one_or_none()
    if row is None or (row.owner, row.epoch) != (lease.owner, lease.epoch):
        raise LeaseLost(lease.run_id, lease.owner, row.owner if row else None)


def release(session: Session, lease: Lease, *, now: dt.datetime | None = None) -> bool:
    """Expire ``lease`` now if it is still ours (another owner may take the run at once)."""
    now = now or utcnow()
    done = session.execute(
        sa.update(RunLease)
        .where(
            RunLease.run_id == lease.run_id,
            RunLease.owner == lease.owner,
            RunLease.epoch == lease.epoch,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    return done.rowcount == 1


def holder(session: Session, run_id: int, *, now: dt.datetime | None = None) -> RunLease | None:
    """The live lease of run ``run_id`` (not expired), or None."""
    now = now or utcnow()
    return session.scalars(
        sa.select(RunLease).where(RunLease.run_id == run_id, RunLease.expires_at > now)
    ).one_or_none()


def live_leases(session: Session, *, now: dt.datetime | None = None) -> list[RunLease]:
    """Every live lease, by run id."""
    now = now or utcnow()
    stmt = sa.select(RunLease).where(RunLease.expires_at > now).order_by(RunLease.run_id)
    return list(session.scalars(stmt))


def heartbeat(
    session: Session,
    name: str,
    *,
    max_runs: int,
    now: dt.datetime | None = None,
    stopping: bool = False,
) -> None:
    """Record that controller ``name`` (this process) is alive, or that it stopped."""
    now = now or utcnow()
    row = session.get(ControllerRow, name)
    if row is None:
        row = ControllerRow(name=name, started_at=now)
        session.add(row)
    if row.pid != os.getpid() or row.host != this_host():
        row.started_at = now  # a new process under this name
    row.host, row.pid, row.max_runs = this_host(), os.getpid(), max_runs
    row.seen_at = now
    row.stopped_at = now if stopping else None
    session.flush()


def list_controllers(
    session: Session, *, alive_s: float, now: dt.datetime | None = None
) -> list[dict]:
    """Every known controller with the runs it holds: ``name, host, pid, alive, seen_s...``.

    A controller is alive when it was seen in the last ``alive_s`` seconds and did not stop.
    """
    now = now or utcnow()
    runs: dict[str, list[dict]] = {}
    for lease in live_leases(session, now=now):
        runs.setdefault(lease.owner, []).append(
            {
                "run_id": lease.run_id,
                "epoch": lease.epoch,
                "expires_in_s": round((lease.expires_at - now).total_seconds(), 3),
                "renewals": lease.renewals,
            }
        )
    out = []
    for row in session.scalars(sa.select(ControllerRow).order_by(ControllerRow.name)):
        seen_s = (now - row.seen_at).total_seconds()
        out.append(
            {
                "name": row.name,
                "host": row.host,
                "pid": row.pid,
                "max_runs": row.max_runs,
                "started_at": row.started_at,
                "seen_s": round(seen_s, 3),
                "alive": row.stopped_at is None and seen_s <= alive_s,
                "runs": runs.pop(row.name, []),
            }
        )
    # Owners that are not controllers: `kernelmap run` processes driving their own runs.
    for name, held in sorted(runs.items()):
        out.append({"name": name, "host": None, "pid": None, "max_runs": None,
                    "started_at": None, "seen_s": None, "alive": True, "runs": held})  # fmt: skip
    return out


def renewal_counts(session: Session, *, now: dt.datetime | None = None) -> dict[str, int]:
    """Lease renewals per owner, summed over the leases each owner holds now."""
    now = now or utcnow()
    stmt = (
        sa.select(RunLease.owner, sa.func.sum(RunLease.renewals))
        .where(RunLease.expires_at > now)
        .group_by(RunLease.owner)
    )
    return {owner: int(total or 0) for owner, total in session.execute(stmt)}

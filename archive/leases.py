"""Remote workers and the jobs they lease: enrolment, atomic claims, heartbeats, results, reaping.

A remote worker enrols once with a ``worker``-role API key and gets its own token (``kmw_...``,
made and stored as its sha256 like API keys, by :mod:`archive.credentials`). The controller
offers jobs (:func:`offer`); a worker claims the oldest queued job of its hardware class with a
lease (:func:`claim`), extends it while evaluating (:func:`extend`) and posts the result
(:func:`complete`, first result wins).
:func:`reap` puts expired leases back in the queue and fails jobs that keep being lost;
the controller takes finished jobs with :func:`take_results`.

``worker_id`` of a job is its current holder while ``leased`` and its last holder once its lease
was reaped back to ``queued``: that worker may still post its (late, but valid) result until
another worker claims the job.

Like :mod:`archive.repository`, these functions flush but never commit: the caller owns the
transaction. Claiming, completing and reaping are each one conditional ``UPDATE``, so they stay
correct with several API replicas and the controller's dispatcher working on the same rows.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import credentials
from archive.errors import NotFoundError
from archive.models import RemoteJob, Worker, utcnow
from archive.status import RemoteJobStatus
from evaluator_worker.result import EvalResult
from evaluator_worker.verdict import Verdict
from evolution.ports import UNVERIFIED
from kernelmap_errors import KernelmapError

TOKEN_PREFIX = "kmw_"
#: Leading characters of a worker token stored in clear, to tell workers apart in listings.
SHOWN_PREFIX_LEN = credentials.SHOWN_PREFIX_LEN
#: Longer bearer tokens are refused before hashing (a token is 47 characters).
MAX_TOKEN_LEN = credentials.MAX_SECRET_LEN
#: What a hardware class (the queue a worker serves) may look like.
HARDWARE_CLASS_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: Keys of a posted result that only the server may set.
SERVER_KEYS = (UNVERIFIED, "trusted")
#: Times a job's lease may expire before the job is failed rather than queued again.
MAX_ATTEMPTS = 3
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


class WorkerNotFound(NotFoundError):
    """No remote worker has this id."""

    def __init__(self, worker_id: object) -> None:
        super().__init__("worker", worker_id, "GET /api/v1/workers lists the remote workers")


class RemoteJobNotFound(NotFoundError):
    """No job offered to remote workers has this id."""

    def __init__(self, job_id: object) -> None:
        super().__init__("remote job", job_id, "post results only for jobs you claimed")


class NotLeaseHolder(KernelmapError):
    """A worker acted on a job it does not hold (another worker claimed it since)."""


def hash_token(token: str) -> str:
    """The hex sha256 of a worker token, as stored (:func:`archive.credentials.hash_secret`)."""
    return credentials.hash_secret(token)


# -- workers -----------------------------------------------------------------------------------


def enrol_worker(
    session: Session,
    enrolled_by_user_id: int | None,
    name: str,
    hardware_class: str,
    hardware: dict[str, Any],
) -> tuple[Worker, str]:
    """Register a remote worker and make its token.

    Parameters
    ----------
    enrolled_by_user_id:
        The ``worker``-role user whose API key (the enrolment token) enrolled it.
    name:
        What the worker calls itself (shown in listings and in its results' ``worker``).
    hardware_class:
        The queue it serves (see :data:`HARDWARE_CLASS_RE`).
    hardware:
        What it reported about its GPU and software versions.

    Returns
    -------
    (Worker, str)
        The new row and the plaintext token ``kmw_<43 url-safe characters>``: the only time it
        exists outside the worker (only its sha256 is stored).
    """
    if not HARDWARE_CLASS_RE.fullmatch(hardware_class):
        raise ValueError(f"invalid hardware class {hardware_class!r}")
    token = credentials.new_secret(TOKEN_PREFIX)
    worker = Worker(
        name=name,
        hardware_class=hardware_class,
        hardware=dict(hardware),
        token_prefix=credentials.shown_prefix(token),
        token_hash=hash_token(token),
        enrolled_by=enrolled_by_user_id,
    )
    session.add(worker)
    session.flush()
    return worker, token


def worker_by_token(session: Session, token: str | None) -> Worker | None:
    """The worker a token belongs to; None for a missing, malformed, unknown or revoked token."""
    if not credentials.well_formed(token, TOKEN_PREFIX):
        return None
    digest = hash_token(token)
    worker = session.scalars(sa.select(Worker).where(Worker.token_hash == digest)).first()
    if worker is None or worker.revoked_at is not None:
        return None
    if not credentials.same_hash(worker.token_hash, digest):
        return None
    return worker


def get_worker(session: Session, worker_id: int) -> Worker:
    """The worker ``worker_id``; raises :class:`WorkerNotFound`."""
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise WorkerNotFound(worker_id)
    return worker


def revoke_worker(session: Session, worker_id: int) -> Worker:
    """Revoke a worker's token; the jobs it holds go back to the queue at once.

    Its later results are refused (the jobs no longer name it). Revoking again keeps the
    first time. Raises :class:`WorkerNotFound`.
    """
    worker = get_worker(session, worker_id)
    if worker.revoked_at is None:
        worker.revoked_at = utcnow()
    session.execute(
        sa.update(RemoteJob)
        .where(RemoteJob.worker_id == worker.id, RemoteJob.status == RemoteJobStatus.LEASED)
        .values(status=RemoteJobStatus.QUEUED, worker_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return worker


def list_workers(session: Session, limit: int = 50, offset: int = 0) -> list[Worker]:
    """Remote workers (revoked ones included), oldest first."""
    stmt = sa.select(Worker).order_by(Worker.id).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def count_workers(session: Session) -> int:
    """How many workers :func:`list_workers` pages through."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(Worker)) or 0)


def touch(session: Session, worker: Worker, now: dt.datetime | None = None) -> None:
    """Record that the worker was just heard from (``last_seen_at``)."""
    worker.last_seen_at = now or utcnow()
    session.flush()


# -- jobs --------------------------------------------------------------------------------------


def offer(
    session: Session, job_id: str, run_id: int, hardware_class: str, payload: dict[str, Any]
) -> RemoteJob:
    """Queue a job for remote workers of ``hardware_class`` (again: returns the existing row).

    The ``jobs`` row ``job_id`` must exist (the run's store records it before dispatching).
    """
    existing = session.get(RemoteJob, job_id)
    if existing is not None:
        return existing
    job = RemoteJob(
        job_id=job_id,
        run_id=run_id,
        hardware_class=hardware_class,
        payload=dict(payload),
        status=RemoteJobStatus.QUEUED,
        attempts=0,
        delivered=False,
    )
    session.add(job)
    session.flush()
    return job


def claim(
    session: Session, worker: Worker, lease_s: float, now: dt.datetime | None = None
) -> RemoteJob | None:
    """Lease the oldest queued job of the worker's hardware class to it; None when none waits.

    One statement, ``UPDATE ... WHERE job_id = (SELECT ... LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING``: on PostgreSQL concurrent claimers skip the row another one is taking instead
    of waiting for it, so each gets a different job; on SQLite (where SQLAlchemy drops ``FOR
    UPDATE``) the single statement runs under the database's write lock, so no two claimers can
    pick the same row between the select and the update.
    """
    now = now or utcnow()
    pick = (
        sa.select(RemoteJob.job_id)
        .where(
            RemoteJob.hardware_class == worker.hardware_class,
            RemoteJob.status == RemoteJobStatus.QUEUED,
        )
        .order_by(RemoteJob.created_at, RemoteJob.job_id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    # A long-poll authenticated its worker up to half a minute ago: it may be revoked since.
    active = sa.exists().where(Worker.id == worker.id, Worker.revoked_at.is_(None))
    stmt = (
        sa.update(RemoteJob)
        .where(RemoteJob.job_id == pick, RemoteJob.status == RemoteJobStatus.QUEUED, active)
        .values(
            status=RemoteJobStatus.LEASED,
            worker_id=worker.id,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
        )
        .returning(RemoteJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return session.scalars(stmt).first()


def has_queued(session: Session, hardware_class: str) -> bool:
    """Whether a job of ``hardware_class`` waits for a worker (a read: takes no write lock)."""
    waiting = sa.exists().where(
        RemoteJob.hardware_class == hardware_class, RemoteJob.status == RemoteJobStatus.QUEUED
    )
    return bool(session.scalar(sa.select(waiting)))


def extend(
    session: Session, worker: Worker, job_id: str, lease_s: float, now: dt.datetime | None = None
) -> bool:
    """Extend the worker's lease on ``job_id`` to ``now + lease_s``.

    False when the worker does not hold an unexpired lease on it (expired, reaped, claimed by
    another worker, done or unknown).
    """
    now = now or utcnow()
    result = session.execute(
        sa.update(RemoteJob)
        .where(
            RemoteJob.job_id == job_id,
            RemoteJob.worker_id == worker.id,
            RemoteJob.status == RemoteJobStatus.LEASED,
            RemoteJob.lease_expires_at > now,
        )
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def stored_result(worker: Worker, result: dict[str, Any]) -> dict[str, Any]:
    """The result as stored: marked ``unverified`` and ``worker: remote:<name>`` by the server.

    Whatever the worker sent under :data:`SERVER_KEYS` or ``worker`` is dropped: a remote
    worker cannot vouch for itself.
    """
    out = {k: v for k, v in result.items() if k not in SERVER_KEYS}
    out[UNVERIFIED] = True
    out["worker"] = f"remote:{worker.name}"
    out["remote_worker_id"] = worker.id
    return out


def complete(
    session: Session,
    worker: Worker,
    job_id: str,
    result: dict[str, Any],
    now: dt.datetime | None = None,
) -> bool:
    """Store the worker's result for ``job_id``; the first result wins.

    Accepted while the job is not done and the worker is its holder, or its last holder whose
    lease expired and was reaped (the measurement is still valid). See :func:`stored_result`
    for what is stored.

    Returns
    -------
    bool
        True when this result was stored, False when the job was already done (a repeated
        post, or another worker's result came first): nothing changes.

    Raises
    ------
    RemoteJobNotFound
        No such job.
    NotLeaseHolder
        The job is not done and another worker holds it (or this worker never did).
    """
    now = now or utcnow()
    outcome = session.execute(
        sa.update(RemoteJob)
        .where(
            RemoteJob.job_id == job_id,
            RemoteJob.worker_id == worker.id,
            RemoteJob.status != RemoteJobStatus.DONE,
        )
        .values(
            status=RemoteJobStatus.DONE,
            result=stored_result(worker, result),
            lease_expires_at=None,
            finished_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if outcome.rowcount == 1:
        return True
    job = session.get(RemoteJob, job_id, populate_existing=True)
    if job is None:
        raise RemoteJobNotFound(job_id)
    if job.status == RemoteJobStatus.DONE:
        return False
    raise NotLeaseHolder(
        f"job {job_id} is not leased to worker {worker.name!r}: its lease expired and another"
        " worker claimed it; drop this result and claim a new job"
    )


def lost_result(max_attempts: int) -> dict[str, Any]:
    """The failure stored for a job whose leases expired ``max_attempts`` times."""
    return EvalResult.failure(
        Verdict.RUNTIME_ERROR,
        f"its remote workers kept losing it: {max_attempts} leases expired without a result"
        " (workers died, lost the network, or evaluated past the lease without heartbeats)",
        worker=None,
    )


def reap(session: Session, now: dt.datetime | None = None, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Put jobs whose lease expired back in the queue; fail those lost ``max_attempts`` times.

    ``attempts`` counts expired leases. A job reaching ``max_attempts`` becomes ``done`` with
    a ``RUNTIME_ERROR`` result (see :func:`lost_result`) instead of being queued again.
    Concurrent reapers each take a row once: the ``WHERE`` re-checks the status.

    Returns
    -------
    int
        How many leases were reaped.
    """
    now = now or utcnow()
    expired = sa.and_(RemoteJob.status == RemoteJobStatus.LEASED, RemoteJob.lease_expires_at < now)
    # Look before writing: most passes find nothing, and an UPDATE takes SQLite's write lock.
    if not session.scalar(sa.select(sa.exists().where(expired))):
        return 0
    failed = session.execute(
        sa.update(RemoteJob)
        .where(expired, RemoteJob.attempts + 1 >= max_attempts)
        .values(
            status=RemoteJobStatus.DONE,
            attempts=RemoteJob.attempts + 1,
            result=lost_result(max_attempts),
            lease_expires_at=None,
            finished_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    requeued = session.execute(
        sa.update(RemoteJob)
        .where(expired)
        .values(
            status=RemoteJobStatus.QUEUED, attempts=RemoteJob.attempts + 1, lease_expires_at=None
        )
        .execution_options(synchronize_session=False)
    )
    return failed.rowcount + requeued.rowcount


def take_results(session: Session, run_id: int) -> list[RemoteJob]:
    """The run's finished jobs not yet taken, in the order they finished; marks them delivered."""
    ready = sa.and_(
        RemoteJob.run_id == run_id,
        RemoteJob.status == RemoteJobStatus.DONE,
        RemoteJob.delivered.is_(False),
    )
    # Look before writing: the controller polls often, and an UPDATE takes SQLite's write lock.
    if not session.scalar(sa.select(sa.exists().where(ready))):
        return []
    stmt = (
        sa.update(RemoteJob)
        .where(ready)
        .values(delivered=True)
        .returning(RemoteJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    rows = list(session.scalars(stmt))
    return sorted(rows, key=lambda j: (j.finished_at or _EARLIEST, j.job_id))


def queued_count(session: Session, run_id: int) -> int:
    """How many of the run's jobs wait for a worker (not leased, not done)."""
    stmt = (
        sa.select(sa.func.count())
        .select_from(RemoteJob)
        .where(RemoteJob.run_id == run_id, RemoteJob.status == RemoteJobStatus.QUEUED)
    )
    return int(session.scalar(stmt) or 0)

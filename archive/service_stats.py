"""Aggregates of the whole service for monitoring (``GET /metrics``): counts, not rows.

Read-only queries over every user's work: only admin-facing code may show what they return.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.models import Evaluation, RemoteJob, Run, Worker

RATE_SCAN_ROWS = 100_000
"""Newest evaluations looked at for the rate: a bounded scan of the primary key instead of the
whole table (``created_at`` has no index). It caps the rate reported at 1,666 per second, far
above what a fleet of GPUs evaluates."""


def evaluations_by_verdict(session: Session) -> dict[str, int]:
    """How many evaluations are stored with each verdict."""
    stmt = sa.select(Evaluation.verdict, sa.func.count()).group_by(Evaluation.verdict)
    return {verdict: n for verdict, n in session.execute(stmt)}


def evaluations_since(session: Session, since: dt.datetime) -> int:
    """How many evaluations were stored at or after ``since`` (among the newest
    :data:`RATE_SCAN_ROWS`)."""
    newest = (
        sa.select(Evaluation.created_at)
        .order_by(Evaluation.id.desc())
        .limit(RATE_SCAN_ROWS)
        .subquery()
    )
    stmt = sa.select(sa.func.count()).select_from(newest).where(newest.c.created_at >= since)
    return session.scalar(stmt) or 0


def runs_by_status(session: Session) -> dict[str, int]:
    """How many runs are in each status."""
    stmt = sa.select(Run.status, sa.func.count()).group_by(Run.status)
    return {status: n for status, n in session.execute(stmt)}


def remote_jobs_by_status(session: Session) -> dict[str, int]:
    """How many remote jobs are in each status."""
    stmt = sa.select(RemoteJob.status, sa.func.count()).group_by(RemoteJob.status)
    return {status: n for status, n in session.execute(stmt)}


def enrolled_workers(session: Session) -> list[tuple[str, str, dt.datetime]]:
    """``(name, hardware_class, last heard from)`` of each remote worker not revoked.

    A worker never heard from since it enrolled counts from its enrolment.
    """
    stmt = (
        sa.select(
            Worker.id,
            Worker.name,
            Worker.hardware_class,
            sa.func.coalesce(Worker.last_seen_at, Worker.created_at),
        )
        .where(Worker.revoked_at.is_(None))
        .order_by(Worker.id)
    )
    rows = session.execute(stmt).all()
    # coalesce() loses the column type: SQLite hands back a naive string-parsed datetime.
    seen = [_aware(r[3]) for r in rows]
    return [(f"{r[1]}#{r[0]}", r[2], s) for r, s in zip(rows, seen, strict=True)]


def _aware(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# -- the scrape ------------------------------------------------------------------------------------


#: A remote worker heard from within this many seconds is alive (it long-polls every ~20 s).
REMOTE_LIVE_S = 120.0


def live_remote_workers(session: Session, hardware_class: str, now: dt.datetime) -> int:
    """Remote workers of ``hardware_class`` heard from recently and not revoked."""
    since = now - dt.timedelta(seconds=REMOTE_LIVE_S)
    stmt = sa.select(sa.func.count()).where(
        Worker.hardware_class == hardware_class,
        Worker.revoked_at.is_(None),
        Worker.last_seen_at >= since,
    )
    return int(session.scalar(stmt) or 0)

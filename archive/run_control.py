"""Run lifecycle: what a user may do to a run in each status, and what the controller picks up.

A run made through the API (it has an owner) is managed by the controller:

- ``queued``: waiting for the controller (for its owner's concurrent-run limit, or a restart);
- ``running``: the controller is searching it; after a controller restart it is resumed;
- ``paused``: stopped by its owner; ``resume`` queues it again and the search continues;
- ``finished``, ``failed``, ``cancelled``: ended (a failed run may be resumed).

Runs made by the local CLI (no owner) are never touched by the controller: the process that
started them owns them. Like :mod:`archive.repository`, these functions flush, never commit.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import repository
from archive.models import Run
from archive.status import RunStatus
from kernelmap_errors import KernelmapError

#: Statuses the controller searches (or resumes after a restart).
ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)

#: For each action, the statuses it applies to and the status it leads to.
TRANSITIONS: dict[str, tuple[tuple[RunStatus, ...], RunStatus]] = {
    "pause": ((RunStatus.QUEUED, RunStatus.RUNNING), RunStatus.PAUSED),
    "resume": ((RunStatus.PAUSED, RunStatus.INTERRUPTED, RunStatus.FAILED), RunStatus.QUEUED),
    "cancel": (
        (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.INTERRUPTED),
        RunStatus.CANCELLED,
    ),
}


class TransitionError(KernelmapError):
    """The action does not apply to the run in its current status (HTTP 409)."""


def next_status(action: str, status: str) -> RunStatus:
    """The status ``action`` leads to from ``status``.

    Raises
    ------
    ValueError
        Unknown action.
    TransitionError
        The action does not apply in ``status`` (e.g. pausing a finished run).
    """
    if action not in TRANSITIONS:
        raise ValueError(f"unknown run action {action!r}; expected one of {sorted(TRANSITIONS)}")
    allowed, target = TRANSITIONS[action]
    if status not in allowed:
        raise TransitionError(
            f"cannot {action} a run that is {status}: only a run that is"
            f" {' or '.join(allowed)} can be {'cancelled' if action == 'cancel' else action + 'd'}"
        )
    return target


def apply_action(session: Session, run_id: int, action: str) -> Run:
    """Move run ``run_id`` by ``action`` (pause, resume, cancel); see :func:`next_status`.

    The row is locked while it changes (on PostgreSQL) so that a concurrent action or the
    controller's own status change is not lost.
    """
    run = session.scalars(sa.select(Run).where(Run.id == run_id).with_for_update()).one_or_none()
    if run is None:
        return repository.get_run(session, run_id)  # raises RunNotFound
    target = next_status(action, run.status)
    repository.set_run_status(session, run_id, target)
    if action == "resume":
        run.error = None
    session.flush()
    return run


def managed_runs(session: Session, statuses: tuple[str, ...] = ACTIVE) -> list[Run]:
    """The API's runs (with an owner) in ``statuses``, oldest first."""
    stmt = (
        sa.select(Run).where(Run.owner_id.is_not(None), Run.status.in_(statuses)).order_by(Run.id)
    )
    return list(session.scalars(stmt))


def status_of(session: Session, run_id: int) -> str:
    """The run's current status, read afresh from the database."""
    status = session.scalar(sa.select(Run.status).where(Run.id == run_id))
    if status is None:
        repository.get_run(session, run_id)  # raises RunNotFound
    return str(status)


def mark_running(session: Session, run_id: int) -> bool:
    """Mark a run ``running`` unless its owner paused or cancelled it (row locked meanwhile).

    Returns False, changing nothing, when the run is no longer queued or running.
    """
    run = session.scalars(sa.select(Run).where(Run.id == run_id).with_for_update()).one_or_none()
    if run is None:
        repository.get_run(session, run_id)  # raises RunNotFound
    if run.status not in ACTIVE + (RunStatus.INTERRUPTED, RunStatus.FAILED):
        return False
    repository.set_run_status(session, run_id, RunStatus.RUNNING)
    return True

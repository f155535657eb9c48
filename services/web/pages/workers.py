"""Dashboard page ``/workers`` (admin): the evaluation fleet.

The Celery workers alive now (their Redis heartbeat records: hardware, heartbeat age, sandbox
level), the remote workers enrolled over HTTPS (the ``workers`` table) and the jobs waiting in
each ``eval.*`` queue: what ``GET /api/v1/workers`` and ``GET /metrics`` read, from the same
functions (:mod:`services.workers.fleet`, :mod:`archive.leases`). When Redis does not answer the
page says so and still lists the remote workers. A user gets the 403 page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from archive import leases
from archive.models import utcnow
from archive.service_stats import REMOTE_LIVE_S
from services.api.deps import ConfigDep, SessionDep
from services.web.auth import WebUser
from services.web.templating import render
from services.workers import fleet

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

#: Most remote workers listed (oldest first); the page says how many more there are.
MAX_REMOTE_LISTED = 500


def sandbox_of(hardware: dict[str, Any] | None) -> dict[str, Any]:
    """The sandbox report in a worker's hardware (``level``, ``mode``, ``missing``), or ``{}``."""
    report = (hardware or {}).get("sandbox")
    return report if isinstance(report, dict) else {}


def hardware_line(hardware: dict[str, Any] | None) -> str:
    """A worker's hardware in one line (the keys of
    :func:`services.workers.hardware.hardware_info`): host, GPU and its memory, compute
    capability, driver, CUDA, torch and triton versions; ``?`` for what it did not report."""
    hw = hardware or {}
    parts = [str(hw.get("hostname") or "?")]
    gpu = hw.get("gpu_name")
    if gpu:
        count = hw.get("gpu_count")
        parts.append(f"{count} x {gpu}" if isinstance(count, int) and count > 1 else str(gpu))
    elif hw.get("device"):
        parts.append(str(hw["device"]))
    if isinstance(hw.get("gpu_memory_mib"), int | float):
        parts.append(f"{hw['gpu_memory_mib'] / 1024:.0f} GiB")
    labels = (("compute_capability", "sm"), ("driver_version", "driver"), ("cuda", "CUDA"))
    labels += (("torch", "torch"), ("triton", "triton"))
    parts += [f"{name} {hw[key]}" for key, name in labels if hw.get(key)]
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class FleetView:
    """What Redis told about the Celery fleet: ``configured`` (a Redis URL is set), ``error``
    (why it could not be read), the live workers' records and the queue depths."""

    configured: bool
    error: str | None
    celery: list[dict[str, Any]]
    queues: dict[str, int]


def read_fleet(settings) -> FleetView:
    """The Celery workers and queue depths, or why Redis could not tell (never raises)."""
    if not settings.redis_url:
        return FleetView(False, None, [], {})
    try:
        queues = fleet.queue_depths(settings)
        celery = fleet.live_workers(settings)
    except fleet.FleetError as exc:
        log.warning("workers page: %s", exc)
        return FleetView(True, str(exc), [], {})
    except Exception as exc:  # misconfigured broker URL...: the remote list is still useful
        log.warning("workers page: the fleet could not be read: %s", exc)
        return FleetView(True, f"the fleet could not be read: {exc}", [], {})
    return FleetView(True, None, celery, queues)


def _remote_row(w, now: dt.datetime) -> dict[str, Any]:
    age = None if w.last_seen_at is None else max(0.0, (now - w.last_seen_at).total_seconds())
    return {
        "id": w.id,
        "name": w.name,
        "hardware_class": w.hardware_class,
        "hardware": hardware_line(w.hardware),
        "sandbox": sandbox_of(w.hardware),
        "age_s": age,
        "live": w.revoked_at is None and age is not None and age <= REMOTE_LIVE_S,
        "revoked": w.revoked_at is not None,
        "created_at": w.created_at,
    }


@router.get("/workers")
def workers_page(
    request: Request, user: WebUser, session: SessionDep, config: ConfigDep
) -> HTMLResponse:
    """The fleet: live Celery workers, enrolled remote workers, queue depths (admins only)."""
    if user.role != "admin":
        return render(
            request,
            "error.html",
            status_code=403,
            title="Admins only",
            message="the fleet is shown to admins only: sign in with an admin key",
        )
    now = utcnow()
    remote = [_remote_row(w, now) for w in leases.list_workers(session, limit=MAX_REMOTE_LISTED)]
    total = leases.count_workers(session)
    session.rollback()  # give the connection back before talking to Redis
    view = read_fleet(config.settings)
    celery = [
        {
            **record,
            "hardware_text": hardware_line(record.get("hardware")),
            "sandbox": sandbox_of(record.get("hardware")),
        }
        for record in view.celery
    ]
    return render(
        request,
        "workers.html",
        title="Workers",
        fleet=view,
        celery=celery,
        remote=remote,
        remote_total=total,
        live_s=REMOTE_LIVE_S,
    )

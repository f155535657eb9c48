"""``GET /metrics`` (admin): the service's state for Prometheus, text exposition format 0.0.4.

Scrape it with an admin key (Prometheus' ``authorization: {credentials: km_...}``); it is
mounted at ``/metrics``, outside ``/api/v1``. Every scrape is a few aggregate queries and two
short Redis reads, so a 15 s scrape interval costs little.

Metrics
-------
``kernelmap_redis_up``
    1 when the fleet's Redis answered, 0 when it did not (then no queue depth and no Celery
    worker is reported); absent when no Redis is configured (``KERNELMAP_REDIS_URL``).
``kernelmap_queue_depth{queue}``
    Jobs waiting in each ``eval.*`` queue (:func:`services.workers.fleet.queue_depths`).
``kernelmap_evaluations_total{verdict}``
    Evaluations stored, by verdict (every known verdict, 0 included).
``kernelmap_evaluations_per_second``
    Evaluations stored in the last 60 s, divided by 60.
``kernelmap_runs{status}``
    Runs in each status.
``kernelmap_worker_heartbeat_age_seconds{worker,kind,hardware_class}``
    Seconds since each worker was last heard from: Celery workers from their Redis heartbeat
    (gone once it expires), remote workers from ``workers.last_seen_at`` (every one not revoked).
``kernelmap_workers{kind,hardware_class}``
    Live workers: Celery workers with a heartbeat, remote workers heard from in the last
    :data:`REMOTE_WORKER_LIVE_S` seconds. A class with a queue or an enrolled worker but no
    live worker is reported as 0, so an alert can fire on it.
``kernelmap_remote_jobs{status}``
    Jobs offered to remote workers, by status.
``kernelmap_run_owner{run_id,owner}``
    1 for each run whose lease is held now, labelled with its owner (a controller's name, or
    ``<host>:<pid>`` of a ``kernelmap run``) (:mod:`archive.run_leases`).
``kernelmap_controller_runs{controller}``
    Runs each controller owns now (0 for a known controller that owns none).
``kernelmap_controller_heartbeat_age_seconds{controller}``
    Seconds since each controller that has not stopped was last seen.
``kernelmap_lease_renewals_total{owner}``
    Lease renewals by each owner, summed over the leases it holds now (a counter that resets
    when a run changes owner).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from archive import run_leases
from archive.models import REMOTE_JOB_STATUSES, RUN_STATUSES
from archive.service_stats import (
    REMOTE_LIVE_S,
    enrolled_workers,
    evaluations_by_verdict,
    evaluations_since,
    remote_jobs_by_status,
    runs_by_status,
)
from evaluator_worker.verdict import Verdict
from services.api.deps import AdminUser, ConfigDep, SessionDep
from services.config import Settings
from services.workers import fleet

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of the text exposition format."""

RATE_WINDOW_S = 60.0
"""Window of ``kernelmap_evaluations_per_second``, in seconds."""

REMOTE_WORKER_LIVE_S = REMOTE_LIVE_S
"""A remote worker last heard from longer ago than this is not counted in ``kernelmap_workers``
(it still has a heartbeat age until it is revoked)."""


@dataclasses.dataclass
class Family:
    """One metric: its name, type (``gauge``, ``counter``), help text and samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = dataclasses.field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        """Add a sample with ``labels``."""
        self.samples.append((labels, value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def exposition(families: Iterable[Family]) -> str:
    """``families`` in the Prometheus text format 0.0.4 (HELP and TYPE lines, escaped labels).

    A family without samples is left out entirely.
    """
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            series = f"{family.name}{{{text}}}" if text else family.name
            lines.append(f"{series} {_value(value)}")
    return "\n".join(lines) + "\n"


def _fleet_families(
    settings: Settings, age: Family, live: dict[tuple[str, str], int]
) -> list[Family]:
    """``kernelmap_redis_up`` and the queue depths; adds the Celery workers to ``age`` and
    ``live`` (counts by kind and hardware class)."""
    if not settings.redis_url:
        return []
    up = Family("kernelmap_redis_up", "gauge", "1 if the fleet's Redis answered, else 0")
    depth = Family("kernelmap_queue_depth", "gauge", "Evaluation jobs waiting in each queue")
    try:
        depths = fleet.queue_depths(settings)
        celery = fleet.live_workers(settings)
    except fleet.FleetError as exc:
        log.warning("metrics: %s", exc)
        up.add(0)
        return [up]
    up.add(1)
    for queue, n in depths.items():
        depth.add(n, queue=queue)
        hardware_class = queue.removeprefix(fleet.EVAL_QUEUE_PREFIX)
        live.setdefault(("celery", hardware_class), 0)
    for record in celery:
        hardware_class = str(record.get("hardware_class"))
        live[("celery", hardware_class)] = live.get(("celery", hardware_class), 0) + 1
        if record.get("age_s") is not None:
            age.add(
                record["age_s"], worker=record["name"], kind="celery", hardware_class=hardware_class
            )
    return [up, depth]


def collect(session: Session, settings: Settings, now: dt.datetime | None = None) -> list[Family]:
    """Every metric family of the service, read now.

    The database is read first and its transaction ended before Redis is asked, so a slow
    Redis does not hold a pooled connection.
    """
    now = now or dt.datetime.now(dt.UTC)
    evaluations = Family("kernelmap_evaluations_total", "counter", "Evaluations stored, by verdict")
    for verdict, n in _with_zeros(evaluations_by_verdict(session), list(Verdict)).items():
        evaluations.add(n, verdict=verdict)
    rate = Family(
        "kernelmap_evaluations_per_second",
        "gauge",
        f"Evaluations stored in the last {RATE_WINDOW_S:g} s, per second",
    )
    since = now - dt.timedelta(seconds=RATE_WINDOW_S)
    rate.add(evaluations_since(session, since) / RATE_WINDOW_S)
    runs = Family("kernelmap_runs", "gauge", "Runs in each status")
    for status, n in _with_zeros(runs_by_status(session), RUN_STATUSES).items():
        runs.add(n, status=status)
    remote = Family("kernelmap_remote_jobs", "gauge", "Jobs offered to remote workers, by status")
    for status, n in _with_zeros(remote_jobs_by_status(session), REMOTE_JOB_STATUSES).items():
        remote.add(n, status=status)
    enrolled = enrolled_workers(session)
    ownership = _ownership_families(session, settings, now)
    session.rollback()

    age = Family(
        "kernelmap_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each worker was last heard from",
    )
    workers = Family(
        "kernelmap_workers",
        "gauge",
        f"Live workers (remote: heard from in the last {REMOTE_WORKER_LIVE_S:g} s)",
    )
    live: dict[tuple[str, str], int] = {}
    families = _fleet_families(settings, age, live)
    for name, hardware_class, seen in enrolled:
        seconds = round(max(0.0, (now - seen).total_seconds()), 3)
        age.add(seconds, worker=name, kind="remote", hardware_class=hardware_class)
        alive = 1 if seconds <= REMOTE_WORKER_LIVE_S else 0
        live[("remote", hardware_class)] = live.get(("remote", hardware_class), 0) + alive
    for (kind, hardware_class), n in sorted(live.items()):
        workers.add(n, kind=kind, hardware_class=hardware_class)
    return [*families, evaluations, rate, runs, age, workers, remote, *ownership]


def _ownership_families(session: Session, settings: Settings, now: dt.datetime) -> list[Family]:
    """Who owns which run, the controllers' heartbeats and the owners' lease renewals."""
    owner = Family("kernelmap_run_owner", "gauge", "1 per run whose lease is held, by owner")
    owned = Family("kernelmap_controller_runs", "gauge", "Runs each controller owns now")
    age = Family(
        "kernelmap_controller_heartbeat_age_seconds",
        "gauge",
        "Seconds since each running controller was last seen",
    )
    renewals = Family(
        "kernelmap_lease_renewals_total",
        "counter",
        "Lease renewals by each owner, over the leases it holds now",
    )
    for c in run_leases.list_controllers(session, alive_s=2 * settings.lease_s, now=now):
        for lease in c["runs"]:
            owner.add(1, run_id=str(lease["run_id"]), owner=c["name"])
        if c["host"] is not None:  # a controller (not a `kernelmap run` process)
            owned.add(len(c["runs"]), controller=c["name"])
            if c["alive"] or c["runs"]:
                age.add(c["seen_s"], controller=c["name"])
    for name, n in sorted(run_leases.renewal_counts(session, now=now).items()):
        renewals.add(n, owner=name)
    return [owner, owned, age, renewals]


def _with_zeros(counts: Mapping[str, int], known: Iterable[str]) -> dict[str, int]:
    """``counts`` with every ``known`` key present (0 if absent): a series that appears only
    when its first event happens loses that event to ``rate()``."""
    out = {str(k): 0 for k in known}
    out.update(counts)
    return out


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
def metrics(session: SessionDep, config: ConfigDep, _admin: AdminUser) -> PlainTextResponse:
    """The service's metrics in the Prometheus text format (admin key)."""
    text = exposition(collect(session, config.settings))
    return PlainTextResponse(text, media_type=CONTENT_TYPE)

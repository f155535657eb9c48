"""The controller's dispatcher: a run's jobs go to the Celery fleet or to remote workers.

Each job goes where there is room: to the Celery queue ``eval.<class>`` (trusted workers inside
the cluster) or to remote workers of the class that pull it over HTTPS with a lease
(:class:`services.dispatch.leases.LeaseDispatcher`). The choice follows who is alive (Celery
heartbeats in Redis, remote workers' last request), keeping the jobs in flight per worker even
between the two. With nobody alive a job waits in the controller until someone is (at most
:data:`PARK_MAX_S`, then on the Celery queue).

A job marked ``trusted_only`` (the re-measure of a remote worker's claimed improvement) goes only
to the Celery fleet. When no trusted worker of the class is alive, it cannot be re-measured: its
result is then the remote result itself, still marked unverified, with ``verification`` saying
why, so the run does not wait forever and the elite stays visibly unverified.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from archive.models import utcnow
from archive.service_stats import live_remote_workers
from evolution.ports import UNVERIFIED, Job, JobResult

log = logging.getLogger(__name__)

#: How often the counts of live workers are read again.
REFRESH_S = 5.0
#: How long a job waits in the controller for any worker to be alive before it is queued on
#: the Celery queue anyway.
PARK_MAX_S = 30.0

NO_TRUSTED_WORKER = (
    "not re-measured: no trusted (cluster) worker of this hardware class was alive; the result"
    " is the remote worker's own claim"
)


class FleetDispatcher:
    """Routes a run's jobs between the Celery fleet and remote lease workers (see above).

    Parameters
    ----------
    celery, lease:
        The two dispatchers of the run (same run id, hardware class and task).
    session_factory:
        Sessions on the service's database (remote workers' liveness).
    hardware_class:
        The run's class.
    celery_workers:
        ``celery_workers()`` -> live Celery workers of the class (from their heartbeats).
    capacity:
        Jobs in flight at once, both routes together.
    """

    def __init__(
        self,
        celery: Any,
        lease: Any,
        session_factory: Callable[[], Session],
        hardware_class: str,
        celery_workers: Callable[[], int],
        capacity: int,
    ) -> None:
        self.celery = celery
        self.lease = lease
        self._sessions = session_factory
        self.hardware_class = hardware_class
        self._celery_workers = celery_workers
        self._capacity = capacity
        self._counts = (0, 0)
        self._counted_at = -REFRESH_S
        self._route: dict[str, str] = {}
        self._held: dict[str, Job] = {}  # trusted-only jobs nobody can run
        self._parked: dict[str, tuple[Job, float]] = {}  # jobs waiting for any worker
        self._warned = False
        self._unverified: dict[int, dict[str, Any]] = {}  # candidate -> remote result
        if hasattr(celery, "remote_alive"):
            # Its stall note must not say that nobody of the class is alive when remote
            # workers are (they take leased jobs only, never the Celery queue's).
            celery.remote_alive = lambda: self.counts()[1]

    @property
    def capacity(self) -> int:
        """Jobs in flight at once."""
        return self._capacity

    def counts(self) -> tuple[int, int]:
        """(live Celery workers, live remote workers) of the class, refreshed every few s."""
        now = time.monotonic()
        if now - self._counted_at >= REFRESH_S:
            try:
                celery = self._celery_workers()
            except Exception as e:  # Redis down: route as if no Celery worker were alive
                log.warning("cannot count the Celery workers of %s: %s", self.hardware_class, e)
                celery = 0
            with self._sessions() as s:
                remote = live_remote_workers(s, self.hardware_class, utcnow())
            self._counts, self._counted_at = (celery, remote), now
        return self._counts

    def submit(self, job: Job) -> None:
        """Send ``job`` to the Celery queue or offer it to remote workers."""
        celery_n, remote_n = self.counts()
        if job.trusted_only:
            if celery_n == 0:
                self._held[job.job_id] = job
                return
            route = "celery"
        elif celery_n == 0 and remote_n == 0:
            # Nobody is alive yet: which route gets it is decided when someone turns up.
            self._parked.setdefault(job.job_id, (job, time.monotonic()))
            return
        elif remote_n == 0:
            route = "celery"
        elif celery_n == 0:
            route = "lease"
        else:
            busy = {"celery": 0, "lease": 0}
            for r in self._route.values():
                busy[r] += 1
            route = "lease" if busy["lease"] / remote_n < busy["celery"] / celery_n else "celery"
        self._route[job.job_id] = route
        (self.celery if route == "celery" else self.lease).submit(job)

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Results from both routes, waiting up to ``timeout_s`` for the first."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            self._release_parked()
            out = self._release_held()
            out += self.lease.poll(0.0)
            left = deadline - time.monotonic()
            out += self.celery.poll(0.0 if out else min(0.25, max(left, 0.0)))
            if out or time.monotonic() >= deadline:
                break
        for r in out:
            self._route.pop(r.job_id, None)
            if r.result.get(UNVERIFIED):
                self._unverified[r.candidate_id] = r.result
        return out

    def close(self) -> None:
        """Close both routes."""
        try:
            self.lease.close()
        finally:
            self.celery.close()

    def _release_parked(self) -> None:
        """Route the jobs that waited for a worker, now that one is alive; after
        :data:`PARK_MAX_S` with nobody, send them to the Celery queue (a worker started without
        a heartbeat, such as a bare ``celery worker``, still finds them there)."""
        if not self._parked:
            return
        alive = any(self.counts())
        now = time.monotonic()
        for job_id, (job, since) in list(self._parked.items()):
            if alive:
                del self._parked[job_id]
                self.submit(job)
            elif now - since >= PARK_MAX_S:
                del self._parked[job_id]
                self._route[job_id] = "celery"
                self.celery.submit(job)
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "no worker of class %s is alive (neither Celery nor remote) after %g s:"
                        " jobs are queued on eval.%s for whoever comes",
                        self.hardware_class,
                        PARK_MAX_S,
                        self.hardware_class,
                    )

    def _release_held(self) -> list[JobResult]:
        """Trusted-only jobs with no trusted worker: their remote claim, said to be unverified."""
        if not self._held:
            return []
        out = []
        for job_id, job in list(self._held.items()):
            claim = self._unverified.get(job.candidate_id)
            if claim is None:
                continue  # not a re-measure of a remote result: waits for a Celery worker
            result = dict(claim, verification=NO_TRUSTED_WORKER)
            out.append(JobResult(job_id, job.candidate_id, result))
            del self._held[job_id]
        if self._held and self.counts()[0] > 0:
            for job_id, job in list(self._held.items()):
                self._route[job_id] = "celery"
                self.celery.submit(job)
                del self._held[job_id]
        return out

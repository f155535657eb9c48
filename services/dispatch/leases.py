"""The lease dispatcher: a run's :class:`evolution.ports.Dispatcher` for remote HTTPS workers.

Jobs are rows of ``remote_jobs`` (:func:`archive.leases.offer`) that remote workers claim over
the API (``/api/v1/workers``, :mod:`services.api.routes.remote`) with a lease, and finish by
posting their result into the row. :meth:`LeaseDispatcher.poll` runs the reaper (expired leases
back to the queue) and takes the run's finished rows as :class:`evolution.ports.JobResult`.

As with the Celery dispatcher, results of jobs this dispatcher did not submit (offered before a
resume) are returned too: the loop and the store keep one result per job id. Every result comes
marked ``unverified: True`` by the API: a remote worker's timing is its own claim.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from archive import leases
from archive.models import utcnow
from evolution.ports import Job, JobResult
from services.workers.tasks import job_message

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
"""Seconds between two looks at the database while :meth:`LeaseDispatcher.poll` waits."""

NO_WORKER_AFTER_S = 30.0
"""Say so when jobs wait this long unclaimed and no result comes back."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class LeaseDispatcher:
    """Offers a run's jobs to remote workers of its hardware class.

    Parameters
    ----------
    session_factory:
        Sessions on the service's database (the API that workers reach uses the same one).
    run_id:
        The run; its ``jobs`` rows are recorded by the run's store before :meth:`submit`.
    hardware_class:
        Only workers enrolled with this class claim the jobs.
    capacity:
        Jobs in flight at once (about the number of remote workers of the class).
    task_source:
        The task file's text, sent with every job.
    eval_config:
        The run's evaluator settings (``EvalConfig`` fields; a worker uses its own device).
    notify:
        Where to say that no worker seems to claim the jobs (default: stderr).
    max_attempts:
        Expired leases after which a job is failed (see :func:`archive.leases.reap`).
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        run_id: int,
        hardware_class: str,
        capacity: int,
        task_source: str,
        eval_config: dict[str, Any] | None = None,
        notify: Callable[[str], None] = _stderr,
        max_attempts: int = leases.MAX_ATTEMPTS,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not leases.HARDWARE_CLASS_RE.fullmatch(hardware_class):
            raise ValueError(f"invalid hardware class {hardware_class!r}")
        self._sessions = session_factory
        self.run_id = run_id
        self.hardware_class = hardware_class
        self._capacity = capacity
        self._task_source = task_source
        self._config = dict(eval_config or {})
        self._notify = notify
        self._max_attempts = max_attempts
        self._submitted: dict[str, float] = {}
        self._last_result = time.monotonic()
        self._warned = False
        self._closed = False

    @property
    def capacity(self) -> int:
        """Jobs in flight at once."""
        return self._capacity

    def submit(self, job: Job) -> None:
        """Queue ``job`` for the workers of the hardware class (again: a no-op)."""
        if self._closed:
            raise RuntimeError("the dispatcher is closed")
        payload = job_message(job, self._task_source, self._config)
        with self._sessions() as session:
            leases.offer(session, job.job_id, self.run_id, self.hardware_class, payload)
            session.commit()
        self._submitted[job.job_id] = time.monotonic()

    def poll(self, timeout_s: float) -> list[JobResult]:
        """The run's finished jobs, waiting up to ``timeout_s`` for the first.

        Each look reaps expired leases first, so jobs of dead workers go back to the queue
        (or fail after ``max_attempts``) even when no API request triggers the reaper.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            out = self._take()
            if out:
                self._last_result = time.monotonic()
                self._warned = False
                for r in out:
                    self._submitted.pop(r.job_id, None)
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                self._check_workers()
                return []
            time.sleep(min(POLL_INTERVAL_S, left))

    def close(self) -> None:
        """Stop. Jobs still queued stay offered: workers evaluate them and a resumed run of
        the same id takes their results (as with Celery)."""
        self._closed = True

    # --- internals ----------------------------------------------------------------------------

    def _take(self) -> list[JobResult]:
        with self._sessions() as session:
            if leases.reap(session, utcnow(), self._max_attempts):
                session.commit()
            rows = leases.take_results(session, self.run_id)
            out = []
            for row in rows:
                result = dict(row.result or {})
                candidate_id = int(row.payload["candidate_id"])
                out.append(JobResult(row.job_id, candidate_id, result))
            session.commit()
        return out

    def _check_workers(self) -> None:
        if self._warned or not self._submitted:
            return
        now = time.monotonic()
        if now - max(min(self._submitted.values()), self._last_result) < NO_WORKER_AFTER_S:
            return
        try:
            with self._sessions() as session:
                waiting = leases.queued_count(session, self.run_id)
        except Exception:  # only a hint: never let it stop the run
            log.debug("could not count the queued remote jobs", exc_info=True)
            return
        if waiting:
            self._warned = True
            self._notify(
                f"no remote worker of hardware class {self.hardware_class} has claimed a job"
                f" for {NO_WORKER_AFTER_S:.0f} s ({waiting} waiting): enrol one with"
                " `kernelmap keys create --role worker` and"
                f" `kernelmap worker --join URL --token KEY` on a {self.hardware_class} machine;"
                " still waiting"
            )

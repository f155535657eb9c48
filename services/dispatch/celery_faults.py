"""How the Celery dispatcher rides out broker faults, and jobs whose result never comes.

:class:`BrokerFaults` is the part of :class:`services.dispatch.celery_queue.CeleryDispatcher`
that handles them; it works on the dispatcher's own state (its connection, its jobs in flight,
the outage's backoff), which the dispatcher's ``__init__`` sets up.

Faults
------
Delivery is at least once and ingestion is idempotent by job id, so the dispatcher sends a job
again whenever it may have been lost; a second result for a job id is ignored downstream.

- **Broker lost** (Redis restarted, network cut): a connection error on ``submit`` or
  ``poll`` marks the broker down; the run goes on. Each poll then tries one reconnection
  (backoff from :data:`BACKOFF_START_S` to :data:`BACKOFF_MAX_S`) and returns no results, and the
  dispatcher says once that it waits (and again every :data:`STILL_WAITING_EVERY_S`). Jobs
  submitted meanwhile are kept. Once the broker is back, every job whose result has not come
  back and which the broker does not hold (waiting in the queue, or taken by a worker) is sent
  again under its job id. A Redis restarted without persistence forgot all of them, and the
  results workers sent that were not read yet: all those jobs are sent again.
- **Broker restarted unnoticed**: redis-py reconnects by itself after a short blip, so a Redis
  that restarts within one raises no error at all. The dispatcher reads the server's ``run_id``
  every :data:`SERVER_CHECK_EVERY_S` (it changes on every restart and failover) and treats a
  change like an outage that just ended.
- **A result that never comes** (a job lost without a broker fault): a job sent more than
  ``result_deadline_s`` ago (default: its hard time limit + the visibility timeout +
  :data:`~services.dispatch.celery_queue.DEADLINE_MARGIN_S`) with no result, and which the
  broker does not hold, is sent once more; after a second such deadline it is returned as
  failed (``RUNTIME_ERROR``, no worker returned it), so a run never waits forever. A job that
  the broker holds (workers are busy or absent) restarts its clock: a run waits for workers,
  never for a job nobody holds.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from redis.exceptions import ResponseError

from evaluator_worker.verdict import Verdict
from evolution.ports import Job, JobResult
from services.dispatch.celery_wire import held_jobs, open_results
from services.dispatch.job_eval import failure
from services.workers.celery_app import key_prefix

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
"""First wait before trying to reach a lost broker again; doubled after each failed try."""

BACKOFF_MAX_S = 8.0
"""Longest wait between two tries to reach a lost broker."""

STILL_WAITING_EVERY_S = 60.0
"""While the broker is away, say every this many seconds that the run still waits for it."""

SERVER_CHECK_EVERY_S = 1.0
"""How often the broker's ``run_id`` is read to notice a restart that raised no error."""

DEADLINE_RESENDS = 1
"""Times a job whose result missed its deadline is sent again before it is reported failed."""


#: A job the broker does not hold is sent again only if it still does not hold it this long
#: after the first look: a message is briefly in neither place while a worker takes it (BRPOP,
#: then kombu's unacked hash) or while kombu restores it, and one look can fall in between.
MISSING_CONFIRM_S = 0.5


@dataclasses.dataclass
class Sent:
    """A job whose result has not come back."""

    job: Job
    submitted_at: float
    clock: float
    """When its result deadline started: its last send (or the last time the broker held it)."""
    sends: int = 0
    late_resends: int = 0
    missing_since: float | None = None
    """When the broker was first seen not holding it (it is taken as lost only when a second
    look, :data:`MISSING_CONFIRM_S` later, does not find it either)."""


class BrokerFaults:
    """Broker outages, unnoticed restarts and overdue results of a Celery dispatcher (see the
    module notes). Mixed into :class:`~services.dispatch.celery_queue.CeleryDispatcher`, whose
    ``__init__`` sets the state used here: the connection (``_conn``, ``_results``, ``_redis``,
    ``_errors``), the jobs in flight (``_jobs``, ``_send``), the outage's clock and backoff
    (``_down_since``, ``_retry_at``, ``_backoff``, ``_said_waiting_at``), the resend flags and
    the server's ``run_id`` (``_resend_due``, ``_resend_reason``, ``_server_id``,
    ``_next_server_check``)."""

    def _lost(self, error: BaseException) -> None:
        """The broker went away: wait for it (see :meth:`_reconnect`)."""
        if self._down_since is not None:
            return
        now = time.monotonic()
        self._down_since = now
        self._backoff = BACKOFF_START_S
        self._retry_at = now + self._backoff
        self._said_waiting_at = now
        try:
            self._results.close()
        except Exception:
            log.debug("closing the results queue of a lost broker failed", exc_info=True)
        self._release()
        log.warning("lost the broker at %s: %s", self._url, error)
        self._notify(
            f"lost the Redis broker at {self._url} ({error}): waiting for it to come back"
            f" (trying again every {BACKOFF_START_S:g} to {BACKOFF_MAX_S:g} s); the"
            f" {len(self._jobs)} jobs in flight are sent again once it is back unless it still"
            " holds them"
        )

    def _reconnect(self, timeout_s: float) -> bool:
        """One try to reach the lost broker, when its backoff allows; True once reconnected."""
        now = time.monotonic()
        if now < self._retry_at:
            time.sleep(min(max(timeout_s, 0.0), self._retry_at - now))
            if time.monotonic() < self._retry_at:
                return False
        conn = self.app.connection_for_read()
        try:
            conn.ensure_connection(max_retries=0)  # one try: the backoff is ours
            self._conn = conn
            self._results = open_results(conn, self.reply_to)
        except self._errors as e:
            try:
                conn.release()
            except Exception:
                log.debug("releasing a failed broker connection failed", exc_info=True)
            now = time.monotonic()
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            self._retry_at = now + self._backoff
            log.info("the broker at %s is still away (%s)", self._url, e)
            if now - self._said_waiting_at >= STILL_WAITING_EVERY_S:
                self._said_waiting_at = now
                self._notify(
                    f"still waiting for the Redis broker at {self._url}"
                    f" ({now - self._down_since:.0f} s so far): {e}"
                )
            return False
        outage = time.monotonic() - self._down_since
        self.outages_s.append(outage)
        self._down_since = None
        self._resend_due = True
        self._resend_reason = f"is back after {outage:.1f} s"
        # Whether it restarted or not, everything it lost is sent again: take its new run_id
        # as it is.
        self._server_id = None
        self._next_server_check = 0.0
        log.warning("the broker at %s is back after %.1f s", self._url, outage)
        return True

    def _check_server(self) -> None:
        """Notice a broker that restarted (or failed over) without a connection error."""
        now = time.monotonic()
        if now < self._next_server_check:
            return
        self._next_server_check = now + SERVER_CHECK_EVERY_S
        try:
            server = self._server_run_id()
        except self._errors as e:
            self._lost(e)
            return
        if server is None:
            return
        if self._server_id is not None and server != self._server_id:
            log.warning("the broker at %s restarted (its run_id changed)", self._url)
            self.outages_s.append(0.0)
            self._resend_due = True
            self._resend_reason = "restarted"
        self._server_id = server

    def _server_run_id(self) -> str | None:
        """The broker's ``run_id``; None when its ACL refuses ``INFO`` (the check is then
        skipped: only connection errors reveal a restart)."""
        try:
            return str(self._redis.info("server").get("run_id"))
        except ResponseError as e:
            self._next_server_check = float("inf")
            log.warning("cannot read the broker's run_id (%s): restarts seen only by errors", e)
            return None

    def _resend_unheld(self) -> None:
        """After an outage: send again every job without a result that the broker lost."""
        before = self.resubmitted
        first = sum(1 for s in self._jobs.values() if not s.sends)
        try:
            held = self._held(self._jobs)
        except self._errors as e:
            self._lost(e)
            return
        for sent in list(self._jobs.values()):
            if sent.job.job_id in held:
                sent.clock = time.monotonic()
            elif not self._send(sent):
                return  # lost again: everything is sent again at the next reconnection
        self._resend_due = False
        self._notify(
            f"the Redis broker at {self._url} {self._resend_reason}:"
            f" sent {self.resubmitted - before} jobs in flight again"
            f" ({len(held)} still held by it, {first} not sent before); the run goes on"
        )

    def _held(self, job_ids) -> set[str]:
        """The jobs among ``job_ids`` the broker holds (:func:`celery_wire.held_jobs`)."""
        return held_jobs(self._redis, key_prefix(self.app), self.queue, job_ids)

    def _overdue(self) -> list[JobResult]:
        """Send again, or give up on, the jobs past their result deadline (module notes)."""
        now = time.monotonic()
        late = [
            s for s in self._jobs.values() if s.sends and now - s.clock > self.result_deadline_s
        ]
        if not late:
            return []
        try:
            held = self._held(s.job.job_id for s in late)
        except self._errors as e:
            self._lost(e)
            return []
        out: list[JobResult] = []
        for sent in late:
            job = sent.job
            if job.job_id in held:
                sent.clock, sent.missing_since = now, None
                continue
            if sent.missing_since is None or now - sent.missing_since < MISSING_CONFIRM_S:
                sent.missing_since = sent.missing_since or now  # look again before resending
                continue
            sent.missing_since = None
            if sent.late_resends < DEADLINE_RESENDS:
                sent.late_resends += 1
                log.warning(
                    "no result for job %s (candidate %s) after %.0f s and the broker does not"
                    " hold it: sending it again",
                    job.job_id,
                    job.candidate_id,
                    self.result_deadline_s,
                )
                if not self._send(sent):
                    return out
                continue
            del self._jobs[job.job_id]
            log.error("job %s got no result after %d sends: failed", job.job_id, sent.sends)
            out.append(
                JobResult(
                    job.job_id,
                    job.candidate_id,
                    failure(
                        Verdict.RUNTIME_ERROR,
                        f"no worker returned a result for this job: it was sent {sent.sends}"
                        f" times to {self.queue} and each time no result came within"
                        f" {self.result_deadline_s:.0f} s, and the broker no longer held it"
                        " (see the workers' logs for this job id)",
                    ),
                )
            )
        return out

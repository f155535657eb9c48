"""The Celery dispatcher: a run's :class:`evolution.ports.Dispatcher` over a Redis broker.

Jobs go to the queue ``eval.<hardware-class>``, where ``kernelmap worker`` processes take them.
Workers send each result back as a ``kernelmap.report`` message on the run's queue
``controller.<run_id>``; :meth:`CeleryDispatcher.poll` reads those messages directly with a kombu
``SimpleQueue`` (no result backend, no Celery consumer in the controller) and acknowledges each
one once it is turned into a :class:`evolution.ports.JobResult`.

Results of jobs this dispatcher did not submit (dispatched before a resume, or evaluated twice
after a redelivery) are returned too: the loop and the store keep one result per job id.

Faults
------
Delivery is at least once and ingestion is idempotent by job id, so the dispatcher sends a job
again whenever it may have been lost; a second result for a job id is ignored downstream.

- **Broker lost** (Redis restarted, network cut): a connection error on :meth:`submit` or
  :meth:`poll` marks the broker down; the run goes on. Each poll then tries one reconnection
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
  :data:`DEADLINE_MARGIN_S`) with no result, and which the broker does not hold, is sent once
  more; after a second such deadline it is returned as failed (``RUNTIME_ERROR``, no worker
  returned it), so a run never waits forever. A job that the broker holds (workers are busy or
  absent) restarts its clock: a run waits for workers, never for a job nobody holds.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redis.exceptions import RedisError, ResponseError

from evaluator_worker.verdict import Verdict
from evolution.ports import Job, JobResult
from kernelmap_errors import KernelmapError
from services.dispatch.job_eval import failure
from services.workers.celery_app import (
    EVALUATE,
    REPORT,
    broker_client,
    controller_queue,
    eval_queue,
    key_prefix,
    soft_time_limit_s,
    time_limit_s,
)
from services.workers.tasks import job_message

log = logging.getLogger(__name__)

NO_WORKER_AFTER_S = 30.0
"""Say so when jobs wait this long in the queue and no result comes back."""

BACKOFF_START_S = 0.5
"""First wait before trying to reach a lost broker again; doubled after each failed try."""

BACKOFF_MAX_S = 8.0
"""Longest wait between two tries to reach a lost broker."""

STILL_WAITING_EVERY_S = 60.0
"""While the broker is away, say every this many seconds that the run still waits for it."""

SERVER_CHECK_EVERY_S = 1.0
"""How often the broker's ``run_id`` is read to notice a restart that raised no error."""

DEADLINE_MARGIN_S = 60.0
"""Added to a job's hard time limit and the visibility timeout to make its result deadline
(kombu restores abandoned jobs every few seconds, not at the very timeout)."""

DEADLINE_RESENDS = 1
"""Times a job whose result missed its deadline is sent again before it is reported failed."""

_UNACKED_KEY = "unacked"
"""kombu's Redis hash of the messages workers hold (``Channel.unacked_key``), unprefixed."""


class BrokerError(KernelmapError):
    """The Redis broker of the evaluation fleet cannot be reached."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Sent:
    """A job whose result has not come back."""

    job: Job
    submitted_at: float
    clock: float
    """When its result deadline started: its last send (or the last time the broker held it)."""
    sends: int = 0
    late_resends: int = 0


class CeleryDispatcher:
    """Dispatches a run's jobs to the Celery queue of its hardware class.

    Parameters
    ----------
    app:
        The Celery app (:func:`services.workers.celery_app.create_app`).
    hardware_class:
        Jobs go to ``eval.<hardware_class>``.
    run_id:
        Results come back on ``controller.<run_id>``.
    capacity:
        Jobs in flight at once (about the number of workers on the queue).
    task_source:
        The task file's text, sent with every job.
    eval_config:
        The run's evaluator settings (``EvalConfig`` fields); also sets the jobs' time limits.
    notify:
        Where to say that no worker seems to consume the queue, or that the broker is away
        (default: stderr).
    result_deadline_s:
        Seconds without a result after which a job the broker does not hold is sent again
        (see the module notes); default: the job's hard time limit + the broker's visibility
        timeout + :data:`DEADLINE_MARGIN_S`.

    Attributes
    ----------
    resubmitted:
        Sends of jobs that had been sent before (after a broker outage or a missed deadline).
    outages_s:
        How long each broker outage lasted, from the first error seen to the reconnection
        (0 for a restart noticed only by the server's new ``run_id``).

    Raises
    ------
    BrokerError
        The broker cannot be reached when the dispatcher starts.
    """

    def __init__(
        self,
        app: Celery,
        hardware_class: str,
        run_id: int | str,
        capacity: int,
        task_source: str,
        eval_config: dict[str, Any] | None = None,
        notify: Callable[[str], None] = _stderr,
        result_deadline_s: float | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.app = app
        self.hardware_class = hardware_class
        self.queue = eval_queue(hardware_class)
        self.reply_to = controller_queue(run_id)
        self._capacity = capacity
        self._task_source = task_source
        self._config = dict(eval_config or {})
        timeout_s = float(self._config.get("timeout_s") or 60.0)
        self._limits = {
            "soft_time_limit": soft_time_limit_s(timeout_s),
            "time_limit": time_limit_s(timeout_s),
        }
        if result_deadline_s is None:
            options = app.conf.broker_transport_options or {}
            visibility = float(options.get("visibility_timeout", 3600.0))
            result_deadline_s = time_limit_s(timeout_s) + visibility + DEADLINE_MARGIN_S
        self.result_deadline_s = float(result_deadline_s)
        self._notify = notify
        self._url = maybe_sanitize_url(app.conf.broker_url)
        self._jobs: dict[str, _Sent] = {}
        self._last_result = time.monotonic()
        self._warned = False
        self.resubmitted = 0
        self.outages_s: list[float] = []
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_S
        self._said_waiting_at = 0.0
        self._resend_due = False
        self._resend_reason = ""
        self._server_id: str | None = None
        self._next_server_check = 0.0
        self._redis = broker_client(app)
        self._conn = app.connection_for_read()
        # kombu's connection errors (redis-py's among them) and the library error that publish
        # raises once its own retries are spent.
        self._errors: tuple[type[BaseException], ...] = (
            OperationalError,
            RedisError,
            *self._conn.connection_errors,
        )
        try:
            self._conn.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5)
            self._results = self._open_results()
            self._server_id = self._server_run_id()
            self._next_server_check = time.monotonic() + SERVER_CHECK_EVERY_S
        except self._errors as e:
            self._release()
            self._redis.close()
            raise BrokerError(
                f"cannot reach the Redis broker at {self._url}:"
                f" {e} (is Redis running? check --redis / KERNELMAP_REDIS_URL)"
            ) from None

    @property
    def capacity(self) -> int:
        """Jobs in flight at once."""
        return self._capacity

    @property
    def broker_down(self) -> bool:
        """Whether the broker is away (the dispatcher waits for it)."""
        return self._down_since is not None

    def submit(self, job: Job) -> None:
        """Send ``job`` to ``eval.<hardware_class>``.

        Never raises for a lost broker: the job is kept and sent once the broker is back.
        """
        now = time.monotonic()
        sent = self._jobs[job.job_id] = _Sent(job, submitted_at=now, clock=now)
        if self._down_since is None:
            self._send(sent)

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Results on the run's queue, waiting up to ``timeout_s`` for the first.

        Each report message is acknowledged here, before the loop stores its result. That is
        safe: the job's row stays ``dispatched`` in the database until its result is ingested,
        so if the controller dies between this acknowledgement and the store, the result is
        gone from Redis but the run is not short of it: on ``--resume``,
        :meth:`archive.run_store.RunStore.pending` lists every candidate of the run without an
        evaluation (and marks its job ``lost``), and :meth:`evolution.loop.SearchLoop.resume`
        dispatches those again, under new job ids, before anything new. (A tie's re-measure
        lost that way is not redone: its candidate has an evaluation, and the elite is kept.)

        While the broker is away this waits up to ``timeout_s`` (and tries to reconnect when its
        backoff allows) and returns no results; see the module notes. Jobs that missed their
        result deadline twice come back as failed results.
        """
        if self._down_since is not None and not self._reconnect(timeout_s):
            return []
        out = self._read(timeout_s)
        if out:
            self._last_result = time.monotonic()
            self._warned = False
            for r in out:
                self._jobs.pop(r.job_id, None)
        if self._down_since is None:
            self._check_server()
        if self._down_since is None and self._resend_due:
            self._resend_unheld()
        if self._down_since is None:
            out += self._overdue()
        if not out and self._down_since is None:
            self._check_workers()
        return out

    def close(self) -> None:
        """Stop reading results; jobs still queued are evaluated and reported to the run's
        queue, where a resumed run finds them."""
        try:
            self._results.close()
        except Exception:  # a dead broker connection: nothing left to close cleanly
            log.debug("closing the results queue failed", exc_info=True)
        finally:
            self._release()
            self._redis.close()

    # --- internals ----------------------------------------------------------------------------

    def _send(self, sent: _Sent) -> bool:
        """Publish ``sent``'s job; False (and the broker marked down) on a connection error."""
        job = sent.job
        try:
            self.app.send_task(
                EVALUATE,
                args=[job_message(job, self._task_source, self._config), self.reply_to],
                queue=self.queue,
                task_id=job.job_id,
                **self._limits,
            )
        except self._errors as e:
            self._lost(e)
            return False
        if sent.sends:
            self.resubmitted += 1
        sent.sends += 1
        sent.clock = time.monotonic()
        return True

    def _read(self, timeout_s: float) -> list[JobResult]:
        out: list[JobResult] = []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            # After the first result, only take what is already there (kombu's non-blocking
            # get would skip the messages its consumer has buffered).
            wait = max(deadline - time.monotonic(), 0.01) if not out else 0.01
            try:
                message = self._results.get(block=True, timeout=wait)
            except queue.Empty:
                break
            except self._errors as e:
                self._lost(e)
                break
            result = self._decode(message)
            if result is not None:
                out.append(result)
            try:
                message.ack()
            except self._errors as e:
                # The result is in hand; a broker that kept the message delivers it again
                # later, and a second result for a job id is ignored.
                self._lost(e)
                break
        return out

    def _decode(self, message) -> JobResult | None:
        name = message.headers.get("task") if message.headers else None
        try:
            _args, kwargs, _embed = message.decode()
            if name != REPORT:
                raise ValueError(f"not a {REPORT} message: {name!r}")
            return JobResult(kwargs["job_id"], int(kwargs["candidate_id"]), dict(kwargs["result"]))
        except Exception as e:  # a stray message must not stop the run: drop it, loudly
            log.error("dropped a message on %s that is not a job result: %s", self.reply_to, e)
            return None

    def _open_results(self):
        # JSON only: a pickled message on the queue would run code in the controller.
        return self._conn.SimpleQueue(self.reply_to, no_ack=False, accept=["json"])

    def _release(self) -> None:
        try:
            self._conn.release()
        except Exception:  # the old connection is dead anyway
            log.debug("releasing the broker connection failed", exc_info=True)

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
            self._results = self._open_results()
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

    def _held(self, job_ids: Iterable[str]) -> set[str]:
        """The jobs among ``job_ids`` that the broker holds: waiting in the queue, or taken by
        a worker and not acknowledged (kombu restores those after the visibility timeout)."""
        wanted = [j.encode() for j in job_ids]
        if not wanted:
            return set()
        prefix = key_prefix(self.app)
        pipe = self._redis.pipeline(transaction=False)
        # Celery sends without a priority: kombu keeps such messages in the queue's own list.
        pipe.lrange(prefix + self.queue, 0, -1)
        pipe.hvals(prefix + _UNACKED_KEY)
        try:
            waiting, taken = pipe.execute()
        except ResponseError as e:  # e.g. an ACL without LRANGE/HVALS: send them all again
            log.warning("cannot look into %s (%s): taking its jobs as lost", self.queue, e)
            return set()
        messages = [*waiting, *taken]
        return {j.decode() for j in wanted if any(j in m for m in messages)}

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
                sent.clock = now
                continue
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

    def _check_workers(self) -> None:
        if self._warned or not self._jobs:
            return
        now = time.monotonic()
        oldest = min(s.submitted_at for s in self._jobs.values())
        if now - max(oldest, self._last_result) < NO_WORKER_AFTER_S:
            return
        try:
            # Not queue_declare(passive=True): kombu 5.7 does not prefix the EXISTS it sends,
            # so with a global_keyprefix it never finds the queue. LLEN is prefixed.
            waiting = self._conn.default_channel._size(self.queue)
        except Exception:  # only a hint: never let it stop the run
            log.debug("could not read the length of %s", self.queue, exc_info=True)
            return
        if waiting:
            self._warned = True
            self._notify(
                f"no worker has taken a job from {self.queue} on {self._url} for"
                f" {NO_WORKER_AFTER_S:.0f} s ({waiting} waiting): start one with"
                f" `kernelmap worker --queue {self.hardware_class}`; still waiting"
            )

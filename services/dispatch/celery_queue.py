"""The Celery dispatcher: a run's :class:`evolution.ports.Dispatcher` over a Redis broker.

Jobs go to the queue ``eval.<hardware-class>``, where ``kernelmap worker`` processes take them
(the messages' format: :mod:`services.dispatch.celery_wire`).
Workers send each result back as a ``kernelmap.report`` message on the run's queue
``controller.<run_id>``; :meth:`CeleryDispatcher.poll` reads those messages directly with a kombu
``SimpleQueue`` (no result backend, no Celery consumer in the controller) and acknowledges each
one once it is turned into a :class:`evolution.ports.JobResult`.

Results of jobs this dispatcher did not submit (dispatched before a resume, or evaluated twice
after a redelivery) are returned too: the loop and the store keep one result per job id.

Delivery is at least once: whenever a job may have been lost (the broker went away or
restarted, or its result missed its deadline) it is sent again under its job id; what the
dispatcher does for each fault is in :mod:`services.dispatch.celery_faults`.

When jobs wait on the queue and no result has come back for :data:`NO_WORKER_AFTER_S`, the
heartbeats of the class's workers tell why (:func:`stall_note`): workers that are alive are
busy (said once, at INFO in the log), while no live worker of the class is a warning with
what to start.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from redis.exceptions import RedisError

from evolution.ports import Job, JobResult
from kernelmap_errors import KernelmapError
from services.dispatch.celery_faults import (
    BACKOFF_START_S,
    SERVER_CHECK_EVERY_S,
    BrokerFaults,
    Sent,
)
from services.dispatch.celery_wire import (
    decode_report,
    job_limits,
    open_results,
    send_job,
    waiting_count,
)
from services.workers.celery_app import (
    broker_client,
    controller_queue,
    eval_queue,
    key_prefix,
    time_limit_s,
)
from services.workers.fleet import read_workers

log = logging.getLogger(__name__)

NO_WORKER_AFTER_S = 30.0
"""Say why when jobs wait this long in the queue and no result comes back."""

STALL_CHECK_EVERY_S = 5.0
"""While such a stall lasts, how often the queue and the heartbeats are read again (a busy
worker that dies meanwhile is then said to be gone)."""

NAMED_WORKERS = 3
"""Workers named in a note; more are counted."""

DEADLINE_MARGIN_S = 60.0
"""Added to a job's hard time limit and the visibility timeout to make its result deadline
(kombu restores abandoned jobs every few seconds, not at the very timeout)."""


class BrokerError(KernelmapError):
    """The Redis broker of the evaluation fleet cannot be reached."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StallNote:
    """What to say about jobs that wait on a queue with no result coming back.

    Attributes
    ----------
    kind:
        ``"busy"``: workers of the class are alive (their heartbeats are fresh), so they are
        evaluating earlier jobs; ``"absent"``: no worker of the class consumes the queue.
    level:
        The :mod:`logging` level it deserves: ``INFO`` for busy, ``WARNING`` for absent.
    text:
        The note itself.
    """

    kind: Literal["busy", "absent"]
    level: int
    text: str


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def stall_note(
    queue: str,
    hardware_class: str,
    idle_s: float,
    waiting: int,
    workers: Sequence[Mapping[str, Any]],
    remote_alive: int = 0,
    broker: str = "",
) -> StallNote | None:
    """Why jobs wait on ``queue``, from who is alive; None when there is nothing to say.

    Parameters
    ----------
    queue, hardware_class:
        The queue (``eval.<hardware_class>``) and its class.
    idle_s:
        Seconds since the last result came back (or since the oldest job in flight was sent,
        if later). Under :data:`NO_WORKER_AFTER_S` nothing is said.
    waiting:
        Jobs waiting in the queue, not yet taken by a worker. With none, nothing is said.
    workers:
        Heartbeat records of the live Celery workers
        (:func:`services.workers.fleet.read_workers`: ``name``, ``hardware_class``, ``age_s``),
        of every class: those of other classes are ignored.
    remote_alive:
        Remote workers of the class alive now. They take leased jobs only, never this queue's,
        but a note saying that no worker of the class is alive would be false.
    broker:
        The broker's URL (without its password), named when no worker is alive.
    """
    if waiting <= 0 or idle_s < NO_WORKER_AFTER_S:
        return None
    stall = (
        f"{_plural(waiting, 'job waits', 'jobs wait')} on {queue} and no result for {idle_s:.0f} s"
    )
    mine = [w for w in workers if w.get("hardware_class") == hardware_class]
    if mine:
        named = []
        for w in mine[:NAMED_WORKERS]:
            age = w.get("age_s")
            seen = f", heartbeat {age:.0f} s ago" if isinstance(age, int | float) else ""
            named.append(f"{w['name']}{seen}")
        more = len(mine) - NAMED_WORKERS
        if more > 0:
            named.append(f"{more} more")
        one = len(mine) == 1
        return StallNote(
            "busy",
            logging.INFO,
            f"{stall}: {_plural(len(mine), 'worker', 'workers')} of class {hardware_class}"
            f" {'is' if one else 'are'} alive and busy ({'; '.join(named)}); the waiting jobs"
            f" start as {'it frees' if one else 'they free'} up",
        )
    start = f"start one with `kernelmap worker --queue {hardware_class}`; still waiting"
    where = f" on {broker}" if broker else ""
    if remote_alive:
        remote = _plural(remote_alive, "remote worker", "remote workers")
        return StallNote(
            "absent",
            logging.WARNING,
            f"{stall}: no cluster worker is alive for {queue}{where}"
            f" ({remote} of class {hardware_class} {'is' if remote_alive == 1 else 'are'} alive,"
            f" but remote workers take leased jobs only, not this queue's): {start}",
        )
    return StallNote(
        "absent",
        logging.WARNING,
        f"{stall}: no worker is alive for {queue}{where} (no heartbeat of class"
        f" {hardware_class}): {start}",
    )


class CeleryDispatcher(BrokerFaults):
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
        Where to say that no worker of the class is alive while jobs wait, or that the broker
        is away (default: stderr). That live workers are busy is only logged, at INFO.
    remote_alive:
        ``remote_alive()`` -> remote workers of the class alive now (they do not take this
        queue's jobs; named in the note when no Celery worker is alive). Default: none. The
        :class:`services.dispatch.fleet.FleetDispatcher` sets it as :attr:`remote_alive`.
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
    remote_alive:
        As the parameter.

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
        remote_alive: Callable[[], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.app = app
        self.hardware_class = hardware_class
        self.queue = eval_queue(hardware_class)
        self.reply_to = controller_queue(run_id)
        self._run_id = run_id
        self._capacity = capacity
        self._task_source = task_source
        self._config = dict(eval_config or {})
        timeout_s = float(self._config.get("timeout_s") or 60.0)
        self._limits = job_limits(timeout_s)
        if result_deadline_s is None:
            options = app.conf.broker_transport_options or {}
            visibility = float(options.get("visibility_timeout", 3600.0))
            result_deadline_s = time_limit_s(timeout_s) + visibility + DEADLINE_MARGIN_S
        self.result_deadline_s = float(result_deadline_s)
        self._notify = notify
        self._url = maybe_sanitize_url(app.conf.broker_url)
        self._jobs: dict[str, Sent] = {}
        self._last_result = time.monotonic()
        self.remote_alive = remote_alive
        self._said: str | None = None  # kind of the last stall note said
        self._next_stall_check = 0.0
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
            self._results = open_results(self._conn, self.reply_to)
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
        sent = self._jobs[job.job_id] = Sent(job, submitted_at=now, clock=now)
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
            # The next absence is said again; that workers are busy is said once for all.
            if self._said == "absent":
                self._said = None
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

    def _send(self, sent: Sent) -> bool:
        """Publish ``sent``'s job; False (and the broker marked down) on a connection error."""
        job = sent.job
        try:
            send_job(
                self.app,
                job,
                self._task_source,
                self._config,
                self.queue,
                self.reply_to,
                self._limits,
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
            result = decode_report(message, self.reply_to)
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

    def _release(self) -> None:
        try:
            self._conn.release()
        except Exception:  # the old connection is dead anyway
            log.debug("releasing the broker connection failed", exc_info=True)

    def _check_workers(self) -> None:
        """Say why jobs wait, when they have for :data:`NO_WORKER_AFTER_S` (see
        :func:`stall_note`): each kind of note once, and again only after another was said."""
        if not self._jobs:
            return
        now = time.monotonic()
        oldest = min(s.submitted_at for s in self._jobs.values())
        idle_s = now - max(oldest, self._last_result)
        if idle_s < NO_WORKER_AFTER_S or now < self._next_stall_check:
            return
        self._next_stall_check = now + STALL_CHECK_EVERY_S
        try:  # only a hint: never let it stop the run
            waiting = waiting_count(self._conn, self.queue)
            workers = read_workers(self._redis, key_prefix(self.app)) if waiting else []
            remote = self.remote_alive() if waiting and self.remote_alive else 0
        except Exception:
            log.debug("could not tell who consumes %s", self.queue, exc_info=True)
            return
        note = stall_note(
            self.queue, self.hardware_class, idle_s, waiting, workers, remote, self._url
        )
        if note is None or note.kind == self._said:
            return
        self._said = note.kind
        if note.level >= logging.WARNING:
            self._notify(note.text)
        else:  # nothing to do about it: for the log only
            log.log(note.level, "run %s: %s", self._run_id, note.text)

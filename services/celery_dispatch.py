"""The Celery dispatcher: a run's :class:`evolution.ports.Dispatcher` over a Redis broker.

Jobs go to the queue ``eval.<hardware-class>``, where ``kernelmap worker`` processes take them.
Workers send each result back as a ``kernelmap.report`` message on the run's queue
``controller.<run_id>``; :meth:`CeleryDispatcher.poll` reads those messages directly with a kombu
``SimpleQueue`` (no result backend, no Celery consumer in the controller) and acknowledges each
one once it is turned into a :class:`evolution.ports.JobResult`.

Results of jobs this dispatcher did not submit (dispatched before a resume, or evaluated twice
after a redelivery) are returned too: the loop and the store keep one result per job id.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from evaluator_worker.errors import KernelmapError
from evolution.ports import Job, JobResult
from services.celery_app import (
    EVALUATE,
    REPORT,
    controller_queue,
    eval_queue,
    soft_time_limit_s,
    time_limit_s,
)
from services.worker_tasks import job_message

log = logging.getLogger(__name__)

NO_WORKER_AFTER_S = 30.0
"""Say so when jobs wait this long in the queue and no result comes back."""


class BrokerError(KernelmapError):
    """The Redis broker of the evaluation fleet cannot be reached."""


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CeleryDispatcher:
    """Dispatches a run's jobs to the Celery queue of its hardware class.

    Parameters
    ----------
    app:
        The Celery app (:func:`services.celery_app.create_app`).
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
        Where to say that no worker seems to consume the queue (default: stderr).
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
        self._notify = notify
        self._submitted: dict[str, float] = {}
        self._last_result = time.monotonic()
        self._warned = False
        self._conn = app.connection_for_read()
        try:
            self._conn.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5)
        except Exception as e:
            self._conn.release()
            raise BrokerError(
                f"cannot reach the Redis broker at {maybe_sanitize_url(app.conf.broker_url)}:"
                f" {e} (is Redis running? check --redis / KERNELMAP_REDIS_URL)"
            ) from None
        self._results = self._open_results()

    @property
    def capacity(self) -> int:
        """Jobs in flight at once."""
        return self._capacity

    def submit(self, job: Job) -> None:
        """Send ``job`` to ``eval.<hardware_class>``."""
        self.app.send_task(
            EVALUATE,
            args=[job_message(job, self._task_source, self._config), self.reply_to],
            queue=self.queue,
            task_id=job.job_id,
            **self._limits,
        )
        self._submitted[job.job_id] = time.monotonic()

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Results on the run's queue, waiting up to ``timeout_s`` for the first."""
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
            except self._conn.connection_errors as e:
                log.warning("broker connection lost while reading results (%s): reconnecting", e)
                self._reconnect()
                break
            result = self._decode(message)
            message.ack()
            if result is not None:
                out.append(result)
        if out:
            self._last_result = time.monotonic()
            self._warned = False
            for r in out:
                self._submitted.pop(r.job_id, None)
        else:
            self._check_workers()
        return out

    def close(self) -> None:
        """Stop reading results; jobs still queued are evaluated and reported to the run's
        queue, where a resumed run finds them."""
        try:
            self._results.close()
        finally:
            self._conn.release()

    # --- internals ----------------------------------------------------------------------------

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

    def _reconnect(self) -> None:
        try:
            self._results.close()
            self._conn.release()
        except Exception:  # the old connection is dead anyway
            log.debug("closing the dead broker connection failed", exc_info=True)
        self._conn = self.app.connection_for_read()
        self._conn.ensure_connection(max_retries=3)
        self._results = self._open_results()

    def _check_workers(self) -> None:
        if self._warned or not self._submitted:
            return
        now = time.monotonic()
        oldest = min(self._submitted.values())
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
                f"no worker has taken a job from {self.queue} on"
                f" {maybe_sanitize_url(self.app.conf.broker_url)} for"
                f" {NO_WORKER_AFTER_S:.0f} s ({waiting} waiting): start one with"
                f" `kernelmap worker --queue {self.hardware_class}`; still waiting"
            )

"""The Celery route's wire format: a job as sent, a result as read back, and where they wait.

A job goes to ``eval.<hardware-class>`` as a Celery ``kernelmap.evaluate`` task whose task id
is the job id and whose arguments are the job message
(:func:`services.workers.tasks.job_message`) and the run's reply queue; its soft and hard time
limits follow the run's stage timeout (:func:`job_limits`). The worker answers with a
``kernelmap.report`` message on ``controller.<run_id>``, read by a kombu ``SimpleQueue`` that
accepts JSON only (:func:`open_results`) and decoded by :func:`decode_report`.

kombu's Redis transport keeps a waiting message in the queue's list and a taken, not yet
acknowledged one in the hash :data:`UNACKED_KEY`; :func:`held_jobs` looks for job ids in both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from kombu import Connection
from redis.exceptions import ResponseError

from evolution.ports import Job, JobResult
from services.workers.celery_app import EVALUATE, REPORT, soft_time_limit_s, time_limit_s
from services.workers.tasks import job_message

log = logging.getLogger(__name__)

UNACKED_KEY = "unacked"
"""kombu's Redis hash of the messages workers hold (``Channel.unacked_key``), unprefixed."""


def job_limits(timeout_s: float) -> dict[str, float]:
    """Celery's ``soft_time_limit`` and ``time_limit`` (s) of a job with this stage timeout."""
    return {"soft_time_limit": soft_time_limit_s(timeout_s), "time_limit": time_limit_s(timeout_s)}


def send_job(
    app: Celery,
    job: Job,
    task_source: str,
    config: dict[str, Any],
    queue: str,
    reply_to: str,
    limits: dict[str, float],
) -> None:
    """Publish ``job`` to ``queue``, its result to come back on ``reply_to``.

    Raises
    ------
    Exception
        kombu's and redis-py's connection errors, as ``send_task`` raises them.
    """
    app.send_task(
        EVALUATE,
        args=[job_message(job, task_source, config), reply_to],
        queue=queue,
        task_id=job.job_id,
        **limits,
    )


def open_results(conn: Connection, reply_to: str):
    """A kombu ``SimpleQueue`` on the run's reply queue, acknowledged message by message."""
    # JSON only: a pickled message on the queue would run code in the controller.
    return conn.SimpleQueue(reply_to, no_ack=False, accept=["json"])


def decode_report(message, reply_to: str) -> JobResult | None:
    """The :class:`JobResult` in a ``kernelmap.report`` message; None (logged) for any other."""
    name = message.headers.get("task") if message.headers else None
    try:
        _args, kwargs, _embed = message.decode()
        if name != REPORT:
            raise ValueError(f"not a {REPORT} message: {name!r}")
        return JobResult(kwargs["job_id"], int(kwargs["candidate_id"]), dict(kwargs["result"]))
    except Exception as e:  # a stray message must not stop the run: drop it, loudly
        log.error("dropped a message on %s that is not a job result: %s", reply_to, e)
        return None


def held_jobs(client: redis.Redis, prefix: str, queue: str, job_ids: Iterable[str]) -> set[str]:
    """The jobs among ``job_ids`` that the broker holds: waiting in ``queue``, or taken by a
    worker and not acknowledged (kombu restores those after the visibility timeout).

    ``prefix`` is the transport's ``global_keyprefix``. An ACL that refuses the lookup gives
    the empty set (every job then counts as lost); connection errors are raised.
    """
    wanted = [j.encode() for j in job_ids]
    if not wanted:
        return set()
    pipe = client.pipeline(transaction=False)
    # Celery sends without a priority: kombu keeps such messages in the queue's own list.
    pipe.lrange(prefix + queue, 0, -1)
    pipe.hvals(prefix + UNACKED_KEY)
    try:
        waiting, taken = pipe.execute()
    except ResponseError as e:  # e.g. an ACL without LRANGE/HVALS: send them all again
        log.warning("cannot look into %s (%s): taking its jobs as lost", queue, e)
        return set()
    messages = [*waiting, *taken]
    return {j.decode() for j in wanted if any(j in m for m in messages)}


def waiting_count(conn: Connection, queue: str) -> int:
    """Messages waiting in ``queue`` (kombu's ``LLEN``, which honours the key prefix)."""
    # Not queue_declare(passive=True): kombu 5.7 does not prefix the EXISTS it sends,
    # so with a global_keyprefix it never finds the queue. LLEN is prefixed.
    return conn.default_channel._size(queue)

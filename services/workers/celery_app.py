"""The Celery app of the evaluation fleet and its configuration (Celery's documented setting keys).

Queues: jobs go to ``eval.<hardware-class>`` (``eval.cuda``, ``eval.cpu``, ``eval.h100``...),
consumed by ``kernelmap worker`` processes, one per GPU. Each worker sends its result back as a
``kernelmap.report`` message on the queue the job names, ``controller.<run_id>``, which the run's
:class:`services.dispatch.celery_queue.CeleryDispatcher` drains.

Delivery is at least once: ``task_acks_late`` keeps a job unacknowledged until it is evaluated,
so a job whose worker died is delivered again (at once when only the pool process died, after
the broker's ``visibility_timeout`` when the whole worker did). The controller ingests results
idempotently by job id. The visibility timeout is longer than the longest evaluation plus its
time limits, or a slow job would be handed to a second worker while the first still runs it.

Broker faults: a worker whose connection to Redis breaks (Redis restarted, network cut) keeps
evaluating the job it holds, reconnects by itself with Celery's backoff (2, 4, 6... up to 30 s
between tries) and waits for the broker for as long as it takes; a result it cannot send waits
up to about 40 s for the broker (:data:`services.workers.tasks.REPORT_RETRY_POLICY`). A Redis that
restarts without persistence forgets every queued and unacknowledged job and every unread
result: the controller sends again each job whose result has not come back
(:class:`services.dispatch.celery_queue.CeleryDispatcher`). A job whose whole worker dies on every
delivery is delivered a bounded number of times (:data:`services.workers.tasks.MAX_DELIVERIES`).

``celery -A services.workers.celery_app worker -Q eval.cuda -c 1`` works too;
``kernelmap worker`` sets the device, the queue and the worker options for you.
"""

from __future__ import annotations

import redis
from celery import Celery

from services.config import Settings

EVALUATE = "kernelmap.evaluate"
"""Task name of an evaluation job (``services.workers.tasks.evaluate``)."""

REPORT = "kernelmap.report"
"""Task name of a result sent back to the controller's queue."""

EVAL_STAGES = 6
"""Stages of an evaluation each bounded by ``timeout_s`` (zygote, load, correctness, timing of
the candidate, eager and compiled baselines): the evaluation's worst case is about this many
timeouts."""

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def eval_queue(hardware_class: str) -> str:
    """The queue of evaluation jobs for ``hardware_class``."""
    return f"eval.{hardware_class}"


def controller_queue(run_id: int | str) -> str:
    """The queue a run's results come back on."""
    return f"controller.{run_id}"


def soft_time_limit_s(timeout_s: float) -> float:
    """Seconds after which a job is stopped and reported as ``TIMEOUT``."""
    return EVAL_STAGES * timeout_s + 60.0


def time_limit_s(timeout_s: float) -> float:
    """Seconds after which the worker kills the pool process of a job past its soft limit."""
    return soft_time_limit_s(timeout_s) + 30.0


def visibility_timeout_s(settings: Settings) -> float:
    """Seconds before a job whose worker vanished is delivered again.

    ``KERNELMAP_VISIBILITY_TIMEOUT_S``, else longer than the hard time limit of a job (workers
    prefetch only the job they run, so queue waiting does not count against it).
    """
    if settings.visibility_timeout_s is not None:
        return settings.visibility_timeout_s
    return time_limit_s(settings.timeout_s) + 120.0


def transport_options(settings: Settings) -> dict:
    """kombu's Redis transport options (``broker_transport_options``)."""
    visibility = visibility_timeout_s(settings)
    return {
        "visibility_timeout": visibility,
        "global_keyprefix": settings.redis_key_prefix,
        # kombu sweeps for abandoned jobs every interval * throttle seconds (100 s by default):
        # tie the sweep to the visibility timeout so a short one is honoured.
        "unacked_restore_interval": max(1, min(10, int(visibility / 10))),
        "unacked_restore_throttle": 1,
    }


def key_prefix(app: Celery) -> str:
    """The deployment's Redis key prefix (``KERNELMAP_REDIS_KEY_PREFIX``) of ``app``'s queues."""
    return str((app.conf.broker_transport_options or {}).get("global_keyprefix") or "")


def broker_client(app: Celery) -> redis.Redis:
    """A plain redis-py client of ``app``'s broker, for the keys kernelmap keeps beside its
    queues (delivery counts) and for looking into a queue.

    Keys are not prefixed for you: put :func:`key_prefix` in front of every key. (kombu's own
    client prefixes only the commands its transport uses.) Connects lazily.
    """
    from services.broker.redis_server import redis_py_url

    return redis.Redis.from_url(
        redis_py_url(app.conf.broker_url), socket_timeout=10.0, socket_connect_timeout=5.0
    )


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app on ``settings.redis_url`` (default: Redis on localhost)."""
    settings = settings or Settings()
    app = Celery("kernelmap", broker=settings.redis_url or DEFAULT_BROKER, set_as_current=False)
    app.conf.update(
        include=["services.workers.tasks"],
        # JSON only: a pickle from the broker runs code in the worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Results come back as report messages; no result backend to poll or to fill up.
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A pool process that dies mid-job (the candidate took it down) gets the job again a
        # bounded number of times (the task's max_retries), then the job is reported failed.
        task_retry_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=soft_time_limit_s(settings.timeout_s),
        task_time_limit=time_limit_s(settings.timeout_s),
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A worker that lost its broker tries again for as long as it takes (Celery's default
        # gives up after 100 tries, about 45 min, and the worker exits): a GPU host must not
        # need a restart because Redis was down for an hour.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # Keep evaluating the job in hand when the connection breaks: its result is sent when
        # the broker is back. Cancelling it would waste the evaluation and, with a broker that
        # forgot the job, leave it to the controller to send again anyway.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=eval_queue("cuda"),
        task_create_missing_queues=True,
        worker_send_task_events=False,
        # kernelmap's own key: the settings a worker's pool processes evaluate with
        # (services.workers.tasks), handed over explicitly rather than through os.environ.
        kernelmap_settings=settings,
    )
    return app


app = create_app()
"""The app for ``celery -A services.workers.celery_app``, configured from the environment."""

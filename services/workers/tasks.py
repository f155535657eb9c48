"""The Celery tasks of an evaluation worker: thin adapters around :mod:`services.dispatch.job_eval`.

``evaluate(job, reply_to)`` takes a job as JSON (see :func:`job_message`), evaluates it with
this process's :class:`evaluator_worker.judge.Evaluator` (one zygote per worker process, started
on the first job) and sends the result to the controller as a ``kernelmap.report`` message on
the queue ``reply_to``. A job may be evaluated more than once (a worker died, the visibility
timeout passed, the controller sent it again after losing the broker): the controller keeps the
first result per job id.

Poison jobs: a candidate that takes its whole worker down (``kill -9`` of the worker, a machine
that goes down) leaves its job unacknowledged, and Redis delivers it again after the visibility
timeout, without end. Each delivery that starts is counted in Redis under the job id
(:func:`count_delivery`) and the count is dropped once the job's result is sent; a job delivered
again after :data:`MAX_DELIVERIES` starts that never finished is reported failed
(``RUNTIME_ERROR``, quarantined) without being evaluated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery, Task, shared_task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from evaluator_worker.verdict import Verdict
from evolution.ports import Job
from services.dispatch.job_eval import evaluate_job, failure
from services.workers.celery_app import EVALUATE, REPORT, broker_client, key_prefix

log = logging.getLogger(__name__)

MAX_RETRIES = 2
"""Times a job is given again to a pool process after one died evaluating it."""

MAX_DELIVERIES = 3
"""Starts of a job that may end with its worker dead; the next delivery is reported failed."""

DELIVERIES_TTL_S = 86400.0
"""Least lifetime of a delivery count in Redis: far longer than a chain of redeliveries, which
come one visibility timeout apart (the count lives at least that many visibility timeouts)."""

REPORT_RETRY_POLICY = {
    "max_retries": 12,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 5.0,
}
"""How long a result waits for a broker that is away (Redis restarting): about 40 s in all. An
evaluation is worth the wait; past it the result is dropped and the controller sends the job
again."""

_process: dict[str, Any] = {}


def job_message(job: Job, task_source: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of an evaluation job.

    ``config``: :class:`evaluator_worker.config.EvalConfig` fields of the run (its device is
    ignored: a worker evaluates on its own device).
    """
    return {
        "job_id": job.job_id,
        "candidate_id": job.candidate_id,
        "source": job.source,
        "params": job.params,
        "task_source": task_source,
        "task_sha": hashlib.sha256(task_source.encode()).hexdigest(),
        "config": {k: v for k, v in (config or {}).items() if k != "device"},
    }


def _workdir() -> Path:
    if "dir" not in _process:
        _process["dir"] = tempfile.mkdtemp(prefix="kernelmap-celery-")
    return Path(_process["dir"])


def _evaluator(config: dict[str, Any], settings=None):
    """This process's evaluator, rebuilt only when a job asks for another configuration.

    ``settings``: the worker's :class:`services.config.Settings` (default: the environment's).
    """
    from evaluator_worker.config import job_config
    from evaluator_worker.judge import Evaluator
    from services.config import Settings

    # The worker's own device, gate, sandbox and limits: no message may loosen them.
    wanted = job_config((settings or Settings()).eval_config(), config)
    current = _process.get("ev")
    if current is None or current.config != wanted:
        if current is not None:
            current.close()
        _process["ev"] = Evaluator(wanted)
    return _process["ev"]


def _task_file(message: dict[str, Any]) -> Path | None:
    """The task written once per process under its hash; None when the hash does not match."""
    source = message["task_source"]
    sha = hashlib.sha256(source.encode()).hexdigest()
    if sha != message["task_sha"]:
        return None
    path = _workdir() / f"task_{sha[:16]}.py"
    if not path.exists():
        path.write_text(source)
    return path


def delivery_key(app: Celery, job_id: str) -> str:
    """The Redis key counting the deliveries of job ``job_id`` (under the deployment's prefix)."""
    return f"{key_prefix(app)}kernelmap:deliveries:{job_id}"


def _redis(app: Celery):
    client = _process.get("redis")
    if client is None or _process.get("redis_url") != app.conf.broker_url:
        client = _process["redis"] = broker_client(app)
        _process["redis_url"] = app.conf.broker_url
    return client


def count_delivery(app: Celery, job_id: str) -> int:
    """Count one more start of job ``job_id``; returns the starts so far, this one included.

    The count expires after :data:`DELIVERIES_TTL_S` (or more with a long visibility timeout).
    Returns 0 when Redis cannot be reached: the job is evaluated, uncounted, rather than lost.
    """
    visibility = float((app.conf.broker_transport_options or {}).get("visibility_timeout", 0))
    ttl = int(max(DELIVERIES_TTL_S, (MAX_DELIVERIES + 2) * visibility))
    key = delivery_key(app, job_id)
    try:
        pipe = _redis(app).pipeline()
        pipe.incr(key)
        pipe.expire(key, ttl)
        count, _ = pipe.execute()
        return int(count)
    except (RedisError, OSError) as e:
        log.warning("could not count the delivery of job %s (%s): evaluating it anyway", job_id, e)
        return 0


def forget_deliveries(app: Celery, job_id: str) -> None:
    """Drop the delivery count of a job whose result was sent: its worker did not die."""
    try:
        _redis(app).delete(delivery_key(app, job_id))
    except (RedisError, OSError) as e:  # the count expires by itself
        log.warning("could not drop the delivery count of job %s: %s", job_id, e)


def quarantined(starts: int) -> dict[str, Any]:
    """The result of a job whose worker died on each of its ``starts`` starts."""
    return failure(
        Verdict.RUNTIME_ERROR,
        f"evaluated {starts} times, each time its worker died: the candidate is quarantined"
        " (it was not evaluated again; look for what kills the worker, e.g. the host's OOM"
        " killer, in the worker's log)",
    )


def report(task: Task, message: dict[str, Any], reply_to: str, result: dict[str, Any]) -> None:
    """Send ``result`` for the job in ``message`` to the controller's queue ``reply_to``.

    Waits for an absent broker as :data:`REPORT_RETRY_POLICY` says, then raises kombu's
    ``OperationalError``.
    """
    worker = task.request.hostname or f"celery-{os.getpid()}"
    result.setdefault("worker", worker)
    task.app.send_task(
        REPORT,
        kwargs={
            "job_id": message["job_id"],
            "candidate_id": message["candidate_id"],
            "result": result,
            "worker": worker,
        },
        queue=reply_to,
        retry=True,
        retry_policy=REPORT_RETRY_POLICY,
    )


# default_retry_delay=0: a job whose pool process died is retried at once (Celery's default
# would hold it 180 s as an ETA task, counting against the visibility timeout).
@shared_task(name=EVALUATE, bind=True, max_retries=MAX_RETRIES, default_retry_delay=0)
def evaluate(self: Task, message: dict[str, Any], reply_to: str) -> None:
    """Evaluate one job and report its result to ``reply_to``."""
    job = Job(message["job_id"], message["candidate_id"], message["source"], message["params"])
    worker = self.request.hostname or f"celery-{os.getpid()}"
    starts = count_delivery(self.app, job.job_id)
    if starts > MAX_DELIVERIES:
        log.error(
            "job %s (candidate %s) was started %d times and each time its worker died:"
            " quarantined, not evaluated",
            job.job_id,
            job.candidate_id,
            starts - 1,
        )
        _send(self, message, reply_to, quarantined(starts - 1))
        return
    task_path = _task_file(message)
    try:
        if task_path is None:
            result = failure(Verdict.LOAD_ERROR, "the task source does not match its sha256")
        else:
            ev = _evaluator(message.get("config") or {}, self.app.conf.get("kernelmap_settings"))
            result = evaluate_job(ev, task_path, job, _workdir(), worker)
    except SoftTimeLimitExceeded:
        result = failure(Verdict.TIMEOUT, "the evaluation exceeded the worker's time limit")
        _close_evaluator()  # its candidate processes may still run: start afresh
    except Exception as e:  # e.g. an invalid configuration: the controller must hear of it
        log.exception("job %s could not be evaluated", job.job_id)
        result = failure(Verdict.RUNTIME_ERROR, f"worker error: {type(e).__name__}: {e}")
    if _send(self, message, reply_to, result):
        forget_deliveries(self.app, job.job_id)
    log.info(
        "job %s (candidate %s): %s in %.1f s",
        job.job_id,
        job.candidate_id,
        result.get("verdict"),
        result.get("stages_s", {}).get("total_s", 0.0),
    )


def _send(task: Task, message: dict[str, Any], reply_to: str, result: dict[str, Any]) -> bool:
    """:func:`report`, or say that the result is lost when the broker stays away.

    Not raised: a failed task would be reported as a worker error, a wrong verdict for a job
    that was evaluated. The controller sends a job whose result never came again.
    """
    try:
        report(task, message, reply_to, result)
        return True
    except (KombuError, RedisError, OSError) as e:
        log.error(
            "the result of job %s (%s) is lost: the broker stayed unreachable (%s);"
            " the controller will send the job again",
            message["job_id"],
            result.get("verdict"),
            e,
        )
        return False


@shared_task(name=REPORT)
def report_task(job_id: str, candidate_id: int, result: dict[str, Any], worker: str) -> None:
    """A result on a controller queue; the controller reads these messages itself.

    Registered so that a worker consuming a controller queue by mistake fails loudly.
    """
    raise RuntimeError(
        f"{REPORT} messages are read by the controller, not run by a worker (job {job_id})"
    )


@signals.task_failure.connect
def _report_failure(
    sender: Task | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """A job that failed outside :func:`evaluate` (hard time limit, its pool process died
    more than ``MAX_RETRIES`` times) is reported failed, or its run would wait for it forever."""
    if sender is None or sender.name != EVALUATE:
        return
    call = dict(zip(("message", "reply_to"), args or (), strict=False)) | dict(kwargs or {})
    if "message" not in call or "reply_to" not in call:
        return
    if isinstance(exception, TimeLimitExceeded):
        result = failure(Verdict.TIMEOUT, "the evaluation exceeded the worker's hard time limit")
    else:
        result = failure(
            Verdict.RUNTIME_ERROR,
            f"the worker could not evaluate this job: {type(exception).__name__}: {exception}",
        )
    try:
        report(sender, call["message"], call["reply_to"], result)
    except Exception:
        log.exception("could not report the failure of a job to %s", call["reply_to"])
        return
    forget_deliveries(sender.app, call["message"]["job_id"])


def _close_evaluator() -> None:
    ev = _process.pop("ev", None)
    if ev is not None:
        ev.close()


@signals.worker_process_shutdown.connect
def _cleanup(**_: Any) -> None:
    """Stop this process's zygote and remove its files when the pool process exits."""
    _close_evaluator()
    d = _process.pop("dir", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)

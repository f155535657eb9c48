"""The Celery tasks of an evaluation worker: thin adapters around :mod:`services.job_eval`.

``evaluate(job, reply_to)`` takes a job as JSON (see :func:`job_message`), evaluates it with
this process's :class:`evaluator_worker.judge.Evaluator` (one zygote per worker process, started
on the first job) and sends the result to the controller as a ``kernelmap.report`` message on
the queue ``reply_to``. A job may be evaluated more than once (a worker died, the visibility
timeout passed): the controller keeps the first result per job id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import Task, shared_task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from evolution.ports import Job
from services.celery_app import EVALUATE, REPORT
from services.job_eval import evaluate_job, failure

log = logging.getLogger(__name__)

MAX_RETRIES = 2
"""Times a job is given again to a pool process after one died evaluating it."""

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


def _evaluator(config: dict[str, Any]):
    """This process's evaluator, rebuilt only when a job asks for another configuration."""
    from evaluator_worker.judge import Evaluator
    from services.config import Settings

    settings = Settings()
    # The worker's own device, and its static gate always on: no message may switch it off.
    config = {**config, "device": settings.device}
    config.pop("static_gate", None)
    wanted = dataclasses.replace(settings.eval_config(), **config)
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


def report(task: Task, message: dict[str, Any], reply_to: str, result: dict[str, Any]) -> None:
    """Send ``result`` for the job in ``message`` to the controller's queue ``reply_to``."""
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
    )


# default_retry_delay=0: a job whose pool process died is retried at once (Celery's default
# would hold it 180 s as an ETA task, counting against the visibility timeout).
@shared_task(name=EVALUATE, bind=True, max_retries=MAX_RETRIES, default_retry_delay=0)
def evaluate(self: Task, message: dict[str, Any], reply_to: str) -> None:
    """Evaluate one job and report its result to ``reply_to``."""
    job = Job(message["job_id"], message["candidate_id"], message["source"], message["params"])
    worker = self.request.hostname or f"celery-{os.getpid()}"
    task_path = _task_file(message)
    try:
        if task_path is None:
            result = failure("LOAD_ERROR", "the task source does not match its sha256")
        else:
            ev = _evaluator(message.get("config") or {})
            result = evaluate_job(ev, task_path, job, _workdir(), worker)
    except SoftTimeLimitExceeded:
        result = failure("TIMEOUT", "the evaluation exceeded the worker's time limit")
        _close_evaluator()  # its candidate processes may still run: start afresh
    except Exception as e:  # e.g. an invalid configuration: the controller must hear of it
        log.exception("job %s could not be evaluated", job.job_id)
        result = failure("RUNTIME_ERROR", f"worker error: {type(e).__name__}: {e}")
    report(self, message, reply_to, result)
    log.info(
        "job %s (candidate %s): %s in %.1f s",
        job.job_id,
        job.candidate_id,
        result.get("verdict"),
        result.get("stages_s", {}).get("total_s", 0.0),
    )


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
        result = failure("TIMEOUT", "the evaluation exceeded the worker's hard time limit")
    else:
        result = failure(
            "RUNTIME_ERROR",
            f"the worker could not evaluate this job: {type(exception).__name__}: {exception}",
        )
    try:
        report(sender, call["message"], call["reply_to"], result)
    except Exception:
        log.exception("could not report the failure of a job to %s", call["reply_to"])


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

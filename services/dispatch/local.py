"""A local pool of evaluator processes: the embedded mode's :class:`evolution.ports.Dispatcher`.

Each worker process keeps one :class:`evaluator_worker.judge.Evaluator` (and so one zygote) for
its lifetime and evaluates one job at a time. Workers ignore SIGINT: Ctrl-C reaches the
controller, which stops dispatching and closes the pool. If the controller dies, the workers
see their queue close and exit; a resumed run dispatches the lost jobs again.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from evaluator_worker.config import EvalConfig
from evaluator_worker.verdict import Verdict
from evolution.ports import Job, JobResult
from services.dispatch.job_eval import evaluate_job, failure

__all__ = ["LocalPool", "failure"]

log = logging.getLogger(__name__)

_worker: dict[str, Any] = {}


def _terminate(signum: int, frame: object) -> None:
    # Unwind through the evaluation's cleanup so its candidate processes are killed too.
    raise SystemExit(0)


def _init(config: EvalConfig, task_path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    from evaluator_worker.judge import Evaluator

    _worker["ev"] = Evaluator(config)
    _worker["task"] = task_path
    _worker["dir"] = tempfile.mkdtemp(prefix="kernelmap-worker-")


def _evaluate(job: Job) -> dict[str, Any]:
    return evaluate_job(_worker["ev"], _worker["task"], job, _worker["dir"], f"local-{os.getpid()}")


class LocalPool:
    """Evaluates jobs in ``workers`` local processes (spawned, so no CUDA state is inherited)."""

    def __init__(self, config: EvalConfig, task_path: str, workers: int = 1) -> None:
        self._args = (config, str(Path(task_path).resolve()))
        self.workers = workers
        self._pool = self._start()
        self._futures: dict[cf.Future, Job] = {}

    def _start(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=self._args,
        )

    @property
    def capacity(self) -> int:
        """One job per worker process."""
        return self.workers

    def submit(self, job: Job) -> None:
        """Queue ``job`` on the pool."""
        self._futures[self._pool.submit(_evaluate, job)] = job

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Finished jobs, waiting up to ``timeout_s`` for the first."""
        if not self._futures:
            return []
        done, _ = cf.wait(list(self._futures), timeout=timeout_s, return_when=cf.FIRST_COMPLETED)
        out = []
        broken = False
        for fut in done:
            job = self._futures.pop(fut)
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool as e:
                broken = True
                log.error("evaluation worker died while evaluating job %s: %s", job.job_id, e)
                result = failure(
                    Verdict.RUNTIME_ERROR,
                    "the evaluation worker process died during this evaluation",
                )
            out.append(JobResult(job.job_id, job.candidate_id, result))
        if broken:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
        return out

    def close(self) -> None:
        """Stop the workers; jobs in flight are abandoned."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        procs = getattr(self._pool, "_processes", None) or {}
        for p in list(procs.values()):
            if p.is_alive():
                p.terminate()
        self._futures.clear()

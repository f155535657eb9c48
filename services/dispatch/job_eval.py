"""Evaluating one :class:`evolution.ports.Job` with an :class:`evaluator_worker.judge.Evaluator`.

Shared by every dispatcher's worker side (the local pool's processes, the Celery ``evaluate``
task): the job's source is written to a private file, evaluated, and the outcome is always a
result dict shaped like ``EvalResult.to_dict()``, even when the evaluator itself fails.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluator_worker.result import EvalResult
from evaluator_worker.verdict import Verdict
from evolution.ports import Job

if TYPE_CHECKING:  # the evaluator imports torch: only where a job is actually evaluated
    from evaluator_worker.judge import Evaluator


def failure(verdict: Verdict | str, message: str, **extra: Any) -> dict[str, Any]:
    """A result dict for a job that produced no evaluation: :meth:`EvalResult.failure`."""
    return EvalResult.failure(verdict, message, **extra)


def evaluate_job(
    evaluator: Evaluator, task_path: str | Path, job: Job, workdir: str | Path, worker: str
) -> dict[str, Any]:
    """Evaluate ``job`` against the task file at ``task_path``.

    The candidate is written to ``workdir`` for the evaluation and removed afterwards.
    Returns the result dict with ``worker`` set; an invalid task or unreadable candidate is
    ``LOAD_ERROR``, an evaluator bug ``RUNTIME_ERROR`` with its traceback in ``internal_error``.
    """
    from evaluator_worker.errors import SandboxError, TaskError
    from kernelmap_errors import KernelmapError

    path = Path(workdir) / f"candidate_{job.candidate_id}_{job.job_id[:8]}.py"
    path.write_text(job.source)
    t0 = time.monotonic()
    try:
        result = evaluator.evaluate(task_path, path, job.params).to_dict()
    except TaskError as e:
        # The task itself cannot be evaluated here (invalid on the device, too large for
        # its memory): the run stops with this reason instead of failing every candidate.
        result = failure(Verdict.LOAD_ERROR, str(e), task_refused=str(e))
    except SandboxError as e:
        # This worker cannot confine untrusted code (strict mode): no candidate ran, and the
        # run stops with the reason rather than charge every candidate with it.
        result = failure(
            Verdict.LOAD_ERROR, str(e), task_refused=f"the worker refused the job: {e}"
        )
    except KernelmapError as e:
        result = failure(Verdict.LOAD_ERROR, str(e))
    except Exception as e:  # an evaluator bug: reported with context, never silently dropped
        result = failure(Verdict.RUNTIME_ERROR, f"evaluator error: {type(e).__name__}: {e}")
        result["internal_error"] = traceback.format_exc(limit=8)
    finally:
        path.unlink(missing_ok=True)
    result["worker"] = worker
    result.setdefault("stages_s", {}).setdefault("total_s", time.monotonic() - t0)
    return result

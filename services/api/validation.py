"""Validating an uploaded task in a child process, so its code never runs in the API.

The child is ``python -m evaluator_worker.validate_task`` in a temporary directory, with a
wall-clock timeout (its whole process group is killed past it) and, on the CPU, a memory limit.
"""

from __future__ import annotations

import logging
from typing import Any

from services.api.errors import InvalidTask
from services.json_child import run_json_child

log = logging.getLogger(__name__)


def validate_task_source(
    source: str, *, device: str = "cpu", timeout_s: float = 120.0, memory_mb: int | None = None
) -> dict[str, Any]:
    """Validate a task's source in a child process and return its metadata.

    Parameters
    ----------
    source:
        The task file's text.
    device:
        Where the reference runs (``cpu`` on an API host).
    timeout_s:
        Wall-clock bound on the child, torch's import included (about 1 s).
    memory_mb:
        Address-space limit of the child (CPU only; CUDA reserves more than it uses).

    Returns
    -------
    dict
        ``dtype``, ``atol``, ``rtol``, ``allow_tf32``, ``n_shapes``.

    Raises
    ------
    InvalidTask
        The task is invalid, timed out, or made the validator crash.
    """
    args = ["--device", device]
    if memory_mb and device == "cpu":
        args += ["--memory-mb", str(memory_mb)]
    answer = run_json_child(
        "evaluator_worker.validate_task", source, args, device=device, timeout_s=timeout_s
    )
    if answer.timed_out:
        raise InvalidTask(
            f"validating the task took longer than {timeout_s:g} s: make Model and"
            " get_inputs() cheaper (small inputs are enough to validate)"
        )
    verdict = answer.verdict
    if answer.returncode not in (0, 1) or verdict is None:
        tail = " ".join(answer.stderr.strip().splitlines()[-3:])[-400:]
        log.warning("task validator exited with %s: %s", answer.returncode, answer.stderr[-2000:])
        raise InvalidTask(f"validating the task crashed (exit code {answer.returncode}): {tail}")
    if not verdict.get("ok"):
        raise InvalidTask(str(verdict.get("error")), verdict.get("line"))
    return dict(verdict["meta"])

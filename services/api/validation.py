"""Validating an uploaded task in a sandboxed child process, so its code never runs in the API.

The child is ``python -m evaluator_worker.validate_task`` (see
:mod:`services.runs.task_validation`); this module turns its verdicts into the API's errors: an
invalid task is 422 (:class:`InvalidTask`), a server whose sandbox cannot be set up is 503
(:class:`SandboxUnavailable`).
"""

from __future__ import annotations

import logging
from typing import Any

from evaluator_worker.errors import SandboxError, TaskError
from services.api.errors import InvalidTask, SandboxUnavailable
from services.runs.task_validation import DEFAULT_TIMEOUT_S, validate_source

log = logging.getLogger(__name__)


def validate_task_source(
    source: str,
    *,
    device: str = "cpu",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = None,
    sandbox: str = "strict",
) -> dict[str, Any]:
    """Validate a task's source in a sandboxed child process and return its metadata.

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
    sandbox:
        The child's sandbox mode (``strict`` or ``relaxed``; ``Settings.sandbox``).

    Returns
    -------
    dict
        ``dtype``, ``atol``, ``rtol``, ``allow_tf32``, ``n_shapes``, ``input_bytes``,
        ``output_bytes``, ``values_checked``.

    Raises
    ------
    InvalidTask
        The task is invalid, timed out, or made the validator crash.
    SandboxUnavailable
        Strict mode cannot set up the sandbox on this host: no task can be validated safely.
    """
    try:
        return validate_source(
            source, device=device, timeout_s=timeout_s, memory_mb=memory_mb, sandbox=sandbox
        )
    except TaskError as e:
        raise InvalidTask(e.reason, e.line) from None
    except SandboxError as e:
        log.error("cannot validate uploaded tasks: %s", e)
        raise SandboxUnavailable(
            "the server cannot validate tasks safely: its sandbox cannot be set up on this"
            " host. This is not a problem with your task: the server's operator must fix the"
            " host (the server's log says how); try again later"
        ) from None

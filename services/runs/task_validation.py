"""Validating a task's source in a sandboxed child, so its code never runs in this process.

Shared by the API's upload route (:mod:`services.api.validation`) and ``kernelmap run``
(:mod:`services.runs.search`). The child is ``python -m evaluator_worker.validate_task`` with the
source on its stdin (:mod:`services.runs.json_child`): it enters the sandbox before it imports the
task, has a wall-clock timeout (its whole process group is killed past it) and, on the CPU, a
memory limit.
"""

from __future__ import annotations

import logging
from typing import Any

from evaluator_worker.errors import SandboxError, TaskError
from evaluator_worker.task_child import SANDBOX_EXIT
from services.runs.json_child import ChildAnswer, run_json_child

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


def validate_source(
    source: str,
    *,
    device: str = "cpu",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = None,
    sandbox: str = "strict",
    path: str | None = None,
) -> dict[str, Any]:
    """Validate a task's source in a sandboxed child process and return its metadata.

    ``device`` is where the reference runs (``cpu`` off the GPU workers); ``timeout_s`` bounds
    the child, torch's import included; ``memory_mb`` is its address-space limit (CPU only:
    CUDA reserves more than it uses); ``sandbox`` its sandbox mode; ``path`` names the task in
    error messages. Returns the fields of :func:`evaluator_worker.validate_task.task_meta`.

    Raises :class:`TaskError` when the task is invalid, timed out or made the validator crash,
    and :class:`SandboxError` when strict mode cannot set up the sandbox on this host (no code
    of the task ran: it is not the task's fault).
    """
    args = ["--device", device]
    if memory_mb and device == "cpu":
        args += ["--memory-mb", str(memory_mb)]
    answer = run_json_child(
        "evaluator_worker.validate_task",
        source,
        args,
        device=device,
        timeout_s=timeout_s,
        sandbox=sandbox,
    )
    return _meta(answer, timeout_s, path)


def _meta(answer: ChildAnswer, timeout_s: float, path: str | None) -> dict[str, Any]:
    """The task's metadata from the validator's answer, or the error it calls for."""
    if answer.timed_out:
        raise TaskError(
            f"validating the task took longer than {timeout_s:g} s: make Model and"
            " get_inputs() cheaper (small inputs are enough to validate)",
            path,
        )
    verdict = answer.verdict
    if answer.returncode == SANDBOX_EXIT and verdict and verdict.get("sandbox"):
        raise SandboxError(str(verdict.get("error")))
    if answer.returncode not in (0, 1) or verdict is None:
        tail = " ".join(answer.stderr.strip().splitlines()[-3:])[-400:]
        log.warning("task validator exited with %s: %s", answer.returncode, answer.stderr[-2000:])
        raise TaskError(
            f"validating the task crashed (exit code {answer.returncode}): {tail}", path
        )
    if not verdict.get("ok"):
        line = verdict.get("line")
        raise TaskError(
            str(verdict.get("error"))[:2000], path, line if isinstance(line, int) else None
        )
    return checked_meta(verdict.get("meta"), path)


def checked_meta(meta: Any, path: str | None = None) -> dict[str, Any]:
    """The validator's metadata, checked field by field (the task ran in that process).

    A task can only misdescribe itself; workers validate it again in their own sandbox
    before they evaluate anything. Raises :class:`TaskError` for a malformed answer.
    """
    from evaluator_worker.protocol import DTYPES
    from evaluator_worker.task import MAX_SHAPES

    def size(v: Any) -> bool:
        return v is None or (type(v) is int and 0 <= v < 1 << 50)

    ok = (
        isinstance(meta, dict)
        and str(meta.get("dtype", "")).removeprefix("torch.") in DTYPES
        and all(type(meta.get(k)) in (int, float) and 0 <= meta[k] < 1 for k in ("atol", "rtol"))
        and type(meta.get("allow_tf32")) is bool
        and type(meta.get("n_shapes")) is int
        and 0 <= meta["n_shapes"] <= MAX_SHAPES
        and size(meta.get("input_bytes"))
        and size(meta.get("output_bytes"))
        and type(meta.get("values_checked")) is bool
    )
    if not ok:
        raise TaskError("the task validator sent malformed metadata", path)
    keys = ("dtype", "atol", "rtol", "allow_tf32", "n_shapes", "input_bytes", "output_bytes")
    return {k: meta[k] for k in (*keys, "values_checked")}

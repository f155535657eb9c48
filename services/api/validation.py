"""Validating an uploaded task in a child process, so its code never runs in the API.

The child is ``python -m evaluator_worker.validate_task`` in a temporary directory, with a
wall-clock timeout (its whole process group is killed past it) and, on the CPU, a memory limit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from services.api.errors import InvalidTask

log = logging.getLogger(__name__)

#: The project root, put on the child's PYTHONPATH (it may run from a source checkout).
_ROOT = Path(__file__).resolve().parents[2]


def _env(device: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the API host's GPU, if any, is not the task's
    return env


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
    with tempfile.TemporaryDirectory(prefix="kernelmap-task-") as tmp:
        path = Path(tmp) / "task.py"
        path.write_text(source, encoding="utf-8")
        cmd = [sys.executable, "-m", "evaluator_worker.validate_task", str(path)]
        cmd += ["--device", device]
        if memory_mb and device == "cpu":
            cmd += ["--memory-mb", str(memory_mb)]
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env=_env(device),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killed whole on timeout
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise InvalidTask(
                f"validating the task took longer than {timeout_s:g} s: make Model and"
                " get_inputs() cheaper (small inputs are enough to validate)"
            ) from None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        verdict = None
    if proc.returncode not in (0, 1) or not isinstance(verdict, dict):
        tail = " ".join(err.strip().splitlines()[-3:])[-400:]
        log.warning("task validator exited with %s: %s", proc.returncode, err[-2000:])
        raise InvalidTask(f"validating the task crashed (exit code {proc.returncode}): {tail}")
    if not verdict.get("ok"):
        raise InvalidTask(str(verdict.get("error")), verdict.get("line"))
    return dict(verdict["meta"])

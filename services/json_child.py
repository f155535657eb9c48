"""Running a submitted task's code in a child process that answers with one JSON line.

Used wherever the service must run a task it did not write (validating an upload, matching it
against the template library): the child runs ``python -m MODULE task.py ARGS`` in a temporary
directory, in its own process group (killed whole past the timeout), with no GPU unless the
work needs one, and prints its verdict as the last line of stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The project root, put on the child's PYTHONPATH (it may run from a source checkout).
_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ChildAnswer:
    """What the child said: its exit code, its JSON verdict (None if it printed none), stderr."""

    returncode: int | None
    verdict: dict[str, Any] | None
    stderr: str
    timed_out: bool = False


def child_env(device: str) -> dict[str, str]:
    """The child's environment: the project importable; no GPU for CPU work."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the host's GPU, if any, is not the task's
    return env


def run_json_child(
    module: str, source: str, args: list[str], *, device: str, timeout_s: float
) -> ChildAnswer:
    """Run ``python -m module <task file> *args`` on ``source`` and read its JSON verdict."""
    with tempfile.TemporaryDirectory(prefix="kernelmap-task-") as tmp:
        path = Path(tmp) / "task.py"
        path.write_text(source, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(path), *args],
            cwd=tmp,
            env=child_env(device),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            return ChildAnswer(None, None, err, timed_out=True)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        verdict = None
    return ChildAnswer(proc.returncode, verdict if isinstance(verdict, dict) else None, err)

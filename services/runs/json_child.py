"""Running a submitted task's code in a sandboxed child process that answers with one JSON line.

Used wherever the service must run a task it did not write (validating an upload or the task
of ``kernelmap run``, matching it against the template library): the child runs
``python -m MODULE - --sandbox MODE --scratch DIR ARGS`` with the task's source on its stdin
(the source is never written to the host's disk), in its own session (killed whole past the
timeout), with an allow-listed environment (no ``KERNELMAP_*`` secrets), no GPU unless the
work needs one, and dies with this process. The child confines itself before it imports the
task (:mod:`evaluator_worker.task_child`) and prints its verdict as the last line of stdout.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from evaluator_worker import sandbox as sandbox_mod
from evaluator_worker.task_child import die_with

#: The directory holding the evaluator package, put on the child's PYTHONPATH (it may run from
#: a source checkout). Derived from the package, not from this file's depth in the tree: the
#: sandbox shows the child only the package itself from this directory.
_ROOT = Path(sandbox_mod.__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ChildAnswer:
    """What the child said: its exit code, its JSON verdict (None if it printed none), stderr."""

    returncode: int | None
    verdict: dict[str, Any] | None
    stderr: str
    timed_out: bool = False


def child_env(device: str) -> dict[str, str]:
    """The child's environment: the sandbox's allow-list, the project importable, no GPU for
    CPU work."""
    env = sandbox_mod.environment(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the host's GPU, if any, is not the task's
    return env


def run_json_child(
    module: str,
    source: str,
    args: list[str],
    *,
    device: str,
    timeout_s: float,
    sandbox: str = "strict",
) -> ChildAnswer:
    """Run ``python -m module - *args`` with ``source`` on stdin and read its JSON verdict.

    ``sandbox`` is the child's sandbox mode (``strict`` or ``relaxed``, see
    :mod:`evaluator_worker.sandbox`).
    """
    # The sandbox's mount point and fallback directory: removed here, whatever the child did.
    with tempfile.TemporaryDirectory(prefix="kernelmap-job-", ignore_cleanup_errors=True) as tmp:
        os.chmod(tmp, 0o711)  # the child's unprivileged user may need to pass through it
        cmd = [sys.executable, "-m", module, "-", "--sandbox", sandbox, "--scratch", tmp, *args]
        # Output goes to files, of which only the tails are read: a task that prints
        # gigabytes costs this process nothing (the child's RLIMIT_FSIZE bounds the files).
        with tempfile.TemporaryFile(dir=tmp) as out_f, tempfile.TemporaryFile(dir=tmp) as err_f:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=child_env(device),
                stdin=subprocess.PIPE,
                stdout=out_f,
                stderr=err_f,
                start_new_session=True,
                # SIGKILL when we go. PR_SET_PDEATHSIG follows the *thread* that forked the
                # child, not the process: this thread waits in communicate() until the child
                # is gone, so the signal fires only when this whole process dies.
                preexec_fn=functools.partial(die_with, os.getpid()),
            )
            timed_out = False
            try:
                proc.communicate(source.encode("utf-8"), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                timed_out = True
            out, err = _tail(out_f, OUT_TAIL), _tail(err_f, ERR_TAIL)
    if timed_out:
        return ChildAnswer(None, None, err, timed_out=True)
    return ChildAnswer(proc.returncode, _last_json(out), err)


#: Bytes read back from the end of the child's stdout (the verdict line) and stderr.
OUT_TAIL = 1 << 20
ERR_TAIL = 1 << 14


def _tail(f: Any, n: int) -> str:
    """The last ``n`` bytes of an output file, as text."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode("utf-8", errors="replace")


def _last_json(out: str) -> dict[str, Any] | None:
    """The JSON object on the last non-empty line of ``out``, if there is one."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        verdict = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return None
    return verdict if isinstance(verdict, dict) else None

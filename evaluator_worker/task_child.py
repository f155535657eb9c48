"""The shared start of the child processes that run a submitted task's code for the service.

Task validation (:mod:`evaluator_worker.validate_task`) and template matching
(:mod:`evolution.templates.probe`) both run a task the service did not write, and answer
with one JSON line. This module does what they share, in this order:

1. keep stdout for the verdict alone (whatever the task prints goes to stderr);
2. read the task's source, from stdin when the path is ``-`` (as :mod:`services.runs.json_child`
   sends it: the task is never copied onto the host's disk) or from a file (direct use);
3. import the trusted modules the work needs (the sandbox may hide where they come from);
4. enter the sandbox (:func:`evaluator_worker.sandbox.confine`): new namespaces, a private
   root, an unprivileged user, an allow-listed environment, seccomp;
5. write the source into the sandbox's private directory and only then run the work on it.

A sandbox that strict mode cannot set up is answered ``{"ok": false, "error": "...",
"sandbox": true}`` with exit code :data:`SANDBOX_EXIT`, so the caller can tell "this server
cannot run tasks safely" from "this task is invalid" (exit code 1).

The host directories the sandbox needs (its mount point, its fallback directory) are made
under ``--scratch DIR``, which the caller removes. Without ``--scratch`` (direct use from a
shell) this process makes its own, continues in a child that leads a session of its own, and
removes the directory once the child is done.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from evaluator_worker import fsview, sandbox

#: Exit code of a child that refused to run the task because the sandbox is unavailable.
SANDBOX_EXIT = 3
_PR_SET_PDEATHSIG = 1
# Resolved once, at import: a forked child of a threaded process must not dlopen.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` goes (and at once if it already went).

    The signal follows the parent *thread* that forked this process: the caller keeps that
    thread alive (waiting on this process) for as long as this process should live.
    """
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every task child takes: the task, the sandbox mode, the scratch dir."""
    parser.add_argument("path", help="the task file, or - to read its source from stdin")
    parser.add_argument(
        "--sandbox", choices=sandbox.MODES, default="strict", help="sandbox mode (strict)"
    )
    parser.add_argument(
        "--scratch",
        default=None,
        help="host directory for the sandbox's own directories, removed by the caller",
    )
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit (MiB)")


def read_source(path: str) -> str:
    """The task's source: stdin for ``-``, else the file at ``path``. Raises OSError/ValueError."""
    if path == "-":
        return sys.stdin.buffer.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


def run(
    args: argparse.Namespace,
    work: Callable[[str], dict[str, Any]],
    *,
    device: str = "cpu",
    prepare: Callable[[], None] | None = None,
    read_only: Iterable[str] = (),
) -> int:
    """Confine this process and return the exit code of ``work(task_path)``'s verdict.

    ``prepare`` imports what ``work`` needs before the sandbox hides the host; ``read_only``
    names more host paths the sandbox shows (this project's packages that ``work`` imports
    later). The verdict is printed as one JSON line on the original stdout.
    """
    out = _keep_stdout()
    try:
        source = read_source(args.path)
    except (OSError, ValueError) as e:
        return _answer(out, {"ok": False, "error": f"cannot read the task file: {e}", "line": None})
    _no_stdin()
    scratch = args.scratch or _own_scratch()
    if prepare is not None:
        prepare()
    opts = {
        "rootdir": tempfile.mkdtemp(prefix="kernelmap-root-", dir=scratch),
        "workdir": tempfile.mkdtemp(prefix="kernelmap-work-", dir=scratch),
        "mode": args.sandbox,
        "device": device,
        "memory_limit_mb": args.memory_mb,
        "extra_read_only": [str(p) for p in read_only],
    }
    try:
        applied = sandbox.confine(opts)
    except sandbox.SandboxUnavailable as e:
        _tidy(opts)
        return _answer(out, {"ok": False, "error": str(e), "sandbox": True})
    private = Path(fsview.WORK if applied.get("file_system") else opts["workdir"])
    try:
        task_path = private / "task.py"
        task_path.write_text(source, encoding="utf-8")
        verdict = work(str(task_path))
    finally:
        if not applied.get("file_system"):  # the host's tree is still in view: tidy it
            _tidy(opts)
    return _answer(out, verdict)


def _keep_stdout() -> IO[str]:
    """A copy of stdout for the verdict; fd 1 itself then points at stderr (the task may
    print, even from C code)."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    return out


def _no_stdin() -> None:
    """Give the task an empty stdin (never the caller's pipe or terminal)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _answer(out: IO[str], verdict: dict[str, Any]) -> int:
    sys.stdout.flush()
    out.write(json.dumps(verdict) + "\n")
    out.flush()
    if verdict.get("sandbox"):
        return SANDBOX_EXIT
    return 0 if verdict.get("ok") else 1


def _tidy(opts: dict[str, Any]) -> None:
    """Remove the sandbox's host directories where this process can (never following links)."""
    shutil.rmtree(opts["workdir"], ignore_errors=True)
    try:
        os.rmdir(opts["rootdir"])  # only ever an empty mount point
    except OSError:
        pass


def _own_scratch() -> str:
    """Direct use: a scratch directory that this process removes after a child used it.

    The child leads a session of its own (the task gets no controlling terminal) and dies
    with this process; this process only waits, removes the directory and exits with the
    child's status. Ctrl-C kills the child.
    """
    scratch = tempfile.mkdtemp(prefix="kernelmap-job-")
    os.chmod(scratch, 0o711)  # the sandbox's unprivileged user may need to pass through it
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with(parent)
        os.setsid()
        return scratch
    try:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except KeyboardInterrupt:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        code = 130
    shutil.rmtree(scratch, ignore_errors=True)
    os._exit(code if code >= 0 else 128 - code)

"""Validate a task file in a process of its own and print the verdict as one JSON object.

``python -m evaluator_worker.validate_task PATH [--device cpu] [--memory-mb N]`` prints
``{"ok": true, "meta": {...}}`` and exits 0, or ``{"ok": false, "error": "...", "line": N}``
and exits 1 (``line`` is null when the problem has no line). The API runs this as a
subprocess with a timeout, so a submitted task's code never runs in the API process.

Anything the task itself prints goes to stderr: stdout carries only the JSON line. A task
whose input set exceeds ``evaluator_worker.task.VALUE_CHECK_BYTES`` has its structure checked
on the ``meta`` device only (``values_checked: false``); workers check its values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any


def task_meta(task: Any) -> dict[str, Any]:
    """The settings of a loaded :class:`evaluator_worker.task.Task`, as stored with it."""
    return {
        "dtype": str(task.dtype),
        "atol": task.tolerance.atol,
        "rtol": task.tolerance.rtol,
        "allow_tf32": task.allow_tf32,
        "n_shapes": task.n_shapes,
        "input_bytes": task.input_bytes,
        "output_bytes": task.output_bytes,
        "values_checked": task.values_checked,
    }


def validate(path: str, device: str = "cpu") -> dict[str, Any]:
    """Load and validate the task at ``path``; the JSON verdict this module prints."""
    # Imported here: torch is slow to import, and the module docstring should load without it.
    from evaluator_worker.errors import TaskError
    from evaluator_worker.task import load_task

    try:
        # Large inputs are checked on the meta device here; the GPU worker checks the values.
        task = load_task(path, device, check_values="auto")
    except TaskError as e:
        return {"ok": False, "error": e.reason, "line": e.line}
    return {"ok": True, "meta": task_meta(task)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 for a valid task, 1 for an invalid one."""
    parser = argparse.ArgumentParser(prog="python -m evaluator_worker.validate_task")
    parser.add_argument("path", help="the task file")
    parser.add_argument("--device", default="cpu", help="where to run the reference (cpu)")
    parser.add_argument(
        "--memory-mb", type=int, default=None, help="address-space limit of this process (MiB)"
    )
    args = parser.parse_args(argv)
    if args.memory_mb:
        limit = args.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The task may print (even from C code); keep stdout for the verdict alone.
    out = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    verdict = validate(args.path, args.device)
    sys.stdout.flush()
    out.write(json.dumps(verdict) + "\n")
    out.flush()
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

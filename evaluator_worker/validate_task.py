"""Validate a task file in a sandboxed process of its own and print the verdict as one JSON object.

``python -m evaluator_worker.validate_task PATH|- [--device cpu] [--memory-mb N]
[--sandbox strict|relaxed] [--scratch DIR]`` prints ``{"ok": true, "meta": {...}}`` and exits
0, or ``{"ok": false, "error": "...", "line": N}`` and exits 1 (``line`` is null when the
problem has no line), or, when strict mode cannot set up the sandbox, ``{"ok": false,
"error": "...", "sandbox": true}`` and exits 3. With ``-`` the source is read from stdin. The
API and ``kernelmap run`` run this as a subprocess with a timeout
(:mod:`services.runs.task_validation`), so a submitted task's code never runs in their process;
here it runs only inside the sandbox (:mod:`evaluator_worker.task_child`).

Anything the task itself prints goes to stderr: stdout carries only the JSON line. A task
whose input set exceeds ``evaluator_worker.task.VALUE_CHECK_BYTES`` has its structure checked
on the ``meta`` device only (``values_checked: false``); workers check its values.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from evaluator_worker import task_child


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


def _prepare() -> None:
    """Import the loader (and torch) while the host's Python installation is in view."""
    import evaluator_worker.task  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 for a valid task, 1 for an invalid one, 3 when the sandbox is missing."""
    parser = argparse.ArgumentParser(prog="python -m evaluator_worker.validate_task")
    task_child.add_arguments(parser)
    parser.add_argument("--device", default="cpu", help="where to run the reference (cpu)")
    args = parser.parse_args(argv)
    return task_child.run(
        args, lambda path: validate(path, args.device), device=args.device, prepare=_prepare
    )


if __name__ == "__main__":
    sys.exit(main())

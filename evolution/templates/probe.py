"""Match a task against the template library in a sandboxed process; print one JSON object.

``python -m evolution.templates.probe PATH|- [--device cuda] [--memory-mb N]
[--sandbox strict|relaxed] [--scratch DIR]`` prints ``{"ok": true, "templates": [{"label",
"source"}...], "declined": [...]}`` and exits 0, or ``{"ok": false, "error": "..."}`` and
exits 1, or ``{"ok": false, "error": "...", "sandbox": true}`` and exits 3 when strict mode
cannot set up the sandbox. With ``-`` the source is read from stdin. Matching imports the
task and traces its ``Model`` (on the meta device: no input is allocated), so it runs the
task's own code: the controller and ``kernelmap run`` run this as a subprocess
(:mod:`services.runs.template_probe`) and never import a submitted task themselves; here the task
runs only inside the sandbox (:mod:`evaluator_worker.task_child`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from evaluator_worker import task_child


def probe(path: str, device: str) -> dict[str, Any]:
    """The template candidates for the task at ``path`` on ``device`` (``cpu`` or ``cuda``)."""
    from evaluator_worker.modules import describe, import_file
    from evolution.templates import analyse, instantiate_all

    try:
        module = import_file(path, "kernelmap_probe_task")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        found, declined = instantiate_all(analyse(module, source), device)
    except Exception as e:  # the task's own code failed: no template applies, said plainly
        return {"ok": False, "error": f"matching templates failed: {describe(e)}"}
    return {
        "ok": True,
        "templates": [{"label": c.label, "source": c.source} for c in found],
        "declined": [str(d) for d in declined],
    }


def _prepare() -> None:
    """Import the matcher (and torch) while the host's Python installation is in view."""
    import evaluator_worker.modules  # noqa: F401
    import evolution.templates  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when matching ran (whatever it found), 1 when the task could not be
    read, 3 when the sandbox is missing."""
    parser = argparse.ArgumentParser(prog="python -m evolution.templates.probe")
    task_child.add_arguments(parser)
    parser.add_argument("--device", default="cuda", help="device class the kernels target")
    args = parser.parse_args(argv)
    # The template library imports its parts lazily: the sandbox shows this package too.
    package = Path(__file__).resolve().parents[1]
    return task_child.run(
        args, lambda path: probe(path, args.device), prepare=_prepare, read_only=[str(package)]
    )


if __name__ == "__main__":
    sys.exit(main())

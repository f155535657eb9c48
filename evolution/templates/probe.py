"""Match a task against the template library in a process of its own; print one JSON object.

``python -m evolution.templates.probe PATH [--device cuda] [--memory-mb N]`` prints
``{"ok": true, "templates": [{"label", "source"}...], "declined": [...]}`` and exits 0, or
``{"ok": false, "error": "..."}`` and exits 1. Matching imports the task and traces its
``Model`` (on the meta device: no input is allocated), so it runs the task's own code: the
controller runs this as a sandboxed subprocess (:mod:`services.template_probe`) and never
imports a submitted task itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from typing import Any


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when matching ran (whatever it found), 1 when the task could not be read."""
    parser = argparse.ArgumentParser(prog="python -m evolution.templates.probe")
    parser.add_argument("path", help="the task file")
    parser.add_argument("--device", default="cuda", help="device class the kernels target")
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit (MiB)")
    args = parser.parse_args(argv)
    if args.memory_mb:
        limit = args.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(os.dup(1), "w")  # stdout carries only the verdict; the task may print
    sys.stdout.flush()
    os.dup2(2, 1)
    verdict = probe(args.path, args.device)
    sys.stdout.flush()
    out.write(json.dumps(verdict) + "\n")
    out.flush()
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""``kernelmap eval`` (one candidate against a task) and ``kernelmap demo`` (a short search on
the shipped softmax example).

Exit codes: 0 when an evaluation completed (whatever the verdict), 2 with one line on stderr
for usage errors, invalid task files and unreadable candidates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kernelmap_errors import KernelmapError
from services.cli.errors import UsageError
from services.cli.options import settings_from
from services.config import Settings

#: The shipped examples (a checkout's ``examples/``).
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    """``kernelmap eval TASK CANDIDATE``: evaluate one candidate, print its result."""
    from evaluator_worker.judge import Evaluator
    from services.cli.report import render

    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout:g}")
    config = Settings().eval_config(device=args.device, timeout_s=args.timeout)
    with Evaluator(config) as ev:
        if not args.json:
            _progress(f"evaluating {args.candidate} against {args.task} on {ev.device.type} ...")
        result = ev.evaluate(args.task, args.candidate, dict(args.param))
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(render(result, f"{args.candidate} against {args.task}"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``kernelmap demo``: a short search on the shipped softmax example."""
    from services.cli.report import ProgressLine
    from services.cli.runs import print_finished_run
    from services.runs.search import RunOptions, run_search

    if not EXAMPLES.is_dir():
        raise KernelmapError(f"the shipped examples are not at {EXAMPLES}: run from a checkout")
    settings = settings_from(args)
    task = EXAMPLES / "softmax" / "task.py"
    seed = EXAMPLES / "softmax" / "triton_softmax_looped.py"
    budget = args.budget or 12
    print(
        f"kernelmap demo: searching the schedule of {seed.name} for {task.parent.name}/"
        f"{task.name} ({budget} evaluations)",
        file=sys.stderr,
    )
    opts = RunOptions(
        task=task,
        seeds=[seed],
        budget=budget,
        device=args.device,
        workers=min(2, os.cpu_count() or 1),
    )
    progress = ProgressLine()
    try:
        summary = run_search(settings, opts, on_progress=progress)
    finally:
        progress.done()
    return print_finished_run(
        settings, None, summary["run_id"], False, summary.get("stopped_reason")
    )

"""The ``kernelmap`` command line.

``kernelmap eval TASK CANDIDATE`` evaluates one candidate; ``kernelmap demo`` evaluates the
shipped example candidates. Exit codes: 0 when an evaluation completed (whatever the verdict),
2 with one line on stderr for usage errors, invalid task files and unreadable candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from evaluator_worker.errors import KernelmapError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO = [
    ("softmax/task.py", c)
    for c in ("softmax/triton_softmax.py", "softmax/torch_softmax.py", "softmax/wrong_softmax.py")
]


class UsageError(KernelmapError):
    """The command line itself is wrong."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see kernelmap {self.prog.split()[-1]} --help)")


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = _Parser(prog="kernelmap", description="Search for fast GPU kernels; evaluate candidates.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("eval", help="evaluate one candidate kernel against a task")
    e.add_argument(
        "task", help="task file (KernelBench format: Model, get_inputs, get_init_inputs)"
    )
    e.add_argument("candidate", help="candidate file defining ModelNew")
    e.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to run (default: auto = CUDA if a GPU is visible)",
    )
    e.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="bound on each stage of the candidate (default 60)",
    )
    e.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SEARCH_SPACE choice to inject (default: the first of each list)",
    )
    e.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    d = sub.add_parser("demo", help="evaluate the shipped example candidates")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    return p


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluator_worker.judge import Evaluator
    from services.config import Settings
    from services.report import render

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
    from evaluator_worker.judge import Evaluator
    from services.config import Settings
    from services.report import render

    if not EXAMPLES.is_dir():
        raise KernelmapError(
            f"the shipped examples are not at {EXAMPLES}: run from a source checkout"
        )
    config = Settings().eval_config(device=args.device)
    with Evaluator(config) as ev:
        _progress(
            f"kernelmap demo: {len(DEMO)} candidates for the softmax example on {ev.device.type}"
        )
        for i, (task, cand) in enumerate(DEMO, 1):
            _progress(f"[{i}/{len(DEMO)}] evaluating {cand} ...")
            result = ev.evaluate(EXAMPLES / task, EXAMPLES / cand)
            print(render(result, f"== examples/{cand} against examples/{task}"), flush=True)
            print(flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kernelmap`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return {"eval": cmd_eval, "demo": cmd_demo}[args.command](args)
    except KernelmapError as e:
        print(f"kernelmap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kernelmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

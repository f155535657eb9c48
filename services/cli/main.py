"""The ``kernelmap`` command line: the argument parser and the dispatch to each command.

The commands live in one module per group (see :mod:`services.cli`). Every command turns a
:class:`kernelmap_errors.KernelmapError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from evaluator_worker.verdict import Verdict
from evolution.emitters import VARIATIONS
from kernelmap_errors import KernelmapError
from services.cli.errors import UsageError
from services.cli.options import add_data_dir, add_llm_flags


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
    d = sub.add_parser("demo", help="a short search on the shipped softmax example")
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    d.add_argument("--budget", type=int, default=None, help="evaluations (default 12)")
    add_data_dir(d)

    r = sub.add_parser("run", help="search for fast kernels for a task (MAP-Elites)")
    r.add_argument("task", nargs="?", help="task file (not needed with --resume)")
    r.add_argument(
        "--seed-candidate",
        action="append",
        default=[],
        metavar="FILE",
        help="a starting candidate (repeatable); SEARCH_SPACE seeds are searched",
    )
    r.add_argument("--budget", type=int, default=30, help="evaluations to spend (default 30)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    r.add_argument("--workers", type=int, default=None, help="local evaluation processes")
    r.add_argument(
        "--dims",
        default=None,
        metavar="NAME[:BINS],...",
        help="1-3 descriptor dimensions (default per device)",
    )
    r.add_argument(
        "--db", default=None, metavar="URL", help="database URL (default: SQLite in --data-dir)"
    )
    add_data_dir(r)
    r.add_argument(
        "--resume", type=int, default=None, metavar="RUN_ID", help="continue an interrupted run"
    )
    r.add_argument(
        "--archive",
        choices=["grid", "cvt"],
        default="grid",
        help="grid over the descriptor bins (default), or CVT with --cells centroids",
    )
    r.add_argument("--cells", type=int, default=None, help="CVT cells (with --archive cvt)")
    r.add_argument(
        "--variation",
        choices=list(VARIATIONS),
        default="gaussian",
        help="how parameter emitters mutate: steady-state gaussian or iso-line"
        " (default gaussian), or CMA-ME generations with a barrier",
    )
    r.add_argument(
        "--no-templates",
        dest="templates",
        action="store_false",
        help="do not seed the run from the template library",
    )
    r.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="evaluate on the Celery fleet behind this Redis broker (or KERNELMAP_REDIS_URL);"
        " start workers with `kernelmap worker`",
    )
    add_llm_flags(r)
    r.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")

    w = sub.add_parser("worker", help="evaluate jobs from the Celery queue (one per GPU)")
    w.add_argument(
        "--queue",
        default=None,
        metavar="CLASS",
        help="hardware class: consumes eval.CLASS (default: cuda with a GPU, else cpu)",
    )
    w.add_argument(
        "--device", default=None, metavar="N", help="GPU index (sets CUDA_VISIBLE_DEVICES)"
    )
    w.add_argument(
        "--concurrency", type=int, default=1, help="evaluations at once (default 1 per GPU)"
    )
    w.add_argument("--redis", default=None, metavar="URL", help="broker (or KERNELMAP_REDIS_URL)")
    w.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    w.add_argument(
        "--join",
        default=None,
        metavar="URL",
        help="a remote worker: join the kernelmap server at URL over HTTPS and pull jobs"
        " (needs an enrolment token: --token-file, KERNELMAP_WORKER_TOKEN or --token)",
    )
    token = w.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="a file holding the enrolment token (a worker-role key); keep it mode 0600",
    )
    token.add_argument(
        "--token",
        default=None,
        metavar="KEY",
        help="the enrolment token itself (visible to every user in `ps`: prefer --token-file"
        " or KERNELMAP_WORKER_TOKEN)",
    )
    w.add_argument(
        "--name", default=None, help="the remote worker's name (default: this host's name)"
    )
    w.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow --join over plain http:// to a non-loopback host (the token travels in"
        " clear: only on a network you trust)",
    )
    add_data_dir(
        w,
        "with --join: where the worker keeps its token and results not yet delivered"
        " (default: KERNELMAP_DATA_DIR, else ~/.kernelmap)",
    )

    sv = sub.add_parser(
        "serve", help="the service: REST API + controller (+ embedded broker and local worker)"
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (8000)")
    add_data_dir(sv)
    sv.add_argument(
        "--local-worker",
        action="store_true",
        help="with an external Redis, also start an evaluation worker here (embedded mode"
        " always does)",
    )
    sv.add_argument("--no-controller", action="store_true", help="API only (cluster replicas)")

    ct = sub.add_parser("controller", help="the cluster's controller: searches the API's runs")
    add_data_dir(ct)
    ct.add_argument(
        "--id",
        default=None,
        metavar="NAME",
        help="this controller's name among those sharing the database (default:"
        " KERNELMAP_CONTROLLER_ID, else <host>:<pid>); GET /api/v1/controllers lists them",
    )

    ls = sub.add_parser("runs", help="list runs")
    ls.add_argument("--db", default=None, metavar="URL")
    add_data_dir(ls)
    ls.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="print a run's archive (its elites) as a table")
    sh.add_argument("run_id", type=int)
    sh.add_argument("--db", default=None, metavar="URL")
    add_data_dir(sh)
    sh.add_argument("--json", action="store_true")

    cd = sub.add_parser("candidates", help="list a run's candidates (every one it proposed, by id)")
    cd.add_argument("run_id", type=int)
    cd.add_argument(
        "--verdict",
        choices=[v.value for v in Verdict],
        default=None,
        metavar="VERDICT",
        help="only candidates whose newest evaluation has this verdict (OK, INCORRECT,"
        " TIMEOUT, ...)",
    )
    cd.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N candidates (default 100)"
    )
    cd.add_argument("--db", default=None, metavar="URL")
    add_data_dir(cd)
    cd.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="write a standalone candidate file from a run")
    ex.add_argument("run_id", type=int)
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the run's best elite")
    which.add_argument(
        "--candidate",
        type=int,
        metavar="ID",
        help="a candidate of the run (`kernelmap candidates RUN_ID` lists them)",
    )
    ex.add_argument("-o", "--output", required=True, metavar="FILE")
    ex.add_argument("--db", default=None, metavar="URL")
    add_data_dir(ex)

    kp = sub.add_parser("keys", help="API keys")
    kp.add_argument("action", choices=["create"], help="create a key (printed once, on stdout)")
    kp.add_argument("--role", choices=["admin", "user", "worker"], required=True)
    kp.add_argument("--name", default=None, help="who or what the key is for")
    kp.add_argument("--db", default=None, metavar="URL")
    add_data_dir(kp)

    dbp = sub.add_parser("db", help="database maintenance")
    dbp.add_argument("action", choices=["upgrade"], help="apply migrations")
    dbp.add_argument("--db", default=None, metavar="URL")
    add_data_dir(dbp)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kernelmap`` console script."""
    try:
        args = build_parser().parse_args(argv)
        from services.cli import admin, runs, serve
        from services.cli import eval as evaluation

        handlers = {
            "eval": evaluation.cmd_eval,
            "demo": evaluation.cmd_demo,
            "run": runs.cmd_run,
            "runs": runs.cmd_runs,
            "show": runs.cmd_show,
            "candidates": runs.cmd_candidates,
            "export": runs.cmd_export,
            "db": admin.cmd_db,
            "keys": admin.cmd_keys,
            "worker": serve.cmd_worker,
            "serve": serve.cmd_serve,
            "controller": serve.cmd_controller,
        }
        return handlers[args.command](args)
    except KernelmapError as e:
        print(f"kernelmap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kernelmap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

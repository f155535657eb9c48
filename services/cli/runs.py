"""The search commands of the CLI: ``run``, ``runs``, ``show``, ``export``, ``db``, ``demo``,
``worker``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kernelmap_errors import KernelmapError
from services.config import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


STOP_REASONS = {
    "budget": "the budget is spent",
    "stopped": "stopped by the user",
    "exhausted": "every emitter has proposed its whole search space",
    "stalled": "no emitter proposed anything new for a while",
    "task_refused": "a worker refused the task; see the error below",
}


def _finish(
    settings: Settings,
    db_url: str | None,
    run_id: int,
    as_json: bool,
    stopped_reason: str | None = None,
) -> int:
    from services.runs.search import open_database
    from services.runs.views import archive_table, format_table, run_summary, write_report

    engine, sessions = open_database(settings, db_url)
    try:
        with sessions() as s:
            summary = run_summary(s, run_id)
            report = write_report(s, run_id, settings.data_dir / "reports" / f"run_{run_id}.html")
            elites = archive_table(s, run_id)
    finally:
        engine.dispose()
    summary["report"] = str(report)
    summary["stopped_reason"] = stopped_reason
    if as_json:
        print(json.dumps(summary))
        return 0
    best = summary["best"]
    label = summary["objective_label"]
    why = STOP_REASONS.get(stopped_reason or "", stopped_reason)
    print(
        f"run {run_id} ({summary['task']}, {summary['device']}): {summary['status']}"
        + (f" ({why})" if why else "")
    )
    print(
        f"  evaluations {summary['evaluations']}/{summary['budget']}   elites {summary['elites']}"
        f"   coverage {100 * summary['coverage']:.1f}%   QD-score {summary['qd_score']:.4g}"
    )
    print("  verdicts    " + ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items())))
    if summary.get("error"):
        print(f"  error       {summary['error']}")
    if best:
        print(f"  best        candidate {best['candidate_id']}: {best['ratio']:.4g}x ({label})")
    else:
        print("  best        none (no correct candidate)")
    if elites:
        print()
        print(
            format_table(
                elites[:15], ["cell", "candidate_id", "ratio", "measures", "params", "label"]
            )
        )
    print()
    print(f"report: {report}")
    if summary["status"] == "interrupted":
        print(f"interrupted: continue with `kernelmap run --resume {run_id}`", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``kernelmap run``: search, then print the summary and the report's path."""
    from services.runs.search import ProgressLine, RunOptions, run_search

    if args.task is None and args.resume is None:
        raise KernelmapError("give a task file, or --resume RUN_ID (see kernelmap run --help)")
    if args.task is not None and args.resume is not None:
        raise KernelmapError("give either a task file or --resume RUN_ID, not both")
    settings = Settings()
    opts = RunOptions(
        task=Path(args.task) if args.task else None,
        seeds=[Path(p) for p in args.seed_candidate],
        budget=args.budget,
        device=args.device,
        workers=args.workers,
        db_url=args.db,
        dims=args.dims,
        resume=args.resume,
        templates=args.templates,
        archive=args.archive,
        cells=args.cells,
        variation=args.variation,
        redis_url=args.redis,
    )
    progress = ProgressLine()
    try:
        summary = run_search(settings, opts, on_progress=progress)
    finally:
        progress.done()
    return _finish(settings, args.db, summary["run_id"], args.json, summary.get("stopped_reason"))


def cmd_demo(args: argparse.Namespace) -> int:
    """``kernelmap demo``: a short search on the shipped softmax example."""
    from services.runs.search import ProgressLine, RunOptions, run_search

    if not EXAMPLES.is_dir():
        raise KernelmapError(f"the shipped examples are not at {EXAMPLES}: run from a checkout")
    settings = Settings()
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
    return _finish(settings, None, summary["run_id"], False, summary.get("stopped_reason"))


def cmd_runs(args: argparse.Namespace) -> int:
    """``kernelmap runs``: list runs."""
    from services.runs.search import open_database
    from services.runs.views import format_table, runs_table

    engine, sessions = open_database(Settings(), args.db)
    try:
        with sessions() as s:
            rows = runs_table(s)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(
            format_table(
                rows,
                [
                    "run_id",
                    "task",
                    "status",
                    "device",
                    "evaluations",
                    "budget",
                    "elites",
                    "best_ratio",
                    "objective_label",
                    "created_at",
                ],
            )
        )
    else:
        print("no runs yet: start one with `kernelmap run TASK`")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``kernelmap show RUN_ID``: the archive as a table."""
    from services.runs.search import open_database
    from services.runs.views import archive_table, format_table, run_summary

    engine, sessions = open_database(Settings(), args.db)
    try:
        with sessions() as s:
            summary = run_summary(s, args.run_id)
            rows = archive_table(s, args.run_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**summary, "archive": rows}))
        return 0
    print(
        f"run {args.run_id} ({summary['task']}, {summary['status']}): {summary['elites']} elites,"
        f" {summary['evaluations']} evaluations, objective {summary['objective_label']}"
    )
    print(
        format_table(
            rows, ["cell", "candidate_id", "ratio", "measures", "params", "label", "emitter"]
        )
        if rows
        else "the archive is empty"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``kernelmap export``: a standalone candidate file with its parameters baked in."""
    from services.runs.search import open_database
    from services.runs.views import export_candidate

    engine, sessions = open_database(Settings(), args.db)
    try:
        with sessions() as s:
            info = export_candidate(
                s, args.run_id, None if args.best else args.candidate, Path(args.output)
            )
    finally:
        engine.dispose()
    print(
        f"wrote candidate {info['candidate_id']} ({info['verdict']}) to {info['path']}",
        file=sys.stderr,
    )
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """``kernelmap db upgrade``: apply the migrations."""
    from archive import db
    from services.runs.search import database_url

    url = database_url(Settings(), args.db)
    db.upgrade(url)
    print(f"database at revision {db.head_revision()}", file=sys.stderr)
    return 0


def _has_gpu() -> bool:
    # NVML's count, not CUDA's: the worker forks its pool processes after this, and a CUDA
    # context made before a fork is unusable in the children.
    from evaluator_worker.device import detect_device

    return detect_device() == "cuda"


def cmd_worker(args: argparse.Namespace) -> int:
    """``kernelmap worker``: a Celery worker evaluating jobs from ``eval.<CLASS>``; with
    ``--join URL --token KEY``, a remote worker pulling jobs from a server over HTTPS."""
    if args.join or args.token:
        from services.cli.serve import run_remote

        return run_remote(args)
    from kombu.utils.url import maybe_sanitize_url

    if args.concurrency < 1:
        raise KernelmapError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.device is not None:
        if not args.device.isdigit():
            raise KernelmapError(f"--device must be a GPU index (0, 1, ...), got {args.device!r}")
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    if args.redis:
        os.environ["KERNELMAP_REDIS_URL"] = args.redis
    hardware = args.queue or ("cuda" if _has_gpu() else "cpu")
    if hardware == "cpu":
        os.environ["KERNELMAP_DEVICE"] = "cpu"
    settings = Settings()  # after the environment is set: the pool processes read it too
    device = settings.device if settings.device != "auto" else ("cuda" if _has_gpu() else "cpu")
    if device == "cuda" and not _has_gpu():
        raise KernelmapError(
            f"queue {hardware} evaluates on CUDA but no GPU is visible"
            f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    import socket

    from evaluator_worker.sandbox import refusal
    from services.workers.celery_app import create_app, eval_queue
    from services.workers.fleet import Heartbeat, hardware_info

    app = create_app(settings)
    queue = eval_queue(hardware)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "all visible") if device == "cuda" else "-"
    # The node name spelled out (Celery's %h is the same hostname) so that the heartbeat's
    # record and the name on every job's result agree.
    name = f"kernelmap-{hardware}-{os.getpid()}@{socket.gethostname()}"
    print(
        f"kernelmap worker: consuming {queue} on {maybe_sanitize_url(app.conf.broker_url)},"
        f" device {device} (CUDA_VISIBLE_DEVICES={gpu}), concurrency {args.concurrency}",
        file=sys.stderr,
        flush=True,
    )
    # Gathered before Celery forks its pool; hardware_info never initialises CUDA here.
    facts = hardware_info(device, sandbox=settings.sandbox)
    refused = refusal(facts["sandbox"])
    if refused:
        raise KernelmapError(refused)
    heartbeat = Heartbeat(settings, name, hardware, facts).start()
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                queue,
                "--concurrency",
                str(args.concurrency),
                "--pool",
                "prefork",
                "--hostname",
                name,
                "--loglevel",
                args.loglevel,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        heartbeat.stop()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``kernelmap keys create --role R``: prints only the new key on stdout (stored hashed)."""
    from services.keys import create_key
    from services.runs.search import open_database

    engine, sessions = open_database(Settings(), args.db)
    try:
        with sessions() as s:
            user, key = create_key(s, args.role, args.name or f"{args.role} key")
            s.commit()
            user_id = user.id
    finally:
        engine.dispose()
    print(key)
    print(
        f"created a {args.role} key for user {user_id}; it is shown only this once", file=sys.stderr
    )
    return 0

"""The search commands: ``kernelmap run`` (search, then print the summary), ``runs`` (list
them), ``show`` (a run's archive as a table) and ``export`` (a candidate as a standalone file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archive.status import RunStatus
from kernelmap_errors import KernelmapError
from services.config import Settings

STOP_REASONS = {
    "budget": "the budget is spent",
    "stopped": "stopped by the user",
    "exhausted": "every emitter has proposed its whole search space",
    "stalled": "no emitter proposed anything new for a while",
    "task_refused": "a worker refused the task; see the error below",
}


def print_finished_run(
    settings: Settings,
    db_url: str | None,
    run_id: int,
    as_json: bool,
    stopped_reason: str | None = None,
) -> int:
    """Print a run's summary (one JSON object with ``as_json``) and write its HTML report."""
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
    if summary["status"] == RunStatus.INTERRUPTED:
        print(f"interrupted: continue with `kernelmap run --resume {run_id}`", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``kernelmap run``: search, then print the summary and the report's path."""
    from services.cli.report import ProgressLine
    from services.runs.search import RunOptions, run_search

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
    return print_finished_run(
        settings, args.db, summary["run_id"], args.json, summary.get("stopped_reason")
    )


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

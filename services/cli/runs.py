"""The search commands: ``kernelmap run`` (search, then print the summary), ``runs`` (list
them), ``show`` (a run's archive as a table), ``candidates`` (every candidate a run proposed)
and ``export`` (a candidate as a standalone file)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from archive.status import RunStatus
from kernelmap_errors import KernelmapError
from services.cli.options import settings_from
from services.config import Settings


def print_finished_run(
    settings: Settings,
    db_url: str | None,
    run_id: int,
    as_json: bool,
    stopped_reason: str | None = None,
) -> int:
    """Print a run's summary (one JSON object with ``as_json``) and write its HTML report.

    ``stopped_reason`` is the search's own (the stored one when None)."""
    from services.runs.search import open_database
    from services.runs.views import (
        STOP_REASONS,
        archive_table,
        format_table,
        run_summary,
        write_report,
    )

    engine, sessions = open_database(settings, db_url)
    try:
        with sessions() as s:
            summary = run_summary(s, run_id)
            report = write_report(s, run_id, settings.data_dir / "reports" / f"run_{run_id}.html")
            elites = archive_table(s, run_id)
    finally:
        engine.dispose()
    summary["report"] = str(report)
    if stopped_reason is not None and summary["stop_reason"] is None:
        summary["stop_reason"] = stopped_reason
        summary["stop_reason_text"] = STOP_REASONS.get(stopped_reason, stopped_reason)
    if as_json:
        print(json.dumps(summary))
        return 0
    print(summary_text(summary))
    if elites:
        print()
        print(
            format_table(
                elites[:15],
                ["cell", "candidate_id", "ratio", "objective_label", "measures", "params", "label"],
            )
        )
    print()
    print(f"report: {report}")
    if summary["status"] == RunStatus.INTERRUPTED:
        print(f"interrupted: continue with `kernelmap run --resume {run_id}`", file=sys.stderr)
    return 0


def summary_text(summary: dict) -> str:
    """A run's summary (:func:`services.runs.views.run_summary`) as the lines the CLI prints:
    every number says what it counts and every ratio how it was measured."""
    counts = summary["counts"]
    why = summary.get("stop_reason_text")
    lines = [
        f"run {summary['run_id']} ({summary['task']}, {summary['device']}): {summary['status']}"
        + (f" ({why})" if why else "")
    ]
    breakdown = f"{counts['candidates_evaluated']} candidates"
    if counts["remeasures"]:
        breakdown += f", {counts['remeasures']} re-measures"
    if counts["duplicates"]:
        breakdown += f"; {counts['duplicates']} duplicate proposals not evaluated again"
    lines.append(
        f"  evaluations {summary['evaluations']}/{summary['budget']} ({breakdown})"
        f"   elites {summary['elites']}   coverage {100 * summary['coverage']:.1f}%"
        f"   QD-score {summary['qd_score']:.4g}"
    )
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdicts"].items()))
    lines.append(f"  verdicts    {verdicts or 'none yet'} (one per evaluation or static reject)")
    if summary.get("error"):
        lines.append(f"  error       {summary['error']}")
    best = summary["best"]
    if best:
        spread = best.get("ratio_ci95")
        within = f", 95% interval {spread[0]:.3g}-{spread[1]:.3g}x" if spread else ""
        lines.append(
            f"  best        candidate {best['candidate_id']} ({best['label']}):"
            f" {best['ratio']:.4g}x ({best['objective_label']}{within})"
        )
    else:
        lines.append("  best        none (no correct candidate)")
    templates = summary.get("templates") or {}
    if templates.get("wanted"):
        matched = ", ".join(templates["matched"])
        why_not = "; ".join(templates.get("notes", [])[:3])
        if not matched:
            matched = "none applies" + (f" ({why_not})" if why_not else "")
        lines.append(f"  templates   {matched}")
    llm = summary.get("llm")
    if llm:
        lines.append("  llm         " + llm_text(llm))
    lines += [f"  note        {n}" for n in summary.get("notes", [])]
    return "\n".join(lines)


def llm_text(llm: dict) -> str:
    """The LLM search's line: requests, what came of them, what they cost."""
    cost = f", cost {llm['cost']:.4g}" if llm.get("cost") is not None else ""
    failures = ", ".join(f"{k} {v}" for k, v in sorted(llm.get("failures", {}).items()))
    return (
        f"{llm['requests']} requests ({llm['candidates']} candidates, {llm['correct']} correct,"
        f" {llm['elites']} became elites; failed: {failures or 'none'}),"
        f" {llm['prompt_tokens']}+{llm['completion_tokens']} tokens{cost}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``kernelmap run``: search, then print the summary and the report's path."""
    from services.cli.report import ProgressLine
    from services.heap import tune_collector
    from services.runs.search import RunOptions, run_search

    if args.task is None and args.resume is None:
        raise KernelmapError("give a task file, or --resume RUN_ID (see kernelmap run --help)")
    if args.task is not None and args.resume is not None:
        raise KernelmapError("give either a task file or --resume RUN_ID, not both")
    settings = settings_from(args)
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
        llm=args.llm,
        llm_models=list(args.llm_model),
        llm_max_tokens=args.llm_max_tokens,
        llm_max_requests=args.llm_max_requests,
        llm_max_total_tokens=args.llm_max_total_tokens,
        llm_max_cost=args.llm_max_cost,
    )
    progress = ProgressLine()
    tune_collector()  # services.heap: torch, pyribs... imported; fewer, shorter collections
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

    engine, sessions = open_database(settings_from(args), args.db)
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

    engine, sessions = open_database(settings_from(args), args.db)
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
        f" {summary['evaluations']} evaluations (each ratio labelled by how it was measured)"
    )
    columns = ["cell", "candidate_id", "ratio", "objective_label", "measures", "params", "label"]
    print(format_table(rows, [*columns, "emitter"]) if rows else "the archive is empty")
    return 0


def candidate_rows(session, run_id: int, verdict: str | None, limit: int) -> list[dict]:
    """The first ``limit`` candidates of run ``run_id`` (only ``verdict`` if given), by id:
    one row each with its newest evaluation's verdict, ratio and what that ratio measures."""
    from archive import repository

    repository.get_run(session, run_id)  # RunNotFound for an unknown run
    return [
        {
            "candidate_id": c.id,
            "verdict": e.verdict if e else None,
            "ratio": None if e is None or e.objective is None else math.exp(e.objective),
            "objective_label": e.objective_label if e else None,
            "emitter": c.emitter,
            "params": dict(c.params),
            "label": c.label,
        }
        for c, e in repository.candidates_of_run(session, run_id, verdict=verdict, limit=limit)
    ]


def cmd_candidates(args: argparse.Namespace) -> int:
    """``kernelmap candidates RUN_ID``: every candidate the run proposed (not only its elites,
    which ``show`` lists), by id, with the verdict of its newest evaluation."""
    from archive import repository
    from services.runs.search import open_database
    from services.runs.views import format_table

    if args.limit < 1:
        raise KernelmapError(f"--limit must be at least 1, got {args.limit}")
    engine, sessions = open_database(settings_from(args), args.db)
    try:
        with sessions() as s:
            rows = candidate_rows(s, args.run_id, args.verdict, args.limit)
            total = repository.count_candidates_of_run(s, args.run_id, args.verdict)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"run_id": args.run_id, "total": total, "candidates": rows}))
        return 0
    which = f" with verdict {args.verdict}" if args.verdict else ""
    if not rows:
        print(f"run {args.run_id} has no candidates{which}")
        return 0
    print(f"run {args.run_id}: {len(rows)} of {total} candidates{which}, by id")
    columns = ["candidate_id", "verdict", "ratio", "objective_label", "emitter", "params", "label"]
    print(format_table(rows, columns))
    if total > len(rows):
        print(f"({total - len(rows)} more: raise --limit)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``kernelmap export``: a standalone candidate file with its parameters baked in."""
    from archive import repository
    from services.runs.search import open_database
    from services.runs.views import export_candidate

    engine, sessions = open_database(settings_from(args), args.db)
    try:
        with sessions() as s:
            if args.candidate is not None:
                repository.get_run(s, args.run_id)  # RunNotFound first: it has its own hint
                if not repository.candidate_in_run(s, args.run_id, args.candidate):
                    raise KernelmapError(
                        f"run {args.run_id} has no candidate {args.candidate}:"
                        f" `kernelmap candidates {args.run_id}` lists its candidates"
                    )
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

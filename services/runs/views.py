"""Reading a run back from the database: summaries, tables, the HTML report, exports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from archive import repository
from evolution.descriptors import parse_dims
from kernelmap_errors import KernelmapError
from services.runs.config import RunConfig
from services.runs.html_report import ReportData, render
from services.runs.seeds import bake_params


def _ratio(objective: float | None) -> float | None:
    return None if objective is None else math.exp(objective)


def run_summary(session, run_id: int) -> dict[str, Any]:
    """The JSON summary of a run (what ``kernelmap run --json`` prints)."""
    run = repository.get_run(session, run_id)
    stat = repository.latest_run_stat(session, run_id)
    verdicts = repository.verdict_counts(session, run_id)
    # The loop's own count (re-measures of near-ties included) when it has recorded one.
    evaluations = stat.evaluations if stat else sum(verdicts.values())
    best = repository.best_elite(session, run_id)
    best_out = None
    if best is not None:
        ev = repository.latest_evaluation(session, best.candidate_id)
        best_out = {
            "candidate_id": best.candidate_id,
            "verdict": ev.verdict if ev else None,
            "speedup_vs_eager": ev.speedup_vs_eager if ev else None,
            "speedup_vs_compile": ev.speedup_vs_compile if ev else None,
            "objective": best.objective,
            "ratio": _ratio(best.objective),
            "objective_label": run.objective_label,
        }
    return {
        "run_id": run.id,
        "status": run.status,
        "task": repository.get_task(session, run.task_id).name,
        "device": run.device,
        "objective_label": run.objective_label,
        "budget": run.budget,
        "evaluations": evaluations,
        "elites": repository.count_current_elites(session, run_id),
        "coverage": stat.coverage if stat else 0.0,
        "qd_score": stat.qd_score if stat else 0.0,
        "verdicts": verdicts,
        "best": best_out,
        "error": run.error,
    }


def runs_table(session, limit: int = 50) -> list[dict[str, Any]]:
    """One row per run, newest first."""
    rows = []
    for run in repository.list_runs(session, limit=limit):
        stat = repository.latest_run_stat(session, run.id)
        rows.append(
            {
                "run_id": run.id,
                "task": repository.get_task(session, run.task_id).name,
                "status": run.status,
                "device": run.device,
                "budget": run.budget,
                "evaluations": stat.evaluations if stat else 0,
                "elites": stat.elites if stat else 0,
                "best_ratio": _ratio(stat.best_objective) if stat else None,
                "objective_label": run.objective_label,
                "created_at": run.created_at.isoformat(timespec="seconds"),
            }
        )
    return rows


def archive_table(session, run_id: int) -> list[dict[str, Any]]:
    """The run's current elites, best first."""
    return [
        {
            "cell": r.cell,
            "candidate_id": r.candidate_id,
            "ratio": _ratio(r.objective),
            "measures": list(r.measures),
            "params": r.params,
            "label": r.label,
            "emitter": r.emitter,
            "verified": bool(r.verified),
        }
        for r in repository.current_elite_cells(session, run_id)
    ]


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return "(" + ", ".join(cell(x) for x in v) + ")"
        if isinstance(v, dict):
            return ", ".join(f"{k}={x}" for k, x in v.items()) or "-"
        return "-" if v is None else str(v)

    texts = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in texts]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)) for row in texts]
    return "\n".join(lines)


def export_candidate(session, run_id: int, candidate_id: int | None, out: Path) -> dict[str, Any]:
    """Write a standalone candidate file (parameters baked in); ``None`` means the best elite."""
    repository.get_run(session, run_id)
    if candidate_id is None:
        best = repository.best_elite(session, run_id)
        if best is None:
            raise KernelmapError(f"run {run_id} has no correct candidate yet: nothing to export")
        candidate_id = best.candidate_id
    cand = repository.get_candidate(session, candidate_id)
    if not repository.candidate_in_run(session, run_id, cand.id):
        raise KernelmapError(f"candidate {candidate_id} does not belong to run {run_id}")
    out.write_text(bake_params(cand.source, dict(cand.params)))
    ev = repository.latest_evaluation(session, cand.id)
    return {
        "candidate_id": cand.id,
        "path": str(out),
        "params": cand.params,
        "verdict": ev.verdict if ev else None,
    }


def write_report(session, run_id: int, path: Path) -> Path:
    """Write the run's HTML report to ``path``."""
    run = repository.get_run(session, run_id)
    spec = RunConfig.from_json(run.config).dims
    dims = [
        {"name": d.name, "label": d.label, "low": d.low, "high": d.high, "bins": b}
        for d, b in (parse_dims(spec) if spec else [])
    ]
    elites = [
        {
            "cell": e.cell,
            "candidate_id": e.candidate_id,
            "objective": e.objective,
            "measures": list(e.measures),
        }
        for e in repository.current_elites(session, run_id)
    ]
    curve = [
        {
            "evaluations": s.evaluations,
            "best_objective": s.best_objective,
            "qd_score": s.qd_score,
            "coverage": s.coverage,
        }
        for s in repository.run_stats(session, run_id)
    ]
    summary = run_summary(session, run_id)
    summary["best_ratio"] = summary["best"]["ratio"] if summary["best"] else None
    best = None
    b = repository.best_elite(session, run_id)
    if b is not None:
        cand = repository.get_candidate(session, b.candidate_id)
        ev = repository.latest_evaluation(session, b.candidate_id)
        best = {
            "candidate_id": cand.id,
            "source": bake_params(cand.source, dict(cand.params)),
            "params": cand.params,
            "objective": b.objective,
            "evaluation": ev.result if ev else None,
        }
    data = ReportData(
        run_id=run.id,
        task_name=summary["task"],
        status=run.status,
        objective_label=run.objective_label,
        dims=dims,
        elites=elites,
        curve=curve,
        verdicts=summary["verdicts"],
        summary=summary,
        best=best,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data))
    return path

"""Reading a run back from the database: summaries, tables, the HTML report, exports."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from archive import repository
from archive.llm_report import llm_summary
from archive.models import Evaluation, Job, RunStat, Task, User
from evolution.candidate import ratio_interval
from evolution.descriptors import parse_dims
from evolution.grid import DEFAULT_QD_OFFSET
from evolution.progress import STOP_BUDGET, STOP_EXHAUSTED, STOP_REFUSED, STOP_STALLED, STOP_STOPPED
from kernelmap_errors import KernelmapError
from services.runs.config import RunConfig
from services.runs.html_report import ReportData, baselines_of, render
from services.runs.seeds import REFERENCE_LABEL, bake_params


def _ratio(objective: float | None) -> float | None:
    return None if objective is None else math.exp(objective)


#: What ``stop_reason`` means, in words (the CLI prints them; ``GET /runs/{id}`` returns them).
STOP_REASONS = {
    STOP_BUDGET: "the budget is spent",
    STOP_STOPPED: "stopped (by its owner, Ctrl-C or a controller shutting down)",
    STOP_EXHAUSTED: "every emitter has proposed its whole search space",
    STOP_STALLED: "no emitter proposed anything new for a while",
    STOP_REFUSED: "a worker refused the task; see the error",
}


def _counts(stored: dict[str, Any]) -> tuple[int, dict[str, int], dict[str, int]]:
    """``(evaluations, verdicts, counts)`` of a run from :func:`archive.repository.run_counts`
    (see :func:`run_summary`)."""
    jobs, gate = stored["job_verdicts"], stored["gate_verdicts"]
    evaluations = sum(jobs.values())
    verdicts = dict(jobs)
    for verdict, n in gate.items():
        verdicts[verdict] = verdicts.get(verdict, 0) + n
    counts = {
        "evaluations": evaluations,
        "candidates_evaluated": stored["candidates_evaluated"],
        "remeasures": max(0, evaluations - stored["candidates_evaluated"]),
        "static_rejects": sum(gate.values()),
        "proposed": stored["proposed"],
        "duplicates": stored["duplicates"],
    }
    return evaluations, verdicts, counts


def _notes(run, best: dict[str, Any] | None, qd_offset: float) -> list[str]:
    """The lines that say why a run's figures look as they do."""
    notes = []
    if run.device == "cpu" and run.objective_label == "cpu-interpreter":
        notes.append(
            "on this machine Triton runs in its interpreter, so a Triton kernel's speed is not"
            " measured (its ratios are labelled cpu-interpreter) and the reference usually"
            " stays best; on a GPU host the same command measures real speedups"
        )
    if best is not None and best.get("is_reference"):
        spread = best.get("ratio_ci95")
        within = f" (95% interval {spread[0]:.3g}x to {spread[1]:.3g}x)" if spread else ""
        notes.append(
            f"the best is the reference itself: its ratio {best['ratio']:.3g}x{within} against"
            " its own baseline is timing noise, not a speedup"
        )
    notes.append(
        f"QD-score: the sum over elites of log(ratio) + {-qd_offset:g}, floored at 0 per elite:"
        f" the offset {-qd_offset:g} makes every elite count positively, one"
        f" {math.exp(-qd_offset):.0f}x slower than its baseline or worse counting 0"
    )
    return notes


def run_summary(session, run_id: int) -> dict[str, Any]:
    """The JSON summary of a run: what ``kernelmap run --json`` prints and ``GET /runs/{id}``
    returns.

    ``evaluations``, ``verdicts`` and ``counts`` are read from what the run stored, all at once
    (so they agree with each other while a run goes on, and with the search loop's progress
    line when it ends): ``evaluations`` counts the evaluations of the run's jobs (what the
    budget counts; re-measures of near-ties and verifications included, static rejects and
    duplicates excluded), ``verdicts`` one verdict per evaluation plus one per candidate the
    static gate refused before any evaluation (``STATIC_REJECT``, or ``COMPILE_ERROR`` for
    source that does not parse). ``counts`` breaks them down (:func:`_counts`). Elites,
    coverage and the QD score are those of the latest progress point. Every ratio carries the
    label of its own evaluation.
    """
    run = repository.get_run(session, run_id)
    stat = repository.latest_run_stat(session, run_id)
    evaluations, verdicts, counts = _counts(repository.run_counts(session, run_id))
    best = repository.best_elite(session, run_id)
    best_out = None
    if best is not None:
        ev = repository.latest_evaluation(session, best.candidate_id)
        cand = repository.get_candidate(session, best.candidate_id)
        spread = ratio_interval(ev.timing) if ev else None
        best_out = {
            "candidate_id": best.candidate_id,
            "label": cand.label,
            "is_reference": cand.label == REFERENCE_LABEL,
            "verdict": ev.verdict if ev else None,
            "speedup_vs_eager": ev.speedup_vs_eager if ev else None,
            "speedup_vs_compile": ev.speedup_vs_compile if ev else None,
            "objective": best.objective,
            "ratio": _ratio(best.objective),
            "ratio_ci95": list(spread) if spread else None,
            "objective_label": (ev.objective_label if ev else None) or run.objective_label,
        }
    config = RunConfig.from_json(run.config)
    qd_offset = DEFAULT_QD_OFFSET
    return {
        "run_id": run.id,
        "status": run.status,
        "task": repository.get_task(session, run.task_id).name,
        "device": run.device,
        "objective_label": run.objective_label,
        "budget": run.budget,
        "evaluations": evaluations,
        "counts": counts,
        "elites": stat.elites if stat else repository.count_current_elites(session, run_id),
        "coverage": stat.coverage if stat else 0.0,
        "qd_score": stat.qd_score if stat else 0.0,
        "qd_score_offset": qd_offset,
        "verdicts": verdicts,
        "best": best_out,
        "stop_reason": run.stop_reason,
        "stop_reason_text": STOP_REASONS.get(run.stop_reason or "", run.stop_reason),
        "templates": {
            "wanted": config.templates,
            "matched": [s.label for s in config.seeds if s.label.startswith("template:")],
            "notes": list(config.template_notes),
        },
        "llm": llm_summary(session, run_id) if config.llm is not None else None,
        "notes": _notes(run, best_out, qd_offset),
        "error": run.error,
    }


def runs_table(session, limit: int = 50) -> list[dict[str, Any]]:
    """One row per run, newest first."""
    rows = []
    runs = repository.list_runs(session, limit=limit)
    evaluated = {r["run_id"]: r["evaluations"] for r in run_rows(session, runs)}
    for run in runs:
        stat = repository.latest_run_stat(session, run.id)
        rows.append(
            {
                "run_id": run.id,
                "task": repository.get_task(session, run.task_id).name,
                "status": run.status,
                "device": run.device,
                "budget": run.budget,
                "evaluations": evaluated.get(run.id, 0),
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
            "objective_label": r.objective_label,
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


# -- the dashboard's reads (services.web): a page of runs, a run's map, curves and baselines ---


def map_dims(run) -> list[dict[str, Any]]:
    """The run's descriptor dimensions: ``name``, ``label``, ``low``, ``high``, ``bins`` each."""
    spec = RunConfig.from_json(run.config).dims
    return [
        {"name": d.name, "label": d.label, "low": d.low, "high": d.high, "bins": b}
        for d, b in (parse_dims(spec) if spec else [])
    ]


def map_cells(session, run_id: int) -> list[dict[str, Any]]:
    """The run's current elites for its heatmap, best first, in one query: ``cell``,
    ``candidate_id``, ``objective`` (log ratio), ``ratio``, ``measures``, ``params``,
    ``label``, ``objective_label``, ``emitter``, ``verified``."""
    return [
        {
            "cell": r.cell,
            "candidate_id": r.candidate_id,
            "objective": r.objective,
            "ratio": _ratio(r.objective),
            "measures": list(r.measures),
            "params": dict(r.params or {}),
            "label": r.label,
            "objective_label": r.objective_label,
            "emitter": r.emitter,
            "verified": bool(r.verified),
        }
        for r in repository.current_elite_cells(session, run_id)
    ]


def progress_points(session, run_id: int) -> list[dict[str, Any]]:
    """The run's progress points, oldest first, without their verdict counts (a long run has
    thousands: only the columns the curves draw are read)."""
    stmt = (
        sa.select(RunStat.evaluations, RunStat.best_objective, RunStat.qd_score, RunStat.coverage)
        .where(RunStat.run_id == run_id)
        .order_by(RunStat.id)
    )
    keys = ("evaluations", "best_objective", "qd_score", "coverage")
    return [dict(zip(keys, r, strict=True)) for r in session.execute(stmt)]


def best_baselines(session, run_id: int) -> dict[str, Any] | None:
    """What the run's best elite was measured against, from its newest evaluation's timing:
    ``candidate_ms``, ``eager_ms``, ``compile_ms`` (medians, None when not measured),
    ``floor_ms`` and ``floor_basis`` (the speed-of-light floor, when known), ``method``,
    ``objective_label``. None without a best elite."""
    best = repository.best_elite(session, run_id)
    if best is None:
        return None
    ev = repository.latest_evaluation(session, best.candidate_id)
    if ev is None:
        return baselines_of(best.candidate_id, None, {})
    fields = {
        "objective_label": ev.objective_label,
        "speedup_vs_eager": ev.speedup_vs_eager,
        "speedup_vs_compile": ev.speedup_vs_compile,
    }
    return baselines_of(best.candidate_id, ev.timing, fields)


def run_rows(session, runs: list) -> list[dict[str, Any]]:
    """One row per run of a page of runs, in five queries for the whole page (rather than
    :func:`run_summary`'s dozen per run): ``run_id``, ``task``, ``owner`` (None for a
    ``kernelmap run`` run), ``status``, ``device``, ``budget``, ``evaluations`` (counted as
    :func:`run_summary` counts them), ``progress`` (0..1), ``elites``, ``coverage``,
    ``qd_score``, ``best_ratio`` with the ``best_label`` of the best's own evaluation,
    ``created_at``."""
    if not runs:
        return []
    ids = [r.id for r in runs]
    newest = (
        sa.select(sa.func.max(RunStat.id)).where(RunStat.run_id.in_(ids)).group_by(RunStat.run_id)
    )
    stats = {
        s.run_id: s
        for s in session.execute(
            sa.select(
                RunStat.run_id,
                RunStat.evaluations,
                RunStat.elites,
                RunStat.coverage,
                RunStat.qd_score,
                RunStat.best_objective,
                RunStat.best_candidate_id,
            ).where(RunStat.id.in_(newest))
        )
    }
    # As run_summary counts them: the evaluations of each run's jobs (the progress point lags).
    evaluated = dict(
        session.execute(
            sa.select(Job.run_id, sa.func.count())
            .join(Evaluation, Evaluation.job_id == Job.id)
            .where(Job.run_id.in_(ids))
            .group_by(Job.run_id)
        ).all()
    )
    task_ids = sorted({r.task_id for r in runs})
    tasks = {
        i: name
        for i, name in session.execute(sa.select(Task.id, Task.name).where(Task.id.in_(task_ids)))
    }
    owner_ids = sorted({r.owner_id for r in runs if r.owner_id is not None})
    owners = {
        i: name
        for i, name in session.execute(sa.select(User.id, User.name).where(User.id.in_(owner_ids)))
    }
    best_ids = sorted({s.best_candidate_id for s in stats.values() if s.best_candidate_id})
    labelled = (
        sa.select(sa.func.max(Evaluation.id))
        .where(Evaluation.candidate_id.in_(best_ids), Evaluation.objective_label.is_not(None))
        .group_by(Evaluation.candidate_id)
    )
    labels = {
        cid: label
        for cid, label in session.execute(
            sa.select(Evaluation.candidate_id, Evaluation.objective_label).where(
                Evaluation.id.in_(labelled)
            )
        )
    }
    rows = []
    for run in runs:
        s = stats.get(run.id)
        evaluations = int(evaluated.get(run.id, 0))
        best = s.best_objective if s else None
        rows.append(
            {
                "run_id": run.id,
                "task": tasks.get(run.task_id, ""),
                "owner": owners.get(run.owner_id),
                "status": run.status,
                "device": run.device,
                "budget": run.budget,
                "evaluations": evaluations,
                "progress": min(1.0, evaluations / run.budget) if run.budget else 0.0,
                "elites": s.elites if s else 0,
                "coverage": s.coverage if s else 0.0,
                "qd_score": s.qd_score if s else 0.0,
                "best_ratio": _ratio(best),
                "best_label": (labels.get(s.best_candidate_id) if s else None)
                or run.objective_label,
                "created_at": run.created_at.isoformat(timespec="seconds")
                if run.created_at
                else None,
            }
        )
    return rows

"""The HTML report of a run: a self-contained file (inline CSS and SVG, no scripts, no network).

It shows what the dashboard's run page shows, rendered by the same code: the MAP-Elites heatmap
(every slice of a third dimension), the best-ratio, QD-score and coverage curves, the verdict
counts, the best elite's baselines and the best kernel's source with its evaluation. Objectives
measured by the CPU interpreter are labelled so, never as speedups. The charts are
:mod:`services.web.charts`; the page is the dashboard's template ``partials/report.html``
around the run page's ``partials/run_figures.html``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from markupsafe import Markup

# services.web.charts and .templating are imported where used: importing the services.web
# package builds the dashboard (the API's routes, which import services.runs.views, which
# imports this module), so a module-level import would be circular.

#: The dashboard's stylesheet, inlined into the report.
CSS = Path(__file__).parents[1] / "web" / "static" / "app.css"


@dataclasses.dataclass
class ReportData:
    """Everything the report shows, as plain data."""

    run_id: int
    task_name: str
    status: str
    objective_label: str
    dims: list[dict[str, Any]]  # name, label, low, high, bins
    elites: list[dict[str, Any]]  # cell, candidate_id, objective, measures
    curve: list[dict[str, Any]]  # evaluations, best_objective, qd_score, coverage
    verdicts: dict[str, int]
    summary: dict[str, Any]
    best: dict[str, Any] | None  # candidate_id, source, params, evaluation (result dict)


def baselines_of(
    candidate_id: int, timing: dict[str, Any] | None, result: dict[str, Any]
) -> dict[str, Any]:
    """What an elite was measured against, from its evaluation's ``timing`` and result
    fields: medians of the candidate, eager and torch.compile (None when not measured), the
    speed-of-light floor and its basis when known, the timing method, the speedups and label."""
    timing = timing or {}

    def median(name: str) -> float | None:
        stats = timing.get(name)
        return stats.get("median_ms") if isinstance(stats, dict) else None

    return {
        "candidate_id": candidate_id,
        "candidate_ms": median("candidate"),
        "eager_ms": median("eager"),
        "compile_ms": median("compile"),
        "floor_ms": timing.get("floor_ms"),
        "floor_basis": timing.get("floor_basis"),
        "method": timing.get("method"),
        "objective_label": result.get("objective_label"),
        "speedup_vs_eager": result.get("speedup_vs_eager"),
        "speedup_vs_compile": result.get("speedup_vs_compile"),
    }


def bin_bounds(dim: dict[str, Any]) -> list[str]:
    """Each bin's range of a dimension, as text (``2 .. 3``)."""
    lo, hi, n = dim["low"], dim["high"], dim["bins"]
    step = (hi - lo) / n if n else 0
    return [f"{lo + k * step:.3g} .. {lo + (k + 1) * step:.3g}" for k in range(n)]


def figures(
    *,
    cells: list[dict[str, Any]],
    dims: list[dict[str, Any]],
    stats: list[dict[str, Any]],
    verdicts: dict[str, int],
    objective_label: str,
    baselines: dict[str, Any] | None,
    best: dict[str, Any] | None,
    z: int | None = None,
    candidate_link: str | None = None,
    download: str | None = None,
) -> dict[str, Any]:
    """The context of ``partials/run_figures.html``.

    ``z`` None draws every slice of a third dimension (the report); an int draws that one
    slice and the form choosing it (the page). ``candidate_link`` (``/candidates/``) links the
    cells and the best to their candidate pages; ``download`` is the best kernel's URL.
    """
    from services.web import charts

    counts = charts.slices(cells, dims)
    z_dim = None
    if len(dims) > 2:
        z_dim = {**dims[2], "bounds": bin_bounds(dims[2])}
    if counts and z is None:
        maps = [
            {
                "title": f"{dims[2]['name']} bin {k}: {z_dim['bounds'][k]} ({n} elites)",
                "svg": charts.heatmap(cells, dims, z=k, link=candidate_link),
            }
            for k, n in enumerate(counts)
            if n
        ] or [{"title": "", "svg": charts.heatmap(cells, dims, link=candidate_link)}]
    else:
        maps = [{"title": "", "svg": charts.heatmap(cells, dims, z=z or 0, link=candidate_link)}]
    return {
        "maps": maps,
        "legend": charts.legend(cells),
        "label_text": "ratio (" + charts.label_text(objective_label) + ")",
        "slices": counts,
        "z": z or 0,
        "z_dim": z_dim,
        "z_form": z is not None,
        "curves": charts.progress_curves(stats),
        "verdicts": verdicts,
        "baselines": baselines,
        "best": best,
        "candidate_link": candidate_link,
        "download": download,
    }


def render(data: ReportData) -> str:
    """The whole report as one HTML document."""
    from services.web import charts
    from services.web.templating import environment

    s = dict(data.summary)
    best_out = s.get("best") or {}
    best = None
    baselines = None
    if data.best:
        ev = data.best.get("evaluation") or {}
        best = {
            "candidate_id": data.best["candidate_id"],
            "verdict": ev.get("verdict"),
            "ratio": math.exp(data.best["objective"]),
            "objective_label": best_out.get("objective_label"),
            "label": best_out.get("label"),
            "params": dict(data.best.get("params") or {}),
            "messages": [str(m) for m in ev.get("messages", [])],
            "source": data.best["source"],
        }
        baselines = baselines_of(data.best["candidate_id"], ev.get("timing"), ev)
        baselines["objective_label"] = best_out.get("objective_label")
    fig = figures(
        cells=data.elites,
        dims=data.dims,
        stats=data.curve,
        verdicts=data.verdicts,
        objective_label=data.objective_label,
        baselines=baselines,
        best=best,
    )
    page = environment().get_template("partials/report.html")
    return page.render(
        run_id=data.run_id,
        task_name=data.task_name,
        status=data.status,
        s=s,
        best_label=charts.label_text(best_out.get("objective_label")),
        label_text=charts.label_text(data.objective_label),
        css=Markup(CSS.read_text()),  # our own stylesheet, not user text
        fig=fig,
    )

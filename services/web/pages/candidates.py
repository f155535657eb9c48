"""Dashboard pages of candidates: one candidate, a run's lineage tree, two candidates compared.

``/candidates/{id}``
    The source with its parameters baked in (highlighted), the newest evaluation (verdict,
    messages, timing with the raw samples plotted, measured features, who measured it and
    whether that is verified), the diff against its first parent, its ancestors back to a
    seed and its children in the run.
``/runs/{id}/lineage``
    The run's candidates as a tree: each seed with its descendants nested by first parent
    (at most :data:`MAX_TREE_NODES` nodes; the page says how many were left out).
``/runs/{id}/compare?a=ID&b=ID``
    Two candidates of the run side by side: the diff ``a -> b`` and their metrics.

Another user's candidate or run is the 404 page, exactly like an unknown id (as in the API).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session, defer

from archive import lineage, repository
from archive.models import Candidate, Evaluation, Proposal, Run, User
from services.api.deps import SessionDep, find_run, may_see
from services.api.errors import NotFound
from services.api.schemas import MAX_ID
from services.runs.seeds import bake_params
from services.web.auth import WebUser
from services.web.highlight import highlight_python, unified_diff
from services.web.pages.common import not_found
from services.web.templating import render
from services.web.timing_view import SERIES, samples_plot, shown, timing_series

router = APIRouter(include_in_schema=False)

#: Most nodes the lineage page renders (a run of 10,000 candidates stays a light page).
MAX_TREE_NODES = 2000
#: Deepest nesting of the lineage tree; deeper descendants are listed flat, naming their parent.
MAX_TREE_DEPTH = 48


def parse_id(text: str | None) -> int | None:
    """``text`` as a row id (1 to :data:`~services.api.schemas.MAX_ID`), else None."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None


def ratio_of(objective: float | None) -> float | None:
    """The speedup an objective (a log-ratio) stands for."""
    return None if objective is None else math.exp(objective)


def baked_source(cand: Candidate) -> tuple[str, bool]:
    """The candidate's source with its parameters baked in, and whether baking worked (a
    source that does not parse is shown as stored)."""
    try:
        return bake_params(cand.source, dict(cand.params or {})), True
    except (SyntaxError, ValueError, TypeError):
        return cand.source, False


# -- queries -----------------------------------------------------------------------------------


def run_rows(session: Session, run_id: int) -> list[sa.Row[Any]]:
    """Every candidate the run proposed, by id, in one query: ``id, parent_ids, emitter, label``
    and its newest evaluation's ``verdict, objective, objective_label`` (None if unevaluated)."""
    proposed = sa.select(Proposal.candidate_id).where(Proposal.run_id == run_id)
    latest = (
        sa.select(Evaluation.candidate_id, sa.func.max(Evaluation.id).label("evaluation_id"))
        .where(Evaluation.candidate_id.in_(proposed))
        .group_by(Evaluation.candidate_id)
        .subquery()
    )
    stmt = (
        sa.select(
            Candidate.id,
            Candidate.parent_ids,
            Candidate.emitter,
            Candidate.label,
            Evaluation.verdict,
            Evaluation.objective,
            Evaluation.objective_label,
        )
        .select_from(Candidate)
        .outerjoin(latest, latest.c.candidate_id == Candidate.id)
        .outerjoin(Evaluation, Evaluation.id == latest.c.evaluation_id)
        .where(Candidate.id.in_(proposed))
        .order_by(Candidate.id)
    )
    return list(session.execute(stmt))


def _visible(session: Session, user: User, candidate_id: int) -> bool:
    return user.role == "admin" or repository.candidate_owned_by(session, candidate_id, user.id)


def _context_run(session: Session, user: User, cand: Candidate) -> Run:
    """The run the candidate is shown in: the one that first proposed it if the user may see
    that run, else the user's first run that proposed it again (a duplicate)."""
    run = session.get(Run, cand.run_id, options=[defer(Run.archive_state)])
    if run is not None and may_see(user, run.owner_id):
        return run
    stmt = (
        sa.select(Run)
        .join(Proposal, Proposal.run_id == Run.id)
        .where(Proposal.candidate_id == cand.id, Run.owner_id == user.id)
        .order_by(Run.id)
        .limit(1)
        .options(defer(Run.archive_state))
    )
    return session.scalars(stmt).one()


def _owned_run(request: Request, session: Session, user: User, run_id: str) -> Run | HTMLResponse:
    ident = parse_id(run_id)
    if ident is None:
        return not_found(request, "run", run_id)
    try:
        return find_run(session, user, ident)
    except NotFound:
        return not_found(request, "run", ident)


# -- what the candidate page shows -------------------------------------------------------------


def _evaluation_view(session: Session, ev: Evaluation | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    timing = ev.timing or {}
    series = timing_series(timing)
    candidate = next((s for s in series if s.name == "candidate"), None)
    floor_ms = timing.get("floor_ms")
    floor_fraction = (ev.features or {}).get("floor_fraction")
    if floor_fraction is None and floor_ms and candidate and candidate.median_ms:
        floor_fraction = floor_ms / candidate.median_ms
    return {
        "row": ev,
        "ratio": ratio_of(ev.objective),
        "series": series,
        "plot": samples_plot(series),
        "method": timing.get("method"),
        "floor_ms": floor_ms,
        "floor_basis": timing.get("floor_basis"),
        "floor_fraction": floor_fraction,
        "features": [(k, shown(v)) for k, v in sorted((ev.features or {}).items())],
        "hardware": (ev.hardware or {}).get("name"),
        "verification": lineage.verification(session, ev),
    }


@router.get("/candidates/{candidate_id}")
def candidate_page(
    request: Request, candidate_id: str, user: WebUser, session: SessionDep
) -> HTMLResponse:
    """One candidate of the user's runs (an admin's: any), with its evidence and lineage."""
    ident = parse_id(candidate_id)
    if ident is None:
        return not_found(request, "candidate", candidate_id)
    cand = session.get(Candidate, ident)
    if cand is None or not _visible(session, user, ident):
        return not_found(request, "candidate", ident)
    run = _context_run(session, user, cand)
    source, baked = baked_source(cand)
    evaluation = _evaluation_view(session, repository.latest_evaluation(session, cand.id))

    rows = run_rows(session, run.id)
    in_run = {r.id for r in rows}
    children = [r for r in rows if cand.id in (r.parent_ids or ()) and r.id != cand.id]
    parent_ids = [int(p) for p in cand.parent_ids or ()]
    parent = None
    diff = None
    if parent_ids:
        pid = parent_ids[0]
        row = session.get(Candidate, pid)
        if row is not None and (pid in in_run or _visible(session, user, pid)):
            parent = row
            diff = unified_diff(
                baked_source(row)[0], source, f"candidate {pid}", f"candidate {cand.id}"
            )
    return render(
        request,
        "candidate.html",
        title=f"Candidate {cand.id}",
        cand=cand,
        run=run,
        code=highlight_python(source),
        baked=baked,
        params=[(k, shown(v)) for k, v in (cand.params or {}).items()],
        evaluation=evaluation,
        parent_ids=parent_ids,
        parent=parent,
        diff=diff,
        ancestors=[
            {
                "id": s.candidate_id,
                "emitter": s.emitter,
                "label": s.label,
                "parent_ids": s.parent_ids,
            }
            for s in reversed(lineage.ancestors(session, cand.id))
        ],
        children=children,
    )


# -- the lineage tree --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TreeNode:
    """A node of the lineage tree: its row (see :func:`run_rows`), its speedup, and the parent
    it is named with when it is listed flat (deeper than :data:`MAX_TREE_DEPTH`) or when its
    first parent is outside the run."""

    row: sa.Row[Any]
    ratio: float | None
    parent_note: int | None = None


@dataclasses.dataclass(frozen=True)
class Tree:
    """The lineage tree as a flat list of tokens to render without recursion: ``("ul", None)``,
    ``("li", node)`` (opens an item and shows the node), ``("/li", None)``, ``("/ul", None)``."""

    tokens: list[tuple[str, TreeNode | None]]
    shown: int
    total: int
    seeds: int


def lineage_tree(rows: list[sa.Row[Any]], max_nodes: int = MAX_TREE_NODES) -> Tree:
    """The run's candidates nested under their first parent, seeds (and candidates whose first
    parent is not in the run) at the top, in id order; at most ``max_nodes`` nodes."""
    by_id = {r.id: r for r in rows}
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    outside: dict[int, int] = {}
    for r in rows:
        first = int(r.parent_ids[0]) if r.parent_ids else None
        if first is not None and first in by_id and first != r.id:
            children.setdefault(first, []).append(r.id)
        else:
            roots.append(r.id)
            if first is not None:
                outside[r.id] = first

    tokens: list[tuple[str, TreeNode | None]] = [("ul", None)]
    levels: list[Iterator[tuple[int, int | None]]] = [iter((i, outside.get(i)) for i in roots)]
    seen: set[int] = set()
    shown = 0
    while levels:
        nxt = next(levels[-1], None)
        if nxt is None:
            levels.pop()
            tokens.append(("/ul", None))
            if levels:
                tokens.append(("/li", None))
            continue
        if shown >= max_nodes:
            break
        cid, note = nxt
        if cid in seen:
            continue
        seen.add(cid)
        row = by_id[cid]
        tokens.append(("li", TreeNode(row, ratio_of(row.objective), note)))
        shown += 1
        kids = children.get(cid, [])
        if kids and len(levels) < MAX_TREE_DEPTH:
            tokens.append(("ul", None))
            levels.append(iter((k, None) for k in kids))
            continue
        tokens.append(("/li", None))
        if kids:  # too deep to nest: list them next, flat, each naming its parent
            levels[-1] = itertools.chain(((k, cid) for k in kids), levels[-1])
    for depth in range(len(levels), 0, -1):  # cut short: close what is open
        tokens.append(("/ul", None))
        if depth > 1:
            tokens.append(("/li", None))
    return Tree(tokens, shown, len(rows), len(roots))


@router.get("/runs/{run_id}/lineage")
def lineage_page(request: Request, run_id: str, user: WebUser, session: SessionDep) -> HTMLResponse:
    """The run's whole lineage as a tree (seeds first, descendants nested by first parent)."""
    run = _owned_run(request, session, user, run_id)
    if isinstance(run, HTMLResponse):
        return run
    tree = lineage_tree(run_rows(session, run.id))
    return render(request, "lineage.html", title=f"Lineage of run {run.id}", run=run, tree=tree)


# -- two candidates compared -------------------------------------------------------------------


def _metric_rows(evs: list[Evaluation | None]) -> list[tuple[str, list[str]]]:
    """The metrics table of the compare page: (what, [value of a, value of b])."""

    def each(fn) -> list[str]:
        return ["n/a" if ev is None else fn(ev) for ev in evs]

    def num(v: float | None, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:.4g}{unit}"

    def median(ev: Evaluation, key: str) -> str:
        stats = (ev.timing or {}).get(key)
        return num(stats.get("median_ms") if isinstance(stats, dict) else None, " ms")

    rows = [
        ("verdict", each(lambda ev: ev.verdict)),
        (
            "ratio",
            each(
                lambda ev: (
                    "n/a"
                    if ev.objective is None
                    else f"{math.exp(ev.objective):.3g}x ({ev.objective_label})"
                )
            ),
        ),
        ("speedup vs eager", each(lambda ev: num(ev.speedup_vs_eager, "x"))),
        ("speedup vs torch.compile", each(lambda ev: num(ev.speedup_vs_compile, "x"))),
    ]
    for key, name in SERIES[:3]:
        rows.append((f"median {name}", each(lambda ev, key=key: median(ev, key))))
    keys = sorted({k for ev in evs if ev is not None for k in (ev.features or {})})
    for k in keys:
        rows.append(
            (k, each(lambda ev, k=k: shown(ev.features[k]) if k in (ev.features or {}) else "-"))
        )
    return rows


def _compare_error(request: Request, run: Run, message: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        status_code=422,
        title="Cannot compare",
        message=f"{message}: open /runs/{run.id}/compare?a=ID&b=ID with two candidate ids of"
        f" run {run.id}",
    )


@router.get("/runs/{run_id}/compare")
def compare_page(
    request: Request,
    run_id: str,
    user: WebUser,
    session: SessionDep,
    a: str | None = None,
    b: str | None = None,
) -> HTMLResponse:
    """Candidates ``a`` and ``b`` of the run side by side: the diff ``a -> b`` and metrics."""
    run = _owned_run(request, session, user, run_id)
    if isinstance(run, HTMLResponse):
        return run
    ids = {}
    for name, text in (("a", a), ("b", b)):
        if text is None or not text.strip():
            return _compare_error(request, run, f"{name} is missing")
        ident = parse_id(text.strip())
        if ident is None:
            return _compare_error(request, run, f"{name} is not a candidate id")
        ids[name] = ident
    found = set(
        session.scalars(
            sa.select(Proposal.candidate_id).where(
                Proposal.run_id == run.id, Proposal.candidate_id.in_(set(ids.values()))
            )
        )
    )
    for name, ident in ids.items():
        if ident not in found:
            return _compare_error(request, run, f"{name}: no candidate {ident} in run {run.id}")
    cands = [session.get(Candidate, ids["a"]), session.get(Candidate, ids["b"])]
    evs = [repository.latest_evaluation(session, c.id) for c in cands]
    sources = [baked_source(c)[0] for c in cands]
    diff = unified_diff(
        sources[0], sources[1], f"candidate {cands[0].id}", f"candidate {cands[1].id}"
    )
    params = sorted({k for c in cands for k in (c.params or {})})
    return render(
        request,
        "compare.html",
        title=f"Compare {cands[0].id} and {cands[1].id}",
        run=run,
        cands=cands,
        diff=diff,
        params=[
            (k, [shown(c.params[k]) if k in (c.params or {}) else "-" for c in cands])
            for k in params
        ],
        metrics=_metric_rows(evs),
    )

"""Dashboard pages: the runs list (live; upload a task, start a run) and a run's page (its map,
curves, verdicts, baselines, best kernel; pause, resume, cancel; live while it runs).

Every form does what its API route does, through the same functions
(:func:`services.api.routes.tasks.store_upload`, :func:`services.api.routes.runs.
start_queued_run`, :func:`~services.api.routes.runs.act_on_run`,
:func:`~services.api.routes.runs.best_file`), so a page's errors are the API's, shown next
to the field they name. Ownership is the API's too (:func:`services.api.deps.owner_filter`,
:func:`~services.api.deps.find_run`): another user's run is the same 404 page as an unknown one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from archive import repository
from archive.models import Run, User
from archive.run_control import ACTIVE, TRANSITIONS
from evolution.emitters import VARIATIONS
from kernelmap_errors import KernelmapError
from services.api.deps import ConfigDep, SessionDep, find_run, owner_filter
from services.api.errors import (
    ApiError,
    NotFound,
    Unprocessable,
    status_of,
    task_file_too_large,
)
from services.api.routes.runs import act_on_run, best_file, start_queued_run
from services.api.routes.tasks import store_upload
from services.api.schemas import MAX_ID, RunCreate
from services.runs import views
from services.runs.html_report import figures
from services.runs.seeds import bake_params
from services.web.auth import WebUser, check_csrf
from services.web.pages.common import not_found
from services.web.templating import render

router = APIRouter(include_in_schema=False)

#: Runs per page of the list.
PAGE = 50
#: Emitters the start form offers (``templates`` and the schedule variations).
EMITTERS = ("templates", *VARIATIONS)
DEFAULT_EMITTERS = ("templates", "gaussian")
#: Room for the multipart framing and the other fields around an uploaded file.
UPLOAD_SLACK_BYTES = 64 * 1024


# -- the runs list -----------------------------------------------------------------------------


def _live_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the list's live updates fill in (texts as the page shows them)."""
    return [
        {
            "id": r["run_id"],
            "status": r["status"],
            "evaluations": r["evaluations"],
            "progress": r["progress"],
            "elites": r["elites"],
            "best": "n/a" if r["best_ratio"] is None else f"{r['best_ratio']:.3g}x",
            "best_label": r["best_label"],
            "coverage": f"{100 * r['coverage']:.1f}%",
            "qd_score": f"{r['qd_score']:.3g}",
        }
        for r in rows
    ]


def _page_rows(session: Session, user: User, offset: int) -> tuple[list[dict[str, Any]], int]:
    owner = owner_filter(user)
    runs = repository.list_owned_runs(session, owner, limit=PAGE, offset=offset)
    return views.run_rows(session, runs), repository.count_owned_runs(session, owner)


def _runs_page(
    request: Request,
    session: Session,
    user: User,
    *,
    offset: int = 0,
    status_code: int = 200,
    start: dict[str, Any] | None = None,
    start_errors: dict[str, str] | None = None,
    upload_errors: dict[str, str] | None = None,
    upload_name: str = "",
    notice: str | None = None,
) -> Response:
    rows, total = _page_rows(session, user, offset)
    tasks = repository.list_tasks(session, owner_filter(user), limit=200)
    chosen = start or {}
    return render(
        request,
        "runs.html",
        status_code=status_code,
        title="Runs",
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE,
        live=any(r["status"] in ACTIVE for r in rows),
        tasks=tasks,
        emitters=EMITTERS,
        start={
            "task_id": str(chosen.get("task_id", tasks[0].id if tasks else "")),
            "budget": str(chosen.get("budget", "50")),
            "hardware": str(chosen.get("hardware", "")),
            "emitters": list(chosen.get("emitters", DEFAULT_EMITTERS)),
            "descriptors": str(chosen.get("descriptors", "")),
        },
        start_errors=start_errors or {},
        upload_errors=upload_errors or {},
        upload_name=upload_name,
        notice=notice,
        default_hardware=request.app.state.api.default_hardware,
    )


@router.get("/runs")
def runs_list(
    request: Request,
    user: WebUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    task: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """Your runs, newest first (an admin's: every run), with the upload and start forms."""
    notice = None if task is None else f"task {task} uploaded: start a run on it below"
    start = None if task is None else {"task_id": task}
    return _runs_page(request, session, user, offset=offset, start=start, notice=notice)


@router.get("/runs/live.json")
def runs_live(
    user: WebUser,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JSONResponse:
    """The rows of a page of the list, for its live updates; ``live`` false once none of them
    is queued or running."""
    rows, total = _page_rows(session, user, offset)
    return JSONResponse(
        {
            "live": any(r["status"] in ACTIVE for r in rows),
            "total": total,
            "rows": _live_rows(rows),
        }
    )


def _field_of(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    return loc[0] if loc else "form"


@router.post("/runs")
def start_run(
    request: Request,
    user: WebUser,
    session: SessionDep,
    config: ConfigDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    task_id: Annotated[str, Form(max_length=20)] = "",
    budget: Annotated[str, Form(max_length=20)] = "",
    hardware: Annotated[str, Form(max_length=100)] = "",
    emitters: Annotated[list[str] | None, Form(max_length=10)] = None,
    descriptors: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Start a run from the form: the API's ``RunCreate`` and ``POST /runs``; each error next
    to its field (422, the values kept), else to the new run's page."""
    check_csrf(request, csrf_token)
    form = {
        "task_id": task_id,
        "budget": budget,
        "hardware": hardware,
        "emitters": list(emitters or []),
        "descriptors": descriptors,
    }
    body: dict[str, Any] = {
        "task_id": task_id.strip(),
        "budget": budget.strip(),
        "emitters": list(emitters or []),
    }
    if hardware.strip():
        body["hardware"] = hardware.strip()
    dims = [d.strip() for d in descriptors.replace(" ", ",").split(",") if d.strip()]
    if dims:
        body["descriptors"] = dims
    errors: dict[str, str] = {}
    try:
        request_body = RunCreate.model_validate(body)
    except ValidationError as e:
        for err in e.errors():
            errors.setdefault(_field_of(err), err["msg"])
    else:
        try:
            run = start_queued_run(session, user, config, request_body)
        except NotFound as e:
            session.rollback()
            errors["task_id"] = str(e)
        except KernelmapError as e:
            session.rollback()
            errors[str(getattr(e, "extra", {}).get("field") or "form")] = str(e)
        else:
            return RedirectResponse(f"/runs/{run.id}", status_code=303)
    return _runs_page(request, session, user, status_code=422, start=form, start_errors=errors)


@router.post("/tasks/upload")
async def upload_task(request: Request, user: WebUser, config: ConfigDep) -> Response:
    """Upload a task from the form: what ``POST /api/v1/tasks`` does (size limit, UTF-8,
    validation in a sandboxed child process); the validator's message next to the file."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > config.max_task_bytes + UPLOAD_SLACK_BYTES:
        # Refused before reading: the body is not parsed (nor spooled to disk).
        too_large = task_file_too_large(config.max_task_bytes)
        return await _upload_refused(request, user, config, too_large, "")
    form = await request.form(max_files=1, max_fields=5)
    check_csrf(request, str(form.get("csrf_token") or ""))
    file = form.get("file")
    name = str(form.get("name") or "")
    if not isinstance(file, UploadFile) or not file.filename:
        error = Unprocessable("choose a task file to upload", field="file")
        return await _upload_refused(request, user, config, error, name)
    try:
        task = await run_in_threadpool(
            store_upload, config, user, file.file, file.filename, name or None
        )
    except KernelmapError as e:
        return await _upload_refused(request, user, config, e, name)
    finally:
        await file.close()
    return RedirectResponse(f"/runs?task={task.id}#start", status_code=303)


async def _upload_refused(
    request: Request, user: User, config, error: KernelmapError, name: str
) -> Response:
    field = str(getattr(error, "extra", {}).get("field") or "file")

    def page() -> Response:
        with config.session_factory() as session:
            return _runs_page(
                request,
                session,
                user,
                status_code=status_of(error),
                upload_errors={field: str(error)},
                upload_name=name,
            )

    return await run_in_threadpool(page)


# -- a run's page ------------------------------------------------------------------------------


def _owned(session: Session, user: User, run_id: int) -> Run | None:
    if not 1 <= run_id <= MAX_ID:
        return None
    try:
        return find_run(session, user, run_id)
    except NotFound:
        return None


def _live(summary: dict[str, Any]) -> dict[str, Any]:
    """What a run page's live updates fill in."""
    best = summary["best"]
    budget = summary["budget"]
    return {
        "live": summary["status"] in ACTIVE,
        "status": summary["status"],
        "stop_reason_text": summary["stop_reason_text"] or "",
        "evaluations": summary["evaluations"],
        "budget": budget,
        "progress": min(1.0, summary["evaluations"] / budget) if budget else 0.0,
        "elites": summary["elites"],
        "coverage": f"{100 * summary['coverage']:.1f}%",
        "qd_score": f"{summary['qd_score']:.3g}",
        "best": "n/a" if best is None else f"{best['ratio']:.3g}x",
        "best_label": "" if best is None else best["objective_label"],
        "verdicts": summary["verdicts"],
        "counts": summary["counts"],
    }


def _best(session: Session, summary: dict[str, Any]) -> dict[str, Any] | None:
    best = summary["best"]
    if best is None:
        return None
    cand = repository.get_candidate(session, best["candidate_id"])
    ev = repository.latest_evaluation(session, cand.id)
    return {
        "candidate_id": cand.id,
        "verdict": best["verdict"],
        "ratio": best["ratio"],
        "objective_label": best["objective_label"],
        "label": cand.label,
        "params": dict(cand.params),
        "messages": [str(m) for m in (ev.messages if ev else [])],
        "source": bake_params(cand.source, dict(cand.params)),
    }


def _run_page(
    request: Request,
    session: Session,
    run: Run,
    *,
    z: int = 0,
    status_code: int = 200,
    refused: str | None = None,
) -> Response:
    summary = views.run_summary(session, run.id)
    dims = views.map_dims(run)
    if len(dims) > 2:
        z = min(max(0, z), dims[2]["bins"] - 1)
    fig = figures(
        cells=views.map_cells(session, run.id),
        dims=dims,
        stats=views.progress_points(session, run.id),
        verdicts=summary["verdicts"],
        objective_label=run.objective_label,
        baselines=views.best_baselines(session, run.id),
        best=_best(session, summary),
        z=z,
        candidate_link="/candidates/",
        download=f"/runs/{run.id}/best.py",
    )
    actions = [a for a, (allowed, _) in TRANSITIONS.items() if run.status in allowed]
    return render(
        request,
        "run.html",
        status_code=status_code,
        title=f"Run {run.id}",
        run=run,
        s=summary,
        live=_live(summary),
        fig=fig,
        actions=actions,
        refused=refused,
    )


@router.get("/runs/{run_id}")
def run_page(
    request: Request,
    run_id: int,
    user: WebUser,
    session: SessionDep,
    z: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> Response:
    """A run: status, progress, map (a slice ``z`` of a third dimension), curves, verdicts,
    baselines, best kernel, controls."""
    run = _owned(session, user, run_id)
    if run is None:
        return not_found(request, "run", run_id)
    return _run_page(request, session, run, z=z)


@router.get("/runs/{run_id}/live.json")
def run_live(request: Request, run_id: int, user: WebUser, session: SessionDep) -> Response:
    """A run's status and progress for its page's live updates (``live`` false once it is
    neither queued nor running)."""
    run = _owned(session, user, run_id)
    if run is None:
        return JSONResponse({"detail": f"no run with id {run_id} among yours"}, status_code=404)
    return JSONResponse(_live(views.run_summary(session, run.id)))


@router.get("/runs/{run_id}/best.py")
def run_best(request: Request, run_id: int, user: WebUser, session: SessionDep) -> Response:
    """The run's best kernel as a file (what ``GET /api/v1/runs/{id}/best.py`` sends)."""
    run = _owned(session, user, run_id)
    if run is None:
        return not_found(request, "run", run_id)
    try:
        return best_file(session, run.id)
    except NotFound as e:
        return render(
            request, "error.html", status_code=404, title="Nothing to export", message=str(e)
        )


def _control(action: str):
    def control(
        request: Request,
        run_id: int,
        user: WebUser,
        session: SessionDep,
        config: ConfigDep,
        csrf_token: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        check_csrf(request, csrf_token)
        run = _owned(session, user, run_id)
        if run is None:
            return not_found(request, "run", run_id)
        try:
            act_on_run(session, config, run.id, action)
        except ApiError as e:
            session.rollback()
            run = _owned(session, user, run_id)
            return _run_page(request, session, run, status_code=status_of(e), refused=str(e))
        return RedirectResponse(f"/runs/{run.id}", status_code=303)

    control.__name__ = f"{action}_run"
    control.__doc__ = f"The run page's {action} button (the API's ``POST /runs/{{id}}/{action}``)."
    return control


for _action in TRANSITIONS:
    router.add_api_route(f"/runs/{{run_id}}/{_action}", _control(_action), methods=["POST"])

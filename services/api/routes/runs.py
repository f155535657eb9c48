"""``/runs``: start a search on your task, follow it, browse its archive, export its best."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from archive import repository, run_control
from archive.models import Run, User
from evaluator_worker.verdict import Verdict
from services.api.deps import (
    ApiConfig,
    ConfigDep,
    CurrentUser,
    OwnedRun,
    PageDep,
    SessionDep,
    find_task,
    owner_filter,
)
from services.api.errors import Conflict, ErrorBody, NotFound
from services.api.launch import check_hardware, create_queued_run
from services.api.schemas import (
    ArchiveOut,
    CandidateItem,
    Page,
    RunCreate,
    RunCreated,
    RunOut,
    RunStatusOut,
    RunSummary,
)
from services.runs import views
from services.runs.config import RunConfig
from services.runs.seeds import bake_params

log = logging.getLogger(__name__)

router = APIRouter(prefix="/runs", tags=["runs"])


def hand_to_controller(config: ApiConfig, run_id: int) -> None:
    """Call the app's ``start_run`` hook for a run just created or changed (if it has one)."""
    if config.start_run is None:
        return
    try:
        config.start_run(run_id)
    except Exception:
        # The run is stored: the controller picks queued runs up and notices changes on its own.
        log.exception("handing run %s to the controller failed; it notices on its own", run_id)


def start_queued_run(session: Session, user: User, config: ApiConfig, body: RunCreate) -> Run:
    """Create (and commit) a ``queued`` run on one of ``user``'s tasks and hand it to the
    controller: what ``POST /runs`` and the dashboard's start form both do.

    Raises :class:`NotFound` for a task the user may not see, :class:`Unprocessable` (with its
    ``field``) for a hardware class no worker serves, bad emitters, descriptors or seeds.
    """
    task = find_task(session, user, body.task_id)
    hardware = body.hardware or config.default_hardware
    check_hardware(session, config.settings, hardware)
    run = create_queued_run(
        session,
        user,
        task,
        budget=body.budget,
        hardware=hardware,
        seed_sources=body.seed_candidates,
        timeout_s=config.settings.timeout_s,
        emitters=body.emitters,
        descriptors=body.descriptors,
        llm=body.llm.model_dump() if body.llm is not None else None,
        settings=config.settings,
    )
    session.commit()
    hand_to_controller(config, run.id)
    return run


@router.post("", status_code=201, response_model=RunCreated)
def create_run(
    body: RunCreate, session: SessionDep, user: CurrentUser, config: ConfigDep
) -> RunCreated:
    """Create a ``queued`` run on one of your tasks and hand it to the controller."""
    run = start_queued_run(session, user, config, body)
    return RunCreated(id=run.id, status=run.status)


@router.get("", response_model=Page[RunOut])
def list_runs(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[RunOut]:
    """Your runs, newest first (an admin sees every run)."""
    owner = owner_filter(user)
    rows = repository.list_owned_runs(session, owner, limit=page.limit, offset=page.offset)
    return Page[RunOut](
        items=[RunOut.model_validate(r, from_attributes=True) for r in rows],
        total=repository.count_owned_runs(session, owner),
        limit=page.limit,
        offset=page.offset,
    )


def act_on_run(session: Session, config: ApiConfig, run_id: int, action: str) -> Run:
    """Pause, resume or cancel a run (committed) and wake the controller: what the API's
    action routes and the dashboard's buttons both do. :class:`Conflict` (409) when the
    action does not apply to the run's status."""
    try:
        run = run_control.apply_action(session, run_id, action)
    except run_control.TransitionError as e:
        raise Conflict(str(e)) from None
    session.commit()
    hand_to_controller(config, run.id)  # wakes the controller: it stops or starts the run now
    return run


def _act(run, session, config, action: str) -> RunStatusOut:
    run = act_on_run(session, config, run.id, action)
    return RunStatusOut(id=run.id, status=run.status)


_CONFLICT = {409: {"model": ErrorBody, "description": "The run is not in a state for this"}}


@router.post("/{run_id}/pause", response_model=RunStatusOut, responses=_CONFLICT)
def pause_run(run: OwnedRun, session: SessionDep, config: ConfigDep) -> RunStatusOut:
    """Pause a queued or running run: its jobs in flight finish, nothing new is dispatched."""
    return _act(run, session, config, "pause")


@router.post("/{run_id}/resume", response_model=RunStatusOut, responses=_CONFLICT)
def resume_run(run: OwnedRun, session: SessionDep, config: ConfigDep) -> RunStatusOut:
    """Queue a paused (or failed) run again; the search continues where it stopped."""
    return _act(run, session, config, "resume")


@router.post("/{run_id}/cancel", response_model=RunStatusOut, responses=_CONFLICT)
def cancel_run(run: OwnedRun, session: SessionDep, config: ConfigDep) -> RunStatusOut:
    """End a run for good; what it found so far stays browsable."""
    return _act(run, session, config, "cancel")


@router.get("/{run_id}", response_model=RunSummary)
def get_run(run: OwnedRun, session: SessionDep) -> RunSummary:
    """The run's status and progress: evaluations, elites, coverage, QD score, best."""
    summary = views.run_summary(session, run.id)
    return RunSummary(id=run.id, **summary)


@router.get("/{run_id}/archive", response_model=ArchiveOut)
def get_archive(run: OwnedRun, session: SessionDep) -> ArchiveOut:
    """The occupied cells with their elites and descriptor values, best first."""
    cells = views.archive_table(session, run.id)
    dims = RunConfig.from_json(run.config).dims
    return ArchiveOut.model_validate({"run_id": run.id, "dims": dims, "cells": cells})


@router.get("/{run_id}/candidates", response_model=Page[CandidateItem])
def list_candidates(
    run: OwnedRun,
    session: SessionDep,
    page: PageDep,
    verdict: Annotated[
        Verdict | None, Query(description="Only this verdict (e.g. OK, INCORRECT)")
    ] = None,
) -> Page[CandidateItem]:
    """The candidates the run proposed, by id, each with its newest verdict."""
    rows = repository.candidates_of_run(
        session,
        run.id,
        verdict=None if verdict is None else verdict.value,
        limit=page.limit,
        offset=page.offset,
    )
    items = [
        CandidateItem(
            id=c.id,
            emitter=c.emitter,
            label=c.label,
            params=dict(c.params),
            parent_ids=list(c.parent_ids),
            verdict=e.verdict if e else None,
            objective=e.objective if e else None,
            speedup_vs_eager=e.speedup_vs_eager if e else None,
        )
        for c, e in rows
    ]
    return Page[CandidateItem](
        items=items,
        total=repository.count_candidates_of_run(
            session, run.id, None if verdict is None else verdict.value
        ),
        limit=page.limit,
        offset=page.offset,
    )


@router.get(
    "/{run_id}/best.py",
    response_class=Response,
    responses={200: {"content": {"text/x-python": {}}, "description": "The best kernel"}},
)
def get_best(run: OwnedRun, session: SessionDep) -> Response:
    """The run's best correct kernel as a standalone file, its parameters baked in."""
    return best_file(session, run.id)


def best_file(session: Session, run_id: int) -> Response:
    """The run's best correct kernel as a ``best.py`` download (the API's and the dashboard's);
    :class:`NotFound` while the run has no correct candidate."""
    best = repository.best_elite(session, run_id)
    if best is None:
        raise NotFound(f"run {run_id} has no correct candidate yet: nothing to export")
    cand = repository.get_candidate(session, best.candidate_id)
    return Response(
        bake_params(cand.source, dict(cand.params)),
        media_type="text/x-python",
        headers={"Content-Disposition": f'attachment; filename="run_{run_id}_best.py"'},
    )

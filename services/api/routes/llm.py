"""LLM search over the API: the models the server offers, and each run's requests.

``GET /llm/models`` says whether LLM search is available and which models a run may ask for (in
``POST /runs``' ``llm.models``); the endpoint's URL and key are never shown. A run's requests
(``GET /runs/{run_id}/llm/requests``) list what its emitter asked and what came of each; one
request whole holds its prompt and the model's reply. Runs are their owner's (and an admin's).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from archive import llm_report
from services.api.deps import ConfigDep, CurrentUser, OwnedRun, PageDep, SessionDep
from services.api.errors import NotFound
from services.api.schemas import (
    LlmModelOut,
    LlmModelsOut,
    LlmRequestDetail,
    LlmRequestItem,
    Page,
)
from services.llm.config import LlmConfigError

router = APIRouter(tags=["llm"])


@router.get("/llm/models", response_model=LlmModelsOut)
def llm_models(user: CurrentUser, config: ConfigDep) -> LlmModelsOut:
    """The models LLM search may use here, and the caps a run is held to."""
    settings = config.settings
    caps = {
        "max_requests": settings.llm_max_requests,
        "max_total_tokens": settings.llm_max_total_tokens,
        "max_cost": settings.llm_max_cost,
    }
    try:
        endpoint = settings.llm_endpoint()
    except LlmConfigError as e:
        return LlmModelsOut(available=False, reason=str(e), models=[], **caps)
    models = [
        LlmModelOut(name=m.name, weight=m.weight, priced=endpoint.price(m.name) is not None)
        for m in endpoint.models
    ]
    return LlmModelsOut(available=True, reason=None, models=models, **caps)


@router.get("/runs/{run_id}/llm/requests", response_model=Page[LlmRequestItem])
def list_llm_requests(run: OwnedRun, session: SessionDep, page: PageDep) -> Page[LlmRequestItem]:
    """The run's LLM requests, newest first, without prompts and replies."""
    rows = llm_report.llm_requests(session, run.id, limit=page.limit, offset=page.offset)
    return Page[LlmRequestItem](
        items=[LlmRequestItem.model_validate(r) for r in rows],
        total=llm_report.count_llm_requests(session, run.id),
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/runs/{run_id}/llm/requests/{request_id}", response_model=LlmRequestDetail)
def get_llm_request(
    run: OwnedRun,
    session: SessionDep,
    request_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,32}$", description="e.g. llm-3")],
) -> LlmRequestDetail:
    """One LLM request whole: the prompt sent and the reply as the model wrote it."""
    row = llm_report.llm_request(session, run.id, request_id)
    if row is None:
        raise NotFound(f"run {run.id} has no LLM request {request_id!r}")
    return LlmRequestDetail.model_validate(row)

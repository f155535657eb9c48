"""``/candidates/{id}``: one candidate of your runs with its source and newest evaluation."""

from __future__ import annotations

from fastapi import APIRouter

from archive import repository
from archive.models import Candidate
from services.api.deps import CurrentUser, PathId, SessionDep
from services.api.errors import NotFound
from services.api.schemas import CandidateDetail, EvaluationOut

router = APIRouter(prefix="/candidates", tags=["candidates"])


@router.get("/{candidate_id}", response_model=CandidateDetail)
def get_candidate(candidate_id: PathId, session: SessionDep, user: CurrentUser) -> CandidateDetail:
    """A candidate one of your runs proposed: source, parameters, parents, evaluation."""
    cand = session.get(Candidate, candidate_id)
    visible = cand is not None and (
        user.role == "admin" or repository.candidate_owned_by(session, candidate_id, user.id)
    )
    if not visible:
        raise NotFound(f"no candidate with id {candidate_id} in your runs")
    ev = repository.latest_evaluation(session, cand.id)
    return CandidateDetail(
        id=cand.id,
        task_id=cand.task_id,
        run_id=cand.run_id,
        source=cand.source,
        params=dict(cand.params),
        parent_ids=list(cand.parent_ids),
        emitter=cand.emitter,
        label=cand.label,
        evaluation=EvaluationOut.model_validate(ev) if ev else None,
    )

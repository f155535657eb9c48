"""``/candidates/{id}``: one candidate of your runs: source, lineage, newest evaluation."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from archive import lineage, repository
from archive.models import Candidate
from services.api.deps import CurrentUser, PathId, SessionDep
from services.api.errors import NotFound
from services.api.schemas import CandidateDetail, EvaluationOut, LineageStep, VerificationOut

router = APIRouter(prefix="/candidates", tags=["candidates"])


@router.get("/{candidate_id}", response_model=CandidateDetail)
def get_candidate(candidate_id: PathId, session: SessionDep, user: CurrentUser) -> CandidateDetail:
    """A candidate one of your runs proposed: source, parameters, parents, the ancestors back to
    a seed (``lineage``), and its newest evaluation with whether it was ``verification``-ed."""
    cand = session.get(Candidate, candidate_id)
    visible = cand is not None and (
        user.role == "admin" or repository.candidate_owned_by(session, candidate_id, user.id)
    )
    if not visible:
        raise NotFound(f"no candidate with id {candidate_id} in your runs")
    ev = repository.latest_evaluation(session, cand.id)
    evaluation = None
    if ev is not None:
        evaluation = EvaluationOut.model_validate(ev)
        checked = lineage.verification(session, ev)
        evaluation.verification = VerificationOut(**dataclasses.asdict(checked))
    return CandidateDetail(
        id=cand.id,
        task_id=cand.task_id,
        run_id=cand.run_id,
        source=cand.source,
        params=dict(cand.params),
        parent_ids=list(cand.parent_ids),
        emitter=cand.emitter,
        label=cand.label,
        evaluation=evaluation,
        lineage=[
            LineageStep(**dataclasses.asdict(step)) for step in lineage.ancestors(session, cand.id)
        ],
    )

"""Where a candidate comes from: the ancestors it was bred from, and who measured its result.

:func:`ancestors` follows ``parent_ids`` back to a seed (a candidate with no parents) in two
queries, whatever the depth: a recursive query walks the chain of first parents, a second reads
the steps. :func:`verification` says whether an evaluation is a trusted worker's measurement, a
remote worker's unverified claim, or a trusted re-measure of such a claim (see
:mod:`evolution.verification`), from what the evaluations store and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.models import Candidate, Evaluation
from evolution.ports import UNVERIFIED, VERIFICATION

#: Most ancestors returned: a chain longer than this (or a cycle) is cut there.
MAX_DEPTH = 1000
#: How :func:`archive.leases.stored_result` names the remote worker of a result.
REMOTE_WORKER_PREFIX = "remote:"

VerificationStatus = Literal["trusted", "unverified", "verified"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One ancestor: its id, the emitter that proposed it, its label and all its parents."""

    candidate_id: int
    emitter: str
    label: str
    parent_ids: tuple[int, ...]


def ancestors(session: Session, candidate_id: int, max_depth: int = MAX_DEPTH) -> list[Step]:
    """The candidate's ancestors, its parent first and a seed last, by first parents.

    Parameters
    ----------
    candidate_id:
        The candidate whose ancestors are wanted (not itself part of the answer).
    max_depth:
        Most ancestors returned. A cycle in ``parent_ids`` (which the search never makes, but a
        hand-edited database might) ends the list before its first repeat.

    Returns
    -------
    list[Step]
        Empty for a seed (or an unknown id). A parent id that names no stored candidate ends
        the list there.
    """
    first_parent = Candidate.parent_ids[0].as_integer()
    chain = (
        sa.select(first_parent.label("id"), sa.literal(1).label("depth"))
        .where(Candidate.id == candidate_id)
        .cte("chain", recursive=True)
    )
    chain = chain.union_all(
        sa.select(first_parent, chain.c.depth + 1)
        .join(chain, Candidate.id == chain.c.id)
        .where(chain.c.depth < max_depth)
    )
    ids = list(session.scalars(sa.select(chain.c.id).order_by(chain.c.depth)))
    rows = {
        row.id: row
        for row in session.execute(
            sa.select(Candidate.id, Candidate.emitter, Candidate.label, Candidate.parent_ids).where(
                Candidate.id.in_({i for i in ids if i is not None})
            )
        )
    }
    steps: list[Step] = []
    seen = {candidate_id}
    for cid in ids:
        if cid is None or cid in seen or cid not in rows:
            break
        seen.add(cid)
        row = rows[cid]
        steps.append(Step(cid, row.emitter, row.label, tuple(row.parent_ids or ())))
    return steps


@dataclasses.dataclass(frozen=True)
class Verification:
    """Whether an evaluation's numbers can be trusted, and on whose word.

    ``status``: ``trusted`` (a worker kernelmap controls measured it: a cluster worker or this
    machine), ``unverified`` (a remote worker's own claim), or ``verified`` (a trusted
    measurement of a candidate a remote worker had claimed first). ``by``: the worker that
    measured this evaluation, as stored (None for an in-process evaluation). ``remote_worker_id``:
    the enrolled remote worker of an unverified claim (``GET /workers``). ``claimed_by``: for
    ``verified``, the remote worker whose claim was measured again. ``reason``: for
    ``unverified``, why no trusted worker re-measured it, when the server recorded why.
    """

    status: VerificationStatus
    by: str | None
    remote_worker_id: int | None = None
    claimed_by: str | None = None
    reason: str | None = None


def verification(session: Session, evaluation: Evaluation) -> Verification:
    """How ``evaluation`` was verified: see :class:`Verification` (at most one query)."""
    result = evaluation.result or {}
    if result.get(UNVERIFIED):
        worker_id = result.get("remote_worker_id")
        reason = result.get(VERIFICATION)
        return Verification(
            "unverified",
            evaluation.worker,
            remote_worker_id=worker_id if isinstance(worker_id, int) else None,
            reason=reason if isinstance(reason, str) else None,
        )
    claim = session.scalar(
        sa.select(Evaluation.worker)
        .where(
            Evaluation.candidate_id == evaluation.candidate_id,
            Evaluation.id < evaluation.id,
            Evaluation.worker.startswith(REMOTE_WORKER_PREFIX),
        )
        .order_by(Evaluation.id.desc())
        .limit(1)
    )
    if claim is None:
        return Verification("trusted", evaluation.worker)
    return Verification("verified", evaluation.worker, claimed_by=claim)

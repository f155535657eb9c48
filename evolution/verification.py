"""Verifying a remote worker's result: its timing is a claim until a trusted worker re-measures it.

A remote worker runs on a machine kernelmap does not control, so the server marks what it
reports :data:`~evolution.ports.UNVERIFIED`. The search loop lets such a claim into the map only
through a trusted re-measure:

- A claim that would change the map (a new or better elite) is held back by the
  :class:`Verifier`, and a job marked ``trusted_only`` measures the candidate again; that
  measurement is what the map takes and what the waiting emitters are told. Further claims for
  the same candidate wait for the same re-measure.
- A claim that would not change the map is learned as it is: being told it lost costs nothing.
- A claim that no trusted worker could re-measure comes back marked
  :data:`~evolution.ports.VERIFICATION` (why) and is then taken as it is, marked.
- A result an earlier session's job delivers late has no spec in this session, so it cannot be
  re-measured and is learned as it is.
- On resume, claims never re-measured stay out of the rebuilt map and are considered again, as
  they were live (:func:`split_claims`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evolution.candidate import CandidateSpec
from evolution.emitters.base import Waiters
from evolution.grid import Decision
from evolution.ports import UNVERIFIED, VERIFICATION

Row = tuple[int, CandidateSpec, dict[str, Any]]


def needs_verification(result: dict[str, Any]) -> bool:
    """A remote worker's result that no trusted worker has re-measured (nor could)."""
    return bool(result.get(UNVERIFIED)) and not result.get(VERIFICATION)


def must_verify(result: dict[str, Any], decision: Decision, spec: CandidateSpec | None) -> bool:
    """Whether ``result`` waits for a trusted re-measure before the map takes it.

    True for an unverified claim that would change the map, of a candidate whose spec this
    session knows (without one there is nothing to dispatch).
    """
    return decision.changes_archive and needs_verification(result) and spec is not None


def split_claims(
    evaluated: Sequence[Row],
) -> tuple[list[Row], dict[int, tuple[CandidateSpec, dict[str, Any]]]]:
    """Split a run's stored evaluations (``Store.evaluated()``) for resume.

    Returns
    -------
    rows:
        The evaluations the map is rebuilt from, in stored order: everything but unverified
        claims.
    claims:
        ``{candidate_id: (spec, result)}``: the unverified claims of candidates with no other
        row (the last one stored for each), to be considered again.
    """
    rows = [r for r in evaluated if not needs_verification(r[2])]
    in_rows = {cid for cid, _, _ in rows}
    claims = {
        cid: (spec, result)
        for cid, spec, result in evaluated
        if cid not in in_rows and needs_verification(result)
    }
    return rows, claims


class Verifier:
    """The remote claims held back from the map until their trusted re-measure is back."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[Waiters, CandidateSpec]] = {}

    def hold(self, cid: int, waiters: Waiters, spec: CandidateSpec) -> bool:
        """Hold back a claim for ``cid``; True when it is the first (dispatch the re-measure).

        A later claim for the same candidate adds its waiters to the first one's.
        """
        if cid in self._held:
            self._held[cid][0].extend(waiters)
            return False
        self._held[cid] = (waiters, spec)
        return True

    def verified(self, cid: int, spec: CandidateSpec) -> tuple[Waiters, CandidateSpec]:
        """The waiters and spec held for ``cid``, whose trusted re-measure is back.

        ``spec`` (the re-measure's own) stands in when nothing was held (nobody waits then).
        """
        return self._held.pop(cid, ([], spec))

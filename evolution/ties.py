"""Tie re-measures: a challenger faster than the elite, but within noise, is measured once more.

:meth:`~evolution.grid.MapArchive.consider` calls such an outcome a ``tie``. The search loop
queues one re-measure of the candidate (it counts against the budget) and :class:`Ties` holds
the first outcome and the emitters waiting for it until the re-measure is back;
:meth:`~evolution.grid.MapArchive.resolve_tie` then settles the tie on both measurements. A
candidate gets at most one re-measure per run: a tie of a candidate already re-measured (or
whose re-measure never came back before a restart), or with no spec to dispatch, is told as
``worse`` and the elite is kept. A tie found when no budget is left stays unresolved.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from evolution.candidate import CandidateSpec, Outcome, outcome_from_result
from evolution.emitters.base import Waiters
from evolution.grid import TIE, Decision, MapArchive


class Ties:
    """The ties awaiting their re-measure, and the candidates already given one.

    Attributes
    ----------
    remeasured:
        Candidate ids given their one re-measure (asked for, done, or lost to a restart).
    """

    def __init__(self) -> None:
        self.remeasured: set[int] = set()
        self._open: dict[int, tuple[Outcome, Waiters, CandidateSpec]] = {}

    def __contains__(self, cid: int) -> bool:
        """Whether a re-measure of ``cid`` is awaited."""
        return cid in self._open

    def open(
        self, cid: int, outcome: Outcome, waiters: Waiters, spec: CandidateSpec | None
    ) -> bool:
        """Hold a tie until its re-measure; False when it gets none (it counts as ``worse``)."""
        if spec is None or cid in self.remeasured or cid in self._open:
            return False
        self.remeasured.add(cid)
        self._open[cid] = (outcome, waiters, spec)
        return True

    def settle(
        self, archive: MapArchive, cid: int, result: dict[str, Any]
    ) -> tuple[Outcome, Decision, Waiters]:
        """Resolve ``cid``'s tie with its re-measure: the merged outcome, its decision, waiters."""
        first, waiters, _ = self._open.pop(cid)
        merged, decision = archive.resolve_tie(first, outcome_from_result(cid, result))
        return merged, decision, waiters

    def restore(self, cids: Sequence[int], decisions: Sequence[Decision]) -> None:
        """On resume: mark the candidates that get no re-measure, from the rebuilt archive.

        ``cids`` and ``decisions`` are the rebuilt rows in stored order. A candidate listed
        twice had its re-measure; one whose last decision is a tie lost its re-measure to the
        restart and is not re-measured again (a store that keeps only each candidate's newest
        result would otherwise re-measure it on every resume).
        """
        seen = collections.Counter(cids)
        self.remeasured |= {cid for cid, n in seen.items() if n > 1}
        last = dict(zip(cids, decisions, strict=True))
        self.remeasured |= {cid for cid, d in last.items() if d.status == TIE}

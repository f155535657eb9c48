"""The map of elites: a pyribs archive of candidate ids with noise-aware replacement.

:class:`MapArchive` wraps a ribs ``GridArchive`` (or a ``CVTArchive`` with saved centroids).
The archive's solution is the candidate id (``solution_dim=()``, int64); the objective is
:attr:`Outcome.objective` (a log-speedup); the measures come from the chosen descriptors; an
extra field keeps each elite's measurement noise.

Replacement is decided here, not by ribs' plain ``>``: timings are noisy, and an elite must not
be displaced by a challenger that is faster only within the spread of the two measurements.
:meth:`MapArchive.consider` classifies an outcome (:class:`Decision`), and
:meth:`MapArchive.commit` adds it when the decision says so (``add_single``, so results enter in
arrival order). A ``tie`` (faster, but within noise) is re-measured once by the caller and
settled by :meth:`MapArchive.resolve_tie`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
from ribs.archives import CVTArchive, GridArchive, k_means_centroids

from evolution.candidate import Outcome
from evolution.descriptors import Descriptor

NEW = "new"
IMPROVED = "improved"
TIE = "tie"
WORSE = "worse"
REJECTED = "rejected"
STATUSES = (NEW, IMPROVED, TIE, WORSE, REJECTED)

DEFAULT_QD_OFFSET = -5.0  # log-speedup floor: exp(-5) ~ 150x slower than the baseline


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the archive makes of an outcome.

    Attributes
    ----------
    status:
        ``new`` (empty cell), ``improved`` (beats the elite beyond the noise of both), ``tie``
        (faster than the elite but within noise: re-measure once), ``worse`` (not faster, or
        already the elite) or ``rejected`` (not accepted: verdict not OK or no objective).
    cell:
        Archive cell index the outcome maps to.
    measures:
        The outcome's coordinates, one per descriptor, clipped to the descriptor ranges.
    previous_id, previous_objective:
        The cell's elite before this outcome (None for an empty cell).
    margin:
        The noise margin (log-space) the challenger had to beat; 0 when there was no elite.
    """

    status: str
    cell: int
    measures: tuple[float, ...]
    previous_id: int | None = None
    previous_objective: float | None = None
    margin: float = 0.0

    @property
    def changes_archive(self) -> bool:
        """True for ``new`` and ``improved``: :meth:`MapArchive.commit` should be called."""
        return self.status in (NEW, IMPROVED)


@dataclasses.dataclass(frozen=True)
class MapStats:
    """Summary of a :class:`MapArchive`.

    ``qd_score`` is the sum over elites of ``max(objective, offset) - offset`` (``offset`` is
    the archive's ``qd_score_offset``, default -5), so every elite counts positively, including
    slower-than-baseline ones. ``best`` is ``(candidate_id, objective)`` or None when empty.
    """

    num_elites: int
    cells: int
    coverage: float
    qd_score: float
    best: tuple[int, float] | None


class MapArchive:
    """A MAP-Elites archive of candidate ids (pyribs adapter).

    Parameters
    ----------
    dims:
        ``(Descriptor, bins)`` pairs, e.g. from :func:`evolution.descriptors.parse_dims`.
    kind:
        ``"grid"`` (default) or ``"cvt"``.
    cells:
        Number of CVT cells (``kind="cvt"``; ignored for a grid, whose cells are the product of
        the bins).
    centroids:
        ``(cells, len(dims))`` CVT centroids saved from an earlier run (:attr:`centroids`);
        when None they are computed with k-means (seeded by ``seed``).
    qd_score_offset:
        Objective floor used by the QD score (see :class:`MapStats`).
    seed:
        Seed for the CVT k-means.
    """

    def __init__(
        self,
        dims: Sequence[tuple[Descriptor, int]],
        *,
        kind: str = "grid",
        cells: int | None = None,
        centroids: np.ndarray | None = None,
        qd_score_offset: float = DEFAULT_QD_OFFSET,
        seed: int | None = 0,
    ) -> None:
        if not dims:
            raise ValueError("a map needs at least one descriptor dimension")
        self.dims = list(dims)
        #: Counts commits and rebuilds: readers cache what they derive from the elites by it.
        self.changes = 0
        self.kind = kind
        self.qd_score_offset = float(qd_score_offset)
        ranges = [(float(d.low), float(d.high)) for d, _ in self.dims]
        common = dict(
            solution_dim=(),
            solution_dtype=np.int64,
            ranges=ranges,
            extra_fields={"noise": ((), np.float64)},
        )
        self._centroids: np.ndarray | None = None
        if kind == "grid":
            self._archive = GridArchive(dims=[b for _, b in self.dims], **common)
        elif kind == "cvt":
            if centroids is None:
                if not cells or cells < 1:
                    raise ValueError("a CVT map needs cells >= 1 (or saved centroids)")
                centroids, _ = k_means_centroids(
                    centroids=int(cells), ranges=ranges, samples=max(10_000, 20 * cells), seed=seed
                )
            self._centroids = np.asarray(centroids, dtype=np.float64)
            self._archive = CVTArchive(centroids=self._centroids, **common)
        else:
            raise ValueError(f"unknown map kind {kind!r}; expected 'grid' or 'cvt'")

    # --- geometry -----------------------------------------------------------------------------

    @property
    def cells(self) -> int:
        """Number of cells in the map."""
        return int(self._archive.cells)

    @property
    def centroids(self) -> np.ndarray | None:
        """``(cells, len(dims))`` CVT centroids to save for a resume; None for a grid."""
        return None if self._centroids is None else self._centroids.copy()

    @property
    def ribs_archive(self) -> GridArchive | CVTArchive:
        """The underlying ribs archive (read it, do not add to it: use :meth:`commit`)."""
        return self._archive

    def measures_of(self, outcome: Outcome) -> tuple[float, ...]:
        """The outcome's coordinates, one per descriptor (see :meth:`Descriptor.measure`)."""
        return tuple(d.measure(outcome) for d, _ in self.dims)

    def cell_of(self, measures: Sequence[float]) -> int:
        """The cell index of ``measures``."""
        return int(self._archive.index_of_single(np.asarray(measures, dtype=np.float64)))

    def elite_at(self, cell_measures: Sequence[float]) -> tuple[int, float, float] | None:
        """``(candidate_id, objective, noise)`` of the elite at ``cell_measures``, or None."""
        occupied, data = self._archive.retrieve_single(np.asarray(cell_measures, np.float64))
        if not occupied:
            return None
        return int(data["solution"]), float(data["objective"]), float(data["noise"])

    # --- decisions ----------------------------------------------------------------------------

    def consider(self, outcome: Outcome) -> Decision:
        """Classify ``outcome`` against its cell's elite (does not change the archive).

        A challenger improves on the elite when
        ``objective - elite_objective > noise + elite_noise`` (both noises are relative
        spreads, i.e. margins in log space); faster but within that margin is a ``tie``.
        An outcome for the candidate that already is the cell's elite is ``worse`` (no change).
        """
        measures = self.measures_of(outcome)
        cell = self.cell_of(measures)
        if not outcome.accepted:
            return Decision(REJECTED, cell, measures)
        return self._judge(outcome, measures, cell, outcome.noise, 1.0, allow_tie=True)

    def _judge(
        self,
        outcome: Outcome,
        measures: tuple[float, ...],
        cell: int,
        noise: float,
        margin_scale: float,
        *,
        allow_tie: bool,
    ) -> Decision:
        elite = self.elite_at(measures)
        if elite is None:
            return Decision(NEW, cell, measures)
        elite_id, elite_obj, elite_noise = elite
        margin = margin_scale * (max(noise, 0.0) + max(elite_noise, 0.0))
        diff = outcome.objective - elite_obj
        if elite_id == outcome.candidate_id or diff <= 0:
            status = WORSE
        elif diff > margin:
            status = IMPROVED
        else:
            status = TIE if allow_tie else WORSE
        return Decision(status, cell, measures, elite_id, elite_obj, margin)

    def commit(self, outcome: Outcome, decision: Decision) -> bool:
        """Add ``outcome`` to the archive as ``decision`` (``new`` or ``improved``) says.

        Returns
        -------
        bool
            Whether the cell's elite changed (ribs agrees: the objective beats the elite's).

        Raises
        ------
        ValueError
            The decision does not change the archive, or the outcome has no objective.
        """
        if not decision.changes_archive:
            raise ValueError(f"cannot commit a {decision.status!r} decision")
        if outcome.objective is None or not math.isfinite(outcome.objective):
            raise ValueError(f"candidate {outcome.candidate_id} has no finite objective")
        self.changes += 1
        info = self._archive.add_single(
            np.int64(outcome.candidate_id),
            float(outcome.objective),
            np.asarray(decision.measures, dtype=np.float64),
            noise=float(outcome.noise),
        )
        return int(info["status"]) > 0

    def resolve_tie(self, first: Outcome, second: Outcome) -> tuple[Outcome, Decision]:
        """Settle a ``tie`` with a second measurement of the same candidate.

        The challenger's objective becomes the mean of both measurements and its noise the mean
        of both noises; it replaces the elite when
        ``mean - elite_objective > (noise + elite_noise) / 2``. Halving the margin credits the
        repetition (a mean of two independent measurements spreads ~1/sqrt(2) as much; halving
        is the simpler, slightly more permissive rule), while the mean keeps one lucky sample
        from winning. The cell is the first measurement's (measured features such as
        ``floor_fraction`` move with timing; the tie was found in that cell). A failed
        re-measure (not ``OK``) rejects the challenger; a second tie is ``worse``.

        Returns
        -------
        (Outcome, Decision)
            The merged outcome (commit this one when the decision changes the archive) and the
            decision against the cell's current elite.
        """
        measures = self.measures_of(first)
        cell = self.cell_of(measures)
        if not (first.accepted and second.accepted):
            return first, Decision(REJECTED, cell, measures)
        merged = dataclasses.replace(
            first,
            objective=(first.objective + second.objective) / 2.0,
            noise=(first.noise + second.noise) / 2.0,
        )
        return merged, self._judge(merged, measures, cell, merged.noise, 0.5, allow_tie=False)

    # --- reading ------------------------------------------------------------------------------

    def stats(self) -> MapStats:
        """Elites, coverage, QD score and best elite (see :class:`MapStats`)."""
        objs = self._archive.data("objective")
        n = int(len(objs))
        qd = float(np.sum(np.maximum(objs, self.qd_score_offset) - self.qd_score_offset))
        best = None
        if n:
            b = self._archive.best_elite
            best = (int(b["solution"]), float(b["objective"]))
        return MapStats(n, self.cells, n / self.cells, qd, best)

    def elites(self) -> list[tuple[int, int, float, tuple[float, ...]]]:
        """Every elite as ``(cell, candidate_id, objective, measures)``, by cell index."""
        d = self._archive.data(["index", "solution", "objective", "measures"])
        order = np.argsort(d["index"], kind="stable")
        return [
            (
                int(d["index"][i]),
                int(d["solution"][i]),
                float(d["objective"][i]),
                tuple(float(x) for x in d["measures"][i]),
            )
            for i in order
        ]

    def __len__(self) -> int:
        return len(self._archive)

    # --- resume -------------------------------------------------------------------------------

    def rebuild(self, outcomes: Iterable[Outcome]) -> list[tuple[Outcome, Decision]]:
        """Empty the archive and replay stored outcomes in their original order.

        The live rules are replayed (noise-aware replacement, ties), so the rebuilt archive is
        the one the run had. A candidate that appears again after a ``tie`` is that tie's
        re-measure and is settled with :meth:`resolve_tie`; other repeats are considered again
        (and come out ``worse``).

        Returns
        -------
        list of (Outcome, Decision)
            One entry per input outcome, in order; a re-measure's entry holds the merged
            outcome. A ``tie`` never followed by its re-measure is left as ``tie`` for the
            caller to re-measure.
        """
        self._archive.clear()
        self.changes += 1
        out: list[tuple[Outcome, Decision]] = []
        ties: dict[int, Outcome] = {}
        for outcome in outcomes:
            first = ties.pop(outcome.candidate_id, None)
            if first is not None:
                merged, decision = self.resolve_tie(first, outcome)
            else:
                merged, decision = outcome, self.consider(outcome)
                if decision.status == TIE:
                    ties[outcome.candidate_id] = outcome
            if decision.changes_archive:
                self.commit(merged, decision)
            out.append((merged, decision))
        return out

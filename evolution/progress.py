"""What the search loop reports: its progress, its progress points and how a run ended.

:class:`Progress` goes to ``on_progress`` after each batch of results; :class:`ProgressPoints`
decides when the store gets a :class:`~evolution.ports.RunStats` point (:func:`run_stats`);
:class:`Summary` is what :meth:`~evolution.loop.SearchLoop.run` returns, its ``stopped_reason``
one of the ``STOP_*`` names below. :class:`Best` is the best elite in each. Plain values, built
from the archive's stats and the loop's counters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from evolution.grid import MapArchive
from evolution.ports import RunStats

STOP_BUDGET = "budget"
STOP_STOPPED = "stopped"
STOP_EXHAUSTED = "exhausted"
STOP_STALLED = "stalled"
STOP_REFUSED = "task_refused"


@dataclasses.dataclass(frozen=True)
class Best:
    """The best elite: candidate id, objective (log-speedup), ``speedup = exp(objective)`` and
    ``label``, how its own evaluation measured it (``gpu-speedup``, ``cpu-time`` or
    ``cpu-interpreter``; None where unknown)."""

    candidate_id: int
    objective: float
    speedup: float
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Progress:
    """A progress report (passed to ``on_progress`` after each batch of results).

    Attributes
    ----------
    evaluations, budget:
        Evaluations done (re-measures included; static rejects and duplicates excluded) and the
        run's budget.
    in_flight:
        Jobs dispatched and not yet back.
    verdicts:
        Count per verdict (``STATIC_REJECT`` from the prefilter included).
    best:
        The best elite, or None.
    coverage, elites:
        Fraction of cells filled and number of elites.
    objective_label:
        How the best elite's own evaluation was measured (``gpu-speedup``, ``cpu-time``,
        ``cpu-interpreter``): the label of the figure shown beside it; None before any.
    """

    evaluations: int
    budget: int
    in_flight: int
    verdicts: dict[str, int]
    best: Best | None
    coverage: float
    elites: int
    objective_label: str | None

    @property
    def best_objective(self) -> float | None:
        """The best elite's objective (log-speedup), or None."""
        return None if self.best is None else self.best.objective

    @property
    def best_speedup(self) -> float | None:
        """``exp(best objective)``, or None."""
        return None if self.best is None else self.best.speedup


@dataclasses.dataclass(frozen=True)
class Summary:
    """How a run (or this session of it) ended.

    ``stopped_reason`` is ``budget``, ``stopped`` (the stop event), ``exhausted`` (every emitter
    exhausted, nothing in flight), ``stalled`` (nothing in flight and no emitter proposed
    anything for ``idle_timeout_s``) or ``task_refused`` (a worker refused the task itself,
    for instance because it cannot fit in the GPU's memory; ``refused`` says why).
    """

    evaluations: int
    elites: int
    coverage: float
    qd_score: float
    best: Best | None
    objective_label: str | None
    stopped_reason: str
    verdicts: dict[str, int]
    refused: str | None = None


def best_of(archive: MapArchive, labels: Mapping[int, str] | None = None) -> Best | None:
    """The archive's best elite, or None; ``speedup`` is capped against overflow and
    ``labels`` (candidate id -> objective label) gives its label."""
    best = archive.stats().best
    if best is None:
        return None
    cid, obj = best
    return Best(cid, obj, math.exp(min(obj, 700.0)), (labels or {}).get(cid))


def run_stats(archive: MapArchive, evaluations: int, verdicts: Mapping[str, int]) -> RunStats:
    """A progress point for the store: the archive's state after ``evaluations``."""
    s = archive.stats()
    return RunStats(
        evaluations=evaluations,
        elites=s.num_elites,
        coverage=s.coverage,
        qd_score=s.qd_score,
        best_objective=None if s.best is None else s.best[1],
        best_candidate_id=None if s.best is None else s.best[0],
        verdicts=dict(verdicts),
    )


class ProgressPoints:
    """When the store gets a progress point, and the points taken but not stored yet.

    One every ``every`` evaluations, at most one per ``interval_s`` seconds of ``clock``
    (0: no limit); the loop takes a due point after the next result or poll, and one at the
    end. Points are stored with the next batch of results.
    """

    def __init__(self, every: int, interval_s: float, clock: Callable[[], float]) -> None:
        self.every = max(1, int(every))
        self.interval_s = max(0.0, float(interval_s))
        self._clock = clock
        self.since = 0  # evaluations since the last point
        self._last: float | None = None
        self.unsaved: list[RunStats] = []

    def due(self) -> bool:
        """Whether a point is due now."""
        if self.since < self.every:
            return False
        last = self._last
        return last is None or self._clock() - last >= self.interval_s

    def take(self, archive: MapArchive, evaluations: int, verdicts: Mapping[str, int]) -> None:
        """Take a point (stored with the next batch)."""
        self.unsaved.append(run_stats(archive, evaluations, verdicts))
        self.since = 0
        self._last = self._clock()


def progress_of(
    archive: MapArchive,
    evaluations: int,
    budget: int,
    in_flight: int,
    verdicts: Mapping[str, int],
    labels: Mapping[int, str],
) -> Progress:
    """The :class:`Progress` of a run with this archive and these counters; ``labels`` maps
    a candidate id to how its objective was measured."""
    s = archive.stats()
    best = best_of(archive, labels)
    return Progress(
        evaluations=evaluations,
        budget=budget,
        in_flight=in_flight,
        verdicts=dict(verdicts),
        best=best,
        coverage=s.coverage,
        elites=s.num_elites,
        objective_label=None if best is None else best.label,
    )


def summary_of(
    archive: MapArchive,
    evaluations: int,
    verdicts: Mapping[str, int],
    labels: Mapping[int, str],
    reason: str,
    refused: str | None,
) -> Summary:
    """The :class:`Summary` of a run that stopped for ``reason`` (``labels`` as in
    :func:`progress_of`)."""
    s = archive.stats()
    best = best_of(archive, labels)
    return Summary(
        evaluations=evaluations,
        elites=s.num_elites,
        coverage=s.coverage,
        qd_score=s.qd_score,
        best=best,
        objective_label=None if best is None else best.label,
        stopped_reason=reason,
        verdicts=dict(verdicts),
        refused=refused,
    )

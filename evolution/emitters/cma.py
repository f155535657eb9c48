"""CMA-ME over one family's ``SEARCH_SPACE``, with generation barriers.

:class:`CMAParamEmitter` is the ``cma`` option of the parameter emitter: a pyribs
``EvolutionStrategyEmitter`` (CMA-ES ranked by archive improvement, i.e. CMA-ME) over the same
float genome in ``[0, 1]^d`` and the same shadow archive as
:class:`~evolution.emitters.params.ParamEmitter` (it subclasses it for the genome <-> params
decoding, the shadow archive, ``owns``/``adopt`` and the coverage bookkeeping).

CMA-ES adapts its distribution from whole generations, while the search loop asks for one
candidate whenever capacity frees up and tells outcomes in arrival order. The emitter bridges
the two with a barrier:

- ``ask`` hands out the members of the current generation one by one, in the ES's order.
  A member whose parameters were proposed before is handed out anyway (the loop learns it for
  free from the stored or in-flight result), so that every generation is complete.
- Once every member has been handed out, ``ask`` returns ``[]`` until every member has been
  told; then the whole generation goes to the ES's ``tell`` in ask order and the next
  generation starts. Never more than one generation is in flight.
- Members are matched to outcomes by genome, so results may arrive in any order. Only the
  first outcome of a member counts: a tie's re-measure (told again later) is ignored.
- A failed member (no objective) gets a finite penalty objective (the lowest objective seen,
  minus 1; pyribs refuses NaN/inf), status "not added" and the lowest improvement value, so it
  ranks last and is never a parent. Failed candidates never enter the shadow archive.
- Outcomes of specs outside the current generation (stored results told on resume, pending
  jobs adopted on resume) go to the shadow archive only, as in ``ParamEmitter``. A resumed
  emitter starts its ES from the best elite of the shadow archive.
- If a generation leaves the shadow archive empty (everything failed so far), the ES starts
  afresh from a random genome (pyribs would restart from an elite, and raises without one).

Specs are ``params`` specs of the family (``emitter="params"``, the family label), so a run may
switch between this emitter and ``ParamEmitter`` across sessions. The ``parent_ids`` of a
generation's members are the previous generation's members that entered the shadow archive
(best first, at most 4): the CMA-ES parents whose recombination gave the new mean; none after
a restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ribs.emitters import EvolutionStrategyEmitter

from evolution.candidate import CandidateSpec, Outcome
from evolution.descriptors import Descriptor
from evolution.emitters.params import ParamEmitter
from evolution.grid import Decision

RANKERS = ("2imp", "imp", "2obj", "obj")

Genome = tuple[float, ...]


@dataclasses.dataclass
class _Member:
    """One solution of the current generation."""

    genome: np.ndarray
    spec: CandidateSpec | None = None
    told: bool = False
    objective: float | None = None  # None: failed
    measures: np.ndarray | None = None
    status: int = 0
    value: float = 0.0
    candidate_id: int = -1


class CMAParamEmitter(ParamEmitter):
    """CMA-ME over the ``SEARCH_SPACE`` of one parametric family, one generation at a time.

    Parameters
    ----------
    source, space, archive_dims, label:
        As for :class:`~evolution.emitters.params.ParamEmitter`.
    batch_size:
        Members per generation (the CMA-ES population, lambda).
    sigma0:
        Initial step size of the ES, in genome units (the whole range of a parameter is 1).
    ranker:
        pyribs ranker: ``"2imp"`` (CMA-ME's two-stage improvement, default), ``"imp"``,
        ``"2obj"`` or ``"obj"``.
    max_generations:
        Generations after which the emitter is exhausted (None: no limit).
    seed:
        Random seed.
    max_misses:
        Consecutive members whose parameters had already been proposed after which the emitter
        gives up (``exhausted``); also exhausted once every point of the space was proposed.

    Attributes
    ----------
    es:
        The pyribs ``EvolutionStrategyEmitter`` (created at the first generation: after a
        resume it starts from the best elite of the shadow archive, else from the centre).
    generations:
        Generations told to the ES so far.
    restarts:
        ES restarts (pyribs' own, plus fresh starts when a generation left the shadow archive
        empty).
    """

    def __init__(
        self,
        source: str,
        space: Mapping[str, Sequence[Any]],
        archive_dims: Sequence[tuple[Descriptor, int]],
        label: str,
        *,
        batch_size: int = 8,
        sigma0: float = 0.3,
        ranker: str = "2imp",
        max_generations: int | None = None,
        seed: int | None = None,
        max_misses: int = 500,
    ) -> None:
        super().__init__(source, space, archive_dims, label, seed=seed, max_misses=max_misses)
        if ranker not in RANKERS:
            raise ValueError(f"unknown ranker {ranker!r}; expected one of {RANKERS}")
        if int(batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 must be > 0, got {sigma0}")
        self.batch_size = int(batch_size)
        self.sigma0 = float(sigma0)
        self.ranker = ranker
        self.max_generations = None if max_generations is None else int(max_generations)
        self.es: EvolutionStrategyEmitter | None = None
        self.generations = 0
        self._fresh_starts = 0
        self._es_rng = np.random.default_rng(int(self._rng.integers(2**31)))
        self._gen: list[_Member] = []
        self._handed = 0
        self._by_genome: dict[Genome, list[int]] = {}
        self._seen: set[Genome] = set()  # genomes of members of earlier generations
        self._parents: tuple[int, ...] = ()
        self._min_objective: float | None = None

    # --- state --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``cma:<label>`` (its specs are ``params`` specs of the family, as ParamEmitter's)."""
        return f"cma:{self.label}"

    @property
    def shadow(self):
        """The family's shadow archive (genomes, ``candidate_id``)."""
        return self.genomes.archive

    @property
    def restarts(self) -> int:
        """ES restarts so far."""
        return self._fresh_starts + (self.es.restarts if self.es is not None else 0)

    @property
    def in_flight(self) -> int:
        """Members of the current generation handed out and not told yet."""
        return sum(1 for m in self._gen[: self._handed] if not m.told)

    @property
    def waiting(self) -> bool:
        """True at the barrier: every member handed out, some not told yet."""
        return bool(self._gen) and self._handed == len(self._gen)

    @property
    def exhausted(self) -> bool:
        """Space covered, ``max_misses`` consecutive repeats, or ``max_generations`` done."""
        if self.max_generations is not None and self.generations >= self.max_generations:
            return True
        return super().exhausted

    # --- ask ----------------------------------------------------------------------------------

    def ask(self, n: int) -> list[CandidateSpec]:
        """Up to ``n`` members of the current generation; ``[]`` at the barrier."""
        out: list[CandidateSpec] = []
        while len(out) < n and not self.exhausted:
            if not self._gen:
                self._start_generation()
            if self._handed >= len(self._gen):
                break
            out.append(self._hand_out(self._gen[self._handed]))
            self._handed += 1
        return out

    def _new_es(self, x0: np.ndarray) -> EvolutionStrategyEmitter:
        dim = int(self.shadow.solution_dim)
        return EvolutionStrategyEmitter(
            self.shadow,
            x0=np.clip(np.asarray(x0, dtype=np.float64), 0.0, 1.0),
            sigma0=self.sigma0,
            ranker=self.ranker,
            selection_rule="filter",
            restart_rule="no_improvement",
            bounds=[(0.0, 1.0)] * dim,
            batch_size=self.batch_size,
            seed=int(self._es_rng.integers(2**31)),
        )

    def _start_generation(self) -> None:
        if self.es is None:
            if self.shadow.empty:
                x0 = np.full(int(self.shadow.solution_dim), 0.5)
            else:  # resumed: start from the best elite found so far
                x0 = self.shadow.best_elite["solution"]
            self.es = self._new_es(x0)
        genomes = np.array(self.es.ask(), dtype=np.float64)
        self._gen = [_Member(g) for g in genomes]
        self._handed = 0
        self._by_genome = {}
        for i, m in enumerate(self._gen):
            self._by_genome.setdefault(_key(m.genome), []).append(i)

    def _hand_out(self, member: _Member) -> CandidateSpec:
        repeat = self.decode(member.genome) in self._asked
        misses = self._misses
        spec = self._spec(member.genome, self._parents)
        if repeat:  # still handed out, so that the generation is complete
            self._misses = misses + 1
        member.spec = spec
        return spec

    # --- tell ---------------------------------------------------------------------------------

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:
        """Record a member's first outcome (closing the generation when it is the last one);
        outcomes of other specs (resume) only feed the shadow archive."""
        if outcome.accepted:
            obj = float(outcome.objective)
            low = self._min_objective
            self._min_objective = obj if low is None else min(obj, low)
        key = _key(spec.genome) if spec.genome is not None else None
        slots = self._by_genome.get(key, []) if key is not None else []
        gen = self._gen
        member = next((gen[i] for i in slots if i < self._handed and not gen[i].told), None)
        if member is None:
            if key is not None and (key in self._seen or slots):
                return  # a later outcome of a member (tie re-measure): counted once already
            super().tell(spec, outcome, decision)  # not from a generation: shadow archive only
            return
        self._record(member, spec, outcome, decision)
        if self._handed == len(self._gen) and all(m.told for m in self._gen):
            self._close_generation()

    def _record(
        self, member: _Member, spec: CandidateSpec, outcome: Outcome, decision: Decision
    ) -> None:
        member.told = True
        member.candidate_id = int(outcome.candidate_id)
        indices = self.indices_of(spec)
        if indices is not None:
            self._asked.add(indices)
        measures = np.nan_to_num(np.asarray(decision.measures, dtype=np.float64))
        if measures.shape != (self.shadow.measure_dim,):
            measures = np.asarray(self.shadow.lower_bounds, dtype=np.float64)
        member.measures = measures
        if not outcome.accepted:
            return  # failed: never in the shadow archive; penalised when the generation closes
        member.objective = float(outcome.objective)
        info = self.shadow.add_single(
            member.genome,
            member.objective,
            measures,
            candidate_id=np.int64(outcome.candidate_id),
        )
        member.status = int(info["status"])
        member.value = float(info["value"])

    def _close_generation(self) -> None:
        gen = self._gen
        ok = [m for m in gen if m.objective is not None]
        floor = self._min_objective if self._min_objective is not None else 0.0
        penalty = floor - 1.0
        low_value = min([0.0, *(m.value for m in ok)]) - 1.0
        solutions = np.stack([m.genome for m in gen])
        objective = np.array([penalty if m.objective is None else m.objective for m in gen])
        measures = np.stack([m.measures for m in gen])
        add_info = {  # failed members: "not added", and the lowest value of the generation
            "status": np.array([m.status for m in gen], dtype=np.int32),
            "value": np.array([low_value if m.objective is None else m.value for m in gen]),
        }
        ids = np.array([m.candidate_id for m in gen], dtype=np.int64)
        if self.shadow.empty:
            # pyribs would restart from an elite (sample_elites raises on an empty archive):
            # start afresh from a random genome instead.
            self.es = self._new_es(self.genomes.random(1)[0])
            self._fresh_starts += 1
        else:
            restarts = self.es.restarts
            self.es.tell(solutions, objective, measures, add_info, candidate_id=ids)
            if self.es.restarts == restarts:
                added = sorted((m for m in ok if m.status > 0), key=lambda m: -m.objective)
                self._parents = tuple(m.candidate_id for m in added[:4])
            else:
                self._parents = ()
        self.generations += 1
        self._seen.update(_key(m.genome) for m in gen)
        self._gen = []
        self._handed = 0
        self._by_genome = {}


def _key(genome: Sequence[float] | np.ndarray) -> Genome:
    return tuple(float(g) for g in genome)

"""Parameter search for one candidate family (a source with a ``SEARCH_SPACE``).

Each parameter is one gene in ``[0, 1]``; a genome decodes to one choice per parameter
(``index = min(int(g * len(choices)), len(choices) - 1)``). The emitter first proposes the
family's default (the first choice of every list) and a few uniformly random points, then
offspring of the family's elites (:class:`~evolution.emitters.genome.GenomeEmitter`, a ribs
custom emitter over a shadow archive with the main map's descriptor dimensions).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evolution.candidate import CandidateSpec, Outcome
from evolution.descriptors import Descriptor
from evolution.emitters.base import Emitter
from evolution.emitters.genome import GenomeEmitter, shadow_archive
from evolution.grid import Decision

Indices = tuple[int, ...]


class ParamEmitter(Emitter):
    """Searches the ``SEARCH_SPACE`` of one parametric candidate family.

    Parameters
    ----------
    source:
        The family's candidate source.
    space:
        ``{parameter: [choices...]}``; the first choice of each list is the default.
    archive_dims:
        The main map's ``(Descriptor, bins)`` pairs (:attr:`MapArchive.dims`); the shadow
        archive of the family's elites uses the same dimensions.
    label:
        The family's label, carried by every spec (and used to recognise them on resume).
    variation:
        ``"gaussian"`` or ``"iso_line"`` (see :class:`GenomeEmitter`).
    sigma:
        Mutation scale in genome units.
    line_sigma:
        Iso-line scale (``variation="iso_line"``).
    initial:
        Uniformly random genomes proposed after the default, before offspring of elites.
    seed:
        Random seed.
    retries:
        Attempts per proposal at a parameter set not proposed before (offspring first, then
        uniformly random genomes, then, for spaces up to ``enumerate_limit`` points, a random
        unproposed point).
    max_misses:
        Consecutive attempts that hit already-proposed sets after which the emitter gives up
        (``exhausted``), for spaces too large to enumerate.
    enumerate_limit:
        Spaces up to this many points are finished off by enumeration.
    """

    def __init__(
        self,
        source: str,
        space: Mapping[str, Sequence[Any]],
        archive_dims: Sequence[tuple[Descriptor, int]],
        label: str,
        variation: str = "gaussian",
        sigma: float = 0.15,
        *,
        line_sigma: float = 0.2,
        initial: int = 4,
        seed: int | None = None,
        retries: int = 16,
        max_misses: int = 500,
        enumerate_limit: int = 4096,
    ) -> None:
        if not space:
            raise ValueError(f"family {label!r} has an empty search space: use it as a seed")
        for name, choices in space.items():
            if not isinstance(choices, list | tuple) or not choices:
                raise ValueError(
                    f"search space of {label!r}: {name!r} must be a non-empty list of choices"
                )
        self.source = source
        self.label = label
        self._names = list(space)
        self._choices = [list(space[k]) for k in self._names]
        self._lens = np.array([len(c) for c in self._choices])
        self.size = math.prod(len(c) for c in self._choices)
        self._asked: set[Indices] = set()
        self._initial_left = int(initial)
        self._default_done = False
        self._misses = 0
        self._retries = int(retries)
        self._max_misses = int(max_misses)
        self._enumerate = self.size <= enumerate_limit
        rng = np.random.default_rng(seed)
        self._rng = rng
        archive = shadow_archive(len(self._names), archive_dims, seed=int(rng.integers(2**31)))
        self.genomes = GenomeEmitter(
            archive,
            variation=variation,
            sigma=sigma,
            line_sigma=line_sigma,
            seed=int(rng.integers(2**31)),
        )

    # --- genome <-> parameters ----------------------------------------------------------------

    def decode(self, genome: Sequence[float]) -> Indices:
        """Choice indices of a genome (one per parameter)."""
        g = np.clip(np.asarray(genome, dtype=np.float64), 0.0, 1.0)
        return tuple(int(i) for i in np.minimum((g * self._lens).astype(int), self._lens - 1))

    def centre(self, indices: Indices) -> np.ndarray:
        """The genome at the centre of each chosen interval, ``(d,)``."""
        return (np.asarray(indices, dtype=np.float64) + 0.5) / self._lens

    def params_of(self, indices: Indices) -> dict[str, Any]:
        """The parameter dict of choice indices."""
        return {n: c[i] for n, c, i in zip(self._names, self._choices, indices, strict=True)}

    def indices_of(self, spec: CandidateSpec) -> Indices | None:
        """Choice indices of a spec (from its genome, else its params); None if off-space."""
        if spec.genome is not None and len(spec.genome) == len(self._names):
            return self.decode(spec.genome)
        try:
            pairs = zip(self._names, self._choices, strict=True)
            return tuple(c.index(spec.params[n]) for n, c in pairs)
        except (KeyError, ValueError):
            return None

    # --- Emitter ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``params:<label>``."""
        return f"params:{self.label}"

    def owns(self, spec: CandidateSpec) -> bool:
        """A ``params`` spec with this family's label."""
        return spec.emitter == "params" and spec.label == self.label

    @property
    def exhausted(self) -> bool:
        """Every point of the space was proposed, or ``max_misses`` consecutive misses."""
        return len(self._asked) >= self.size or self._misses >= self._max_misses

    @property
    def proposed(self) -> int:
        """Distinct parameter sets proposed so far."""
        return len(self._asked)

    def ask(self, n: int) -> list[CandidateSpec]:
        """Up to ``n`` parameter sets not proposed before."""
        out: list[CandidateSpec] = []
        while len(out) < n and not self.exhausted:
            spec = self._next()
            if spec is None:
                break
            out.append(spec)
        return out

    def _next(self) -> CandidateSpec | None:
        if not self._default_done:
            self._default_done = True
            default = (0,) * len(self._names)
            if default not in self._asked:
                return self._spec(self.centre(default), ())
        explore = self._initial_left > 0 or self.genomes.archive.empty
        for _ in range(self._retries):
            if explore:
                genome, parents = self.genomes.random(1)[0], ()
            else:
                genome = self.genomes.ask()[0]
                parents = tuple(int(p) for p in self.genomes.last_parent_ids[0] if p >= 0)
            if self.decode(genome) not in self._asked:
                if explore:
                    self._initial_left -= 1
                return self._spec(genome, parents)
            self._misses += 1
            if self.exhausted:
                return None
        for _ in range(self._retries):
            genome = self.genomes.random(1)[0]
            if self.decode(genome) not in self._asked:
                return self._spec(genome, ())
            self._misses += 1
            if self.exhausted:
                return None
        if self._enumerate:
            points = itertools.product(*(range(int(k)) for k in self._lens))
            free = [ix for ix in points if ix not in self._asked]
            if free:
                return self._spec(self.centre(free[int(self._rng.integers(len(free)))]), ())
        return None

    def _spec(self, genome: np.ndarray, parents: tuple[int, ...]) -> CandidateSpec:
        indices = self.decode(genome)
        self._asked.add(indices)
        self._misses = 0
        return CandidateSpec(
            source=self.source,
            params=self.params_of(indices),
            emitter="params",
            parent_ids=parents,
            label=self.label,
            genome=tuple(float(g) for g in genome),
        )

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:
        """Remember the point; an accepted outcome enters the family's shadow archive."""
        indices = self.indices_of(spec)
        if indices is None:
            return
        self._asked.add(indices)
        if not outcome.accepted:
            return
        genome = (
            np.asarray(spec.genome, dtype=np.float64)
            if spec.genome is not None and len(spec.genome) == len(self._names)
            else self.centre(indices)
        )
        measures = np.asarray(decision.measures, dtype=np.float64)
        cid = np.int64(outcome.candidate_id)
        archive = self.genomes.archive
        info = archive.add_single(genome, outcome.objective, measures, candidate_id=cid)
        self.genomes.tell(
            genome[None],
            np.array([outcome.objective]),
            measures[None],
            {k: np.asarray([v]) for k, v in info.items()},
            candidate_id=np.array([cid]),
        )

    def adopt(self, spec: CandidateSpec) -> None:
        """Marks the point as proposed (resume)."""
        indices = self.indices_of(spec)
        if indices is not None:
            self._asked.add(indices)

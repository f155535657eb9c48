"""The pyribs side of parameter search: variation of float genomes drawn from a shadow archive.

:class:`GenomeEmitter` is a ribs custom emitter (it subclasses ``ribs.emitters.EmitterBase``).
Its archive holds one family's elites: solutions are genomes in ``[0, 1]^d`` and an extra field
``candidate_id`` names the candidate each came from, so offspring know their parents. It is used
steady-state (``ask`` whenever capacity frees up), never through a ribs ``Scheduler``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ribs.archives import GridArchive
from ribs.emitters import EmitterBase
from ribs.emitters.operators import GaussianOperator, IsoLineOperator

from evolution.descriptors import Descriptor
from evolution.emitters.variations import STEADY_STATE


def shadow_archive(
    genome_dim: int, dims: Sequence[tuple[Descriptor, int]], seed: int | None = None
) -> GridArchive:
    """A grid over ``dims`` whose solutions are ``(genome_dim,)`` float genomes.

    Elites carry an extra int64 field ``candidate_id``.
    """
    return GridArchive(
        solution_dim=genome_dim,
        dims=[b for _, b in dims],
        ranges=[(float(d.low), float(d.high)) for d, _ in dims],
        extra_fields={"candidate_id": ((), np.int64)},
        seed=seed,
    )


class GenomeEmitter(EmitterBase):
    """Offspring of a shadow archive's elites, clipped to ``[0, 1]^d``.

    Parameters
    ----------
    archive:
        A :func:`shadow_archive`.
    variation:
        ``"gaussian"``: ``parent + N(0, sigma)``. ``"iso_line"``:
        ``parent1 + N(0, sigma) + N(0, line_sigma) * (parent2 - parent1)``.
    sigma, line_sigma:
        Mutation scales, in genome units (the whole range of a parameter is 1).
    seed:
        Seed of the random generators.

    Attributes
    ----------
    batch_size:
        Genomes per :meth:`ask`.
    last_parent_ids:
        ``(batch_size, 2)`` int64 candidate ids of the parents of the last :meth:`ask` (the
        second column is the iso-line partner), -1 where there was none.
    """

    def __init__(
        self,
        archive: GridArchive,
        *,
        variation: str = "gaussian",
        sigma: float = 0.15,
        line_sigma: float = 0.2,
        batch_size: int = 1,
        seed: int | None = None,
    ) -> None:
        dim = int(archive.solution_dim)
        super().__init__(
            archive,
            solution_dim=dim,
            bounds=[(0.0, 1.0)] * dim,
            lower_bounds=None,
            upper_bounds=None,
        )
        if variation not in STEADY_STATE:
            raise ValueError(f"unknown variation {variation!r}; expected one of {STEADY_STATE}")
        self.variation = variation
        self._rng = np.random.default_rng(seed)
        op_seed = int(self._rng.integers(2**31))
        self._operator = (
            GaussianOperator(sigma=sigma, seed=op_seed)
            if variation == "gaussian"
            else IsoLineOperator(iso_sigma=sigma, line_sigma=line_sigma, seed=op_seed)
        )
        self.batch_size = int(batch_size)
        self.last_parent_ids = np.full((0, 2), -1, dtype=np.int64)

    def random(self, n: int) -> np.ndarray:
        """``(n, d)`` uniformly random genomes (no parents)."""
        return self._rng.uniform(0.0, 1.0, size=(n, int(self.solution_dim)))

    def ask(self) -> np.ndarray:
        """``(batch_size, d)`` offspring of random elites; random genomes if there is no elite."""
        n = self.batch_size
        parents = np.full((n, 2), -1, dtype=np.int64)
        if self.archive.empty:
            genomes = self.random(n)
        elif self.variation == "gaussian":
            e = self.archive.sample_elites(n)
            genomes = self._operator.ask(e["solution"])
            parents[:, 0] = e["candidate_id"]
        else:
            e1, e2 = self.archive.sample_elites(n), self.archive.sample_elites(n)
            genomes = self._operator.ask(np.stack([e1["solution"], e2["solution"]]))
            parents[:, 0] = e1["candidate_id"]
            other = e2["candidate_id"]
            parents[:, 1] = np.where(other != e1["candidate_id"], other, -1)
        self.last_parent_ids = parents
        return np.clip(genomes, self.lower_bounds, self.upper_bounds)

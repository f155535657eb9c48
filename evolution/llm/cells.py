"""The map as the LLM emitter sees it: its elites (:class:`Elite`), its empty cells, the elite
nearest a cell.

:func:`archive_elites` reads the elites from a :class:`~evolution.grid.MapArchive` and a lookup
of candidate specs; the rest are pure functions over ``(Descriptor, bins)`` pairs
(:attr:`evolution.grid.MapArchive.dims`) and the elites' measures: a grid's bins are equal slices
of each descriptor's range, a value outside the range falls in the first or last bin.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evolution.candidate import CandidateSpec
from evolution.descriptors import Descriptor

MAX_EMPTY_CELLS = 4096
"""Cells enumerated at most when looking for an empty one to target."""

Dims = Sequence[tuple[Descriptor, int]]


@dataclasses.dataclass(frozen=True)
class Elite:
    """An elite of the run as the emitter sees it (from the archive and the store).

    ``cell`` is the archive's cell index, ``measures`` one value per map dimension.
    """

    candidate_id: int
    source: str
    params: Mapping[str, Any]
    objective: float
    cell: int
    measures: tuple[float, ...]


def archive_elites(
    archive: Any, spec_of: Callable[[int], CandidateSpec | None]
) -> Callable[[], list[Elite]]:
    """An ``elites`` accessor over a :class:`~evolution.grid.MapArchive` and a lookup of
    candidate specs by id (``store.specs.get``); elites whose spec is unknown are left out.

    The list is read again only when the archive's ``changes`` counter moved (the emitter asks
    for it on every proposal of every emitter, through ``exhausted``); do not modify it.
    """
    cache: dict[str, Any] = {"at": None, "elites": []}

    def elites() -> list[Elite]:
        at = getattr(archive, "changes", None)
        if at is not None and at == cache["at"]:
            return cache["elites"]
        out = []
        for cell, cid, objective, measures in archive.elites():
            spec = spec_of(cid)
            if spec is not None:
                out.append(Elite(cid, spec.source, dict(spec.params), objective, cell, measures))
        cache["at"], cache["elites"] = at, out
        return out

    return elites


def bin_of(d: Descriptor, bins: int, value: float) -> int:
    """The bin of ``value`` on descriptor ``d`` split into ``bins`` equal slices."""
    span = float(d.high) - float(d.low)
    i = int((float(value) - float(d.low)) / span * bins) if span > 0 else 0
    return min(max(i, 0), bins - 1)


def empty_cells(
    dims: Dims, measures: Sequence[Sequence[float]], limit: int = MAX_EMPTY_CELLS
) -> list[tuple[float, ...]]:
    """Centres of the cells that none of ``measures`` falls in (at most ``limit`` cells are
    looked at, in grid order)."""
    taken = {
        tuple(bin_of(d, b, m) for (d, b), m in zip(dims, values, strict=False))
        for values in measures
    }
    grid = itertools.product(*(range(int(b)) for _, b in dims))
    out = []
    for idx in itertools.islice(grid, limit):
        if idx not in taken:
            out.append(
                tuple(
                    float(d.low) + (i + 0.5) * (float(d.high) - float(d.low)) / b
                    for (d, b), i in zip(dims, idx, strict=True)
                )
            )
    return out


def nearest(dims: Dims, measures: Sequence[Sequence[float]], values: Sequence[float]) -> int | None:
    """The index in ``measures`` closest to ``values`` (each descriptor scaled by its range);
    None when ``measures`` is empty."""

    def distance(i: int) -> float:
        return sum(
            ((m - v) / ((float(d.high) - float(d.low)) or 1.0)) ** 2
            for (d, _), m, v in zip(dims, measures[i], values, strict=False)
        )

    return min(range(len(measures)), key=distance, default=None)

"""MapArchive: noise-aware replacement, ties, stats, rebuild, CVT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evolution.candidate import Outcome
from evolution.descriptors import parse_dims
from evolution.grid import IMPROVED, NEW, REJECTED, TIE, WORSE, MapArchive


def outcome(cid, objective, *, noise=0.02, regs=32, kernels=1, verdict="OK") -> Outcome:
    return Outcome(
        candidate_id=cid,
        verdict=verdict,
        objective=objective,
        objective_label="gpu-speedup",
        noise=noise,
        features={"n_regs": regs, "shared_bytes": 0, "num_warps": 4, "kernel_count": kernels},
        params={},
    )


@pytest.fixture
def archive() -> MapArchive:
    return MapArchive(parse_dims("occupancy:8,kernel_count:16"))


def add(archive: MapArchive, o: Outcome):
    d = archive.consider(o)
    if d.changes_archive:
        assert archive.commit(o, d)
    return d


def test_new_improved_tie_worse_rejected(archive):
    assert add(archive, outcome(1, 0.10)).status == NEW
    # noise 0.02 + 0.02: a challenger must be more than 0.04 faster in log space
    d = add(archive, outcome(2, 0.13))
    assert (d.status, d.previous_id, d.margin) == (TIE, 1, pytest.approx(0.04))
    assert add(archive, outcome(3, 0.10)).status == WORSE
    assert add(archive, outcome(4, 0.05)).status == WORSE
    d = add(archive, outcome(5, 0.20))
    assert (d.status, d.previous_id, d.previous_objective) == (IMPROVED, 1, 0.10)
    assert archive.elites()[0][1:3] == (5, 0.20)
    assert add(archive, outcome(6, None, verdict="INCORRECT")).status == REJECTED
    assert add(archive, outcome(7, 9.0, verdict="OOB_WRITE")).status == REJECTED
    assert len(archive) == 1


def test_other_descriptors_land_in_other_cells(archive):
    a, b, c = outcome(1, 0.1), outcome(2, 0.1, kernels=3), outcome(3, 0.1, regs=128)
    assert [add(archive, o).status for o in (a, b, c)] == [NEW, NEW, NEW]
    cells = {cell for cell, *_ in archive.elites()}
    assert len(cells) == 3
    assert archive.cell_of(archive.measures_of(b)) in cells


def test_zero_noise_needs_only_to_be_faster(archive):
    add(archive, outcome(1, 0.1, noise=0.0))
    assert add(archive, outcome(2, 0.1000001, noise=0.0)).status == IMPROVED


def test_the_elite_itself_is_not_a_challenger(archive):
    add(archive, outcome(1, 0.1))
    assert archive.consider(outcome(1, 0.5)).status == WORSE


def test_commit_refuses_a_decision_that_does_not_change_the_archive(archive):
    add(archive, outcome(1, 0.1))
    o = outcome(2, 0.0)
    with pytest.raises(ValueError, match="cannot commit"):
        archive.commit(o, archive.consider(o))


def test_resolve_tie_uses_the_mean_and_half_the_margin(archive):
    add(archive, outcome(1, 0.10))
    first = outcome(2, 0.13)
    assert archive.consider(first).status == TIE
    # mean 0.125 - 0.10 = 0.025 > (0.02 + 0.02) / 2: confirmed faster
    merged, d = archive.resolve_tie(first, outcome(2, 0.12))
    assert d.status == IMPROVED and merged.objective == pytest.approx(0.125)
    assert archive.commit(merged, d)
    assert archive.stats().best == (2, pytest.approx(0.125))


def test_resolve_tie_keeps_the_elite_when_the_mean_is_within_noise(archive):
    add(archive, outcome(1, 0.10))
    merged, d = archive.resolve_tie(outcome(2, 0.13), outcome(2, 0.08))
    assert d.status == WORSE and merged.objective == pytest.approx(0.105)
    _, d = archive.resolve_tie(outcome(2, 0.13), outcome(2, None, verdict="INCORRECT"))
    assert d.status == REJECTED


def test_stats_count_slow_elites_positively(archive):
    assert archive.stats().best is None
    add(archive, outcome(1, -1.0))
    add(archive, outcome(2, 0.5, kernels=2))
    add(archive, outcome(3, -9.0, kernels=3))  # below the -5 floor: counts 0
    s = archive.stats()
    assert s.num_elites == 3 and s.cells == 8 * 16
    assert s.coverage == pytest.approx(3 / 128)
    assert s.qd_score == pytest.approx((-1.0 + 5) + (0.5 + 5) + 0.0)
    assert s.best == (2, 0.5)


def test_integer_descriptors_get_one_cell_per_value():
    archive = MapArchive(parse_dims("kernel_count,tensor_cores"))
    for k in range(1, 17):
        for tc in (False, True):
            o = Outcome(
                k * 10 + tc,
                "OK",
                0.1,
                "gpu-speedup",
                0.0,
                {"kernel_count": k, "tensor_cores": tc},
                {},
            )
            assert add(archive, o).status == NEW
    assert archive.stats().coverage == 1.0


def test_rebuild_replays_the_live_decisions(archive):
    live = [
        outcome(1, 0.10),
        outcome(2, 0.13),  # tie...
        outcome(3, 0.30, kernels=2),
        outcome(2, 0.12),  # ...its re-measure: improves
        outcome(4, 0.31, kernels=2),  # tie, never re-measured
        outcome(5, None, verdict="TIMEOUT"),
    ]
    ties = {}
    for o in live:
        if o.candidate_id in ties:
            merged, d = archive.resolve_tie(ties.pop(o.candidate_id), o)
            if d.changes_archive:
                archive.commit(merged, d)
            continue
        d = add(archive, o)
        if d.status == TIE:
            ties[o.candidate_id] = o
    before = (archive.elites(), archive.stats())

    fresh = MapArchive(archive.dims)
    decisions = fresh.rebuild(live)
    assert (fresh.elites(), fresh.stats()) == before
    assert [d.status for _, d in decisions] == [NEW, TIE, NEW, IMPROVED, TIE, REJECTED]
    assert decisions[3][0].objective == pytest.approx(0.125)
    fresh.rebuild(live)  # idempotent: starts from an empty archive
    assert fresh.elites() == before[0]


def test_cvt_map_with_saved_centroids():
    dims = parse_dims("occupancy,kernel_count")
    a = MapArchive(dims, kind="cvt", cells=20, seed=1)
    assert a.cells == 20 and a.centroids.shape == (20, 2)
    b = MapArchive(dims, kind="cvt", centroids=a.centroids)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    o = outcome(1, 0.2, kernels=5)
    assert add(a, o).status == NEW and add(b, o).status == NEW
    assert a.elites() == b.elites()
    with pytest.raises(ValueError, match="cells"):
        MapArchive(dims, kind="cvt")
    with pytest.raises(ValueError, match="unknown map kind"):
        MapArchive(dims, kind="hex")


def test_elites_lists_cells_ids_objectives_measures(archive):
    add(archive, outcome(7, math.log(2.0), kernels=3))
    ((cell, cid, obj, measures),) = archive.elites()
    assert cid == 7 and obj == pytest.approx(math.log(2))
    assert measures == (1.0, 3.0)
    assert cell == archive.cell_of(measures)

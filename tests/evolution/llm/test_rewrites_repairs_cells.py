"""The LLM emitter's pure helpers: the map's empty cells, the repair queue, the rewrite schedule."""

from __future__ import annotations

import pytest

from evolution.descriptors import Descriptor
from evolution.grid import MapArchive
from evolution.llm.cells import bin_of, empty_cells, nearest
from evolution.llm.prompts import Evaluation, ParentView
from evolution.llm.repairs import Repairs
from evolution.llm.rewrites import Rewrites
from evolution.llm.strategies import BUILTIN, ChildOutcome, StrategyPool, pick_for_rewrite

ADVICE = (
    "Keep each program's tile in registers, unroll the inner loop over the reduction axis,"
    " and mask the last partial tile instead of padding the inputs."
)


def dim(low: float, high: float, bins: int, name: str = "x") -> tuple[Descriptor, int]:
    return Descriptor(name, name, low, high, bins, False, ("cpu",), lambda o: None), bins


# --- cells --------------------------------------------------------------------------------------


def test_a_value_falls_in_its_slice_and_values_outside_the_range_in_the_edge_bins():
    d, bins = dim(0, 10, 5)
    assert [bin_of(d, bins, v) for v in (0, 1.9, 2, 5, 9.99, 10)] == [0, 0, 1, 2, 4, 4]
    assert bin_of(d, bins, -3) == 0 and bin_of(d, bins, -0.5) == 0
    assert bin_of(d, bins, 10.01) == 4 and bin_of(d, bins, 1e9) == 4
    flat, one = dim(3, 3, 4)  # an empty range: everything in the first bin
    assert bin_of(flat, one, 2) == bin_of(flat, one, 7) == 0


@pytest.mark.parametrize("dims", [[dim(0, 10, 5)], [dim(0, 16, 4), dim(-1, 1, 3, "y")]])
def test_the_empty_cells_are_the_archives_empty_cells(dims):
    """Centres of the cells no elite is in, the same cells the archive itself leaves empty."""
    archive = MapArchive(dims)
    measures = [(1.0,), (9.5,), (12.0,)] if len(dims) == 1 else [(1.0, -0.9), (15.0, 0.2)]
    empty = empty_cells(dims, measures)
    occupied = {archive.cell_of(m) for m in measures}
    assert {archive.cell_of(c) for c in empty} == set(range(archive.cells)) - occupied
    assert len(empty) == archive.cells - len(occupied)
    if len(dims) == 1:
        # Grid order; the 12.0 outside the range is in the last bin, with the 9.5.
        assert empty == [(3.0,), (5.0,), (7.0,)]
    else:
        assert empty[0] == (2.0, 0.0)  # row-major: the centre of the second cell, (0, 1)


def test_empty_cells_looks_at_no_more_than_its_limit_in_grid_order():
    dims = [dim(0, 10, 10), dim(0, 10, 10, "y")]
    assert len(empty_cells(dims, [])) == 100
    first = empty_cells(dims, [(0.5, 0.5)], limit=5)
    assert first == [(0.5, y + 0.5) for y in range(1, 5)]  # cell (0, 0) is taken
    assert empty_cells(dims, [], limit=0) == []
    assert empty_cells([dim(0, 1, 2)], [(0.1,), (0.9,)]) == []  # a full map


def test_the_nearest_elite_is_scaled_by_each_range():
    dims = [dim(0, 100, 10), dim(0, 1, 10, "y")]
    measures = [(10.0, 0.9), (60.0, 0.15), (50.0, 0.9)]
    # In raw units (10, 0.9) is nearest (50, 0.1); scaled, 0.75 of y outweighs 0.1 of x.
    assert nearest(dims, measures, (50.0, 0.1)) == 1
    assert nearest(dims, measures, (12.0, 0.8)) == 0
    assert nearest(dims, [(5.0, 0.5), (5.0, 0.5)], (5.0, 0.5)) == 0  # ties: the first
    assert nearest(dims, [], (5.0, 0.5)) is None
    assert nearest([dim(0, 10, 5)], [(1.0,), (8.0,)], (6.0,)) == 1


# --- repairs ------------------------------------------------------------------------------------


def view(cid: int) -> ParentView:
    return ParentView(cid, f"FAIL = {cid}\n", Evaluation("RUNTIME_ERROR", messages=(f"e{cid}",)))


def test_the_newest_failure_is_repaired_first_and_each_once():
    repairs = Repairs()
    assert not repairs
    for cid in (1, 2, 3):
        repairs.failed(view(cid))
    assert repairs.pop().candidate_id == 3
    repairs.failed(view(3))  # told again (e.g. a duplicate): it was repaired already
    assert [repairs.pop().candidate_id for _ in range(2)] == [2, 1]
    assert not repairs
    assert repairs.to_json() == {"waiting": [], "done": [1, 2, 3]}


def test_at_most_size_failures_wait_and_the_oldest_drop_out():
    repairs = Repairs(size=2)
    for cid in (1, 2, 3):
        repairs.failed(view(cid))
    assert repairs.to_json()["waiting"] == [2, 3]


def test_a_restored_queue_is_the_saved_one_once_the_outcomes_are_told_again():
    live = Repairs()
    for cid in (1, 2, 3, 4):
        live.failed(view(cid))
    live.pop()  # 4 repaired
    saved = live.to_json()
    assert saved == {"waiting": [1, 2, 3], "done": [4]}

    resumed = Repairs()
    resumed.restore(saved["waiting"][1:], saved["done"])  # say 1 had dropped out
    assert resumed.to_json()["waiting"] == [2, 3]  # what was saved, before the replay
    for cid in (1, 2, 3, 4, 5):  # the loop tells every stored outcome again
        resumed.failed(view(cid))
    assert not resumed  # nothing to pop before settle()
    resumed.settle()
    assert resumed.to_json() == {"waiting": [2, 3], "done": [4]}
    popped = resumed.pop()
    assert popped.candidate_id == 3 and popped.source == "FAIL = 3\n"
    resumed.settle()  # a second settle changes nothing
    assert [resumed.pop().candidate_id] == [2] and not resumed
    resumed.failed(view(6))  # after settle, new failures queue as live
    assert resumed.pop().candidate_id == 6


def test_a_saved_id_that_is_not_told_again_is_dropped():
    repairs = Repairs()
    repairs.restore([7, 8], [])
    repairs.failed(view(8))
    repairs.settle()
    assert repairs.to_json()["waiting"] == [8]


# --- pick_for_rewrite and Rewrites.plan ---------------------------------------------------------


def kids(strategy_id: str, objectives: list[float | None]) -> list[ChildOutcome]:
    return [
        ChildOutcome(strategy_id, "OK" if o is not None else "INCORRECT", o, ("boom",))
        for o in objectives
    ]


def three() -> StrategyPool:
    return StrategyPool(BUILTIN[:3])  # tiling, vector-loads, fusion


def test_the_worst_strategy_with_enough_children_is_picked():
    pool = three()
    children = kids("tiling", [0.1, 0.2, 0.3]) + kids("vector-loads", [0.5, 0.6, 0.7])
    children += kids("fusion", [0.0, 0.0])  # the worst, but too few children
    strategy, scores = pick_for_rewrite(pool, children, [], min_children=3)
    assert strategy.id == "tiling"
    assert set(scores) == {"tiling", "vector-loads", "fusion"} and scores["fusion"].children == 2
    assert pick_for_rewrite(pool, children, [], min_children=4) is None
    # A strategy with no correct child ranks below any score.
    children += kids("fusion", [None])
    assert pick_for_rewrite(pool, children, [], min_children=3)[0].id == "fusion"


def test_equal_scores_go_to_the_older_strategy():
    pool = three()
    children = kids("fusion", [None] * 3) + kids("vector-loads", [None] * 3)
    assert pick_for_rewrite(pool, children, [1.0])[0].id == "vector-loads"


def test_a_strategy_rewritten_or_retired_is_never_picked_again():
    pool = three()
    children = kids("tiling", [None] * 3) + kids("vector-loads", [0.5] * 3)
    child = pool.add_rewrite("tiling", ADVICE)
    assert pick_for_rewrite(pool, children, [])[0].id == "vector-loads"
    pool.retire("vector-loads")
    assert pick_for_rewrite(pool, children, []) is None
    children += kids(child.id, [0.1] * 3)
    assert pick_for_rewrite(pool, children, [])[0].id == child.id


def test_no_rewrite_is_planned_before_it_is_due():
    rewrites = Rewrites(every=4, min_children=3)
    pool, models = three(), {"small": 0.2, "big": 1.0}
    children = kids("tiling", [None] * 3)
    assert rewrites.plan(pool, children, [], models) is None
    assert rewrites.next_at == 4  # not moved by a plan that was not due
    assert Rewrites(every=0).plan(pool, children * 10, [], models) is None
    assert Rewrites(every=4).plan(pool, children * 10, [], {}) is None


def test_a_due_rewrite_asks_the_heaviest_model_for_the_worst_strategy():
    rewrites = Rewrites(every=4, min_children=3)
    pool, models = three(), {"small": 0.2, "big": 1.0, "mid": 0.5}
    children = kids("tiling", [0.9] * 3) + kids("fusion", [None, None, 0.1])
    strategy_id, model, messages = rewrites.plan(pool, children, [0.1, 0.9], models)
    assert (strategy_id, model) == ("fusion", "big")
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("You improve the advice")
    assert pool.get("fusion").text in messages[1]["content"]
    assert pool.get("tiling").text in messages[1]["content"]  # the others, for contrast
    assert rewrites.next_at == len(children) + 4


def test_one_rewrite_in_flight_at_a_time_and_none_again_until_every_more_children():
    rewrites = Rewrites(every=4, min_children=3)
    pool, models = three(), {"m": 1.0}
    children = kids("tiling", [None] * 4)
    assert rewrites.plan(pool, children, [], models) is not None
    rewrites.pending["llm-9"] = "tiling"
    more = children + kids("fusion", [None] * 4)
    assert rewrites.plan(pool, more, [], models) is None  # one in flight
    assert rewrites.next_at == 8
    del rewrites.pending["llm-9"]
    assert rewrites.plan(pool, more[:7], [], models) is None  # not due yet
    assert rewrites.plan(pool, more, [], models)[0] == "tiling"  # not rewritten yet
    assert rewrites.next_at == 12


def test_a_due_plan_with_nothing_to_rewrite_waits_every_more_children():
    rewrites = Rewrites(every=4, min_children=3)
    pool = three()
    children = kids("tiling", [None, None]) + kids("fusion", [None, None])
    assert rewrites.plan(pool, children, [], {"m": 1.0}) is None
    assert rewrites.next_at == 8


def test_an_applied_rewrite_joins_the_pool_as_a_child():
    pool = three()
    child = Rewrites.apply(pool, "fusion", f"Advice: {ADVICE}\n", kids("fusion", [None]), [])
    assert (child.id, child.parent_id, child.text) == ("r1", "fusion", ADVICE)
    assert [s.id for s in pool.active] == ["tiling", "vector-loads", "fusion", "r1"]

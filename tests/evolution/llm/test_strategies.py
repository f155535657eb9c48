"""Prompt strategies: built-ins, scores by their children's rank, validated rewrites, state."""

from __future__ import annotations

import json

import pytest

from evolution.candidate import Outcome
from evolution.llm.errors import StateError, StrategyRejected
from evolution.llm.strategies import (
    BUILTIN,
    MAX_CHARS,
    ChildOutcome,
    StrategyPool,
    percentile,
    rewrite_messages,
    strategy_scores,
    validate_rewrite,
)

NEW = "Split the reduction across two passes only when one row does not fit in registers at once."


def test_builtins_are_short_distinct_advice():
    assert len({s.id for s in BUILTIN}) == len(BUILTIN) >= 4
    for s in BUILTIN:
        assert validate_rewrite(s.text, "") == s.text and s.parent_id is None


def test_percentile_is_mid_rank():
    ranked = [0.0, 1.0, 2.0, 3.0]
    assert percentile(-1, ranked) == 0.0
    assert percentile(1.0, ranked) == pytest.approx(0.375)
    assert percentile(9, ranked) == 1.0
    assert percentile(1.0, []) == 0.5


def test_scores_are_the_mean_percentile_of_correct_children():
    run = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    kids = [
        ChildOutcome("a", "OK", 0.9),
        ChildOutcome("a", "OK", 0.0),
        ChildOutcome("a", "INCORRECT", None, ("max abs error 2",)),
        ChildOutcome("b", "COMPILE_ERROR"),
    ]
    scores = strategy_scores(kids, run)
    assert scores["a"].children == 3 and scores["a"].correct == 2
    assert scores["a"].score == pytest.approx((0.95 + 0.05) / 2)
    assert scores["b"].score is None and scores["b"].correct == 0
    assert strategy_scores(reversed(kids), reversed(run)) == scores  # order does not matter


def test_a_child_from_an_outcome():
    ok = Outcome(1, "OK", 0.4, "gpu-speedup", 0.0, {}, {})
    bad = Outcome(2, "INCORRECT", 0.4, "gpu-speedup", 0.0, {}, {})
    assert ChildOutcome.from_outcome("a", ok).correct
    assert ChildOutcome.from_outcome("a", bad).objective is None


def test_the_meta_prompt_carries_the_advice_and_its_results():
    kids = [ChildOutcome("tiling", "OK", 0.5), ChildOutcome("tiling", "INCORRECT", None, ("nan",))]
    scores = strategy_scores(kids, [0.1, 0.5])
    messages = rewrite_messages(BUILTIN[0], scores["tiling"], kids, [(BUILTIN[1], None)])
    system, user = messages[0]["content"], messages[1]["content"]
    assert "no code" in system and str(MAX_CHARS) in system
    assert BUILTIN[0].text in user and BUILTIN[1].text in user
    assert "2 children, 1 correct, mean percentile 75%" in user
    assert "INCORRECT x1" in user and "failure: nan" in user
    assert messages == rewrite_messages(BUILTIN[0], scores["tiling"], kids, [(BUILTIN[1], None)])


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("short", "too_short"),
        ("x" * (MAX_CHARS + 1), "too_long"),
        ("Use this:\n```python\nimport triton\n```\nand more words here to be long enough", "code"),
        (BUILTIN[0].text.upper(), "no_change"),
        (BUILTIN[1].text, "duplicate"),
    ],
)
def test_bad_rewrites_are_rejected(reply, reason):
    with pytest.raises(StrategyRejected) as err:
        validate_rewrite(reply, BUILTIN[0].text, [s.text for s in BUILTIN])
    assert err.value.reason == reason


def test_a_rewrite_is_cleaned():
    assert validate_rewrite(f"  ```\n{NEW}\n```  ", "") == NEW
    assert validate_rewrite(f"New advice: {NEW}\n", "") == NEW


def test_a_rewrite_joins_the_pool_and_a_full_pool_retires_its_worst():
    pool = StrategyPool(max_active=len(BUILTIN))
    scores = strategy_scores(
        [ChildOutcome("fusion", "OK", 0.0), ChildOutcome("tiling", "OK", 1.0)], [0.0, 1.0]
    )
    child = pool.add_rewrite("tiling", NEW, scores)
    assert (child.id, child.parent_id, child.generation, child.text) == ("r1", "tiling", 1, NEW)
    active = [s.id for s in pool.active]
    assert "r1" in active and "fusion" not in active and len(active) == len(BUILTIN)
    assert pool.get("fusion") in pool.all
    with pytest.raises(StrategyRejected):
        pool.add_rewrite("r1", NEW)


def test_state_round_trips():
    pool = StrategyPool(max_active=3)
    pool.add_rewrite("tiling", NEW)
    restored = StrategyPool.from_json(json.loads(json.dumps(pool.to_json())))
    assert restored.to_json() == pool.to_json()
    assert restored.active == pool.active and restored.all == pool.all
    other = "Prefer one kernel per output row and keep the whole row in registers when it fits."
    assert restored.add_rewrite("r1", other).id == pool.add_rewrite("r1", other).id == "r2"


def test_bad_state_is_refused():
    with pytest.raises(StateError, match="version"):
        StrategyPool.from_json({"version": 0})
    state = StrategyPool().to_json()
    state["active"].append("ghost")
    with pytest.raises(StateError, match="ghost"):
        StrategyPool.from_json(state)

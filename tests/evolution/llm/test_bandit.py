"""The bandit chooses reproducibly, learns from rewards, follows its configuration, resumes."""

from __future__ import annotations

import json
import random

import pytest

from evolution.llm.bandit import NEW_CELL_BONUS, ArmStats, Bandit, improvement
from evolution.llm.errors import StateError

OPS = ("mutate", "crossover", "repair", "target")


def _bandit(**kw) -> Bandit:
    return Bandit({"big": 2.0, "small": 1.0}, OPS, ("s0", "s1"), seed=7, **kw)


def _world(rng: random.Random, arm) -> tuple[float, int, float]:
    """A scripted environment: the small model's mutate pays best per token."""
    model, op, _ = arm
    good = model == "small" and op == "mutate"
    gain = rng.random() * (0.5 if good else 0.05) if rng.random() < 0.6 else 0.0
    return gain, rng.randint(500, 3000), rng.random() * 2


def _run(bandit: Bandit, steps: int, rng: random.Random) -> list:
    chosen = []
    for _ in range(steps):
        arm = bandit.choose()
        bandit.credit(arm, *_world(rng, arm))
        chosen.append(arm)
    return chosen


def test_improvement_definition():
    assert improvement(None, 0.2) == 0.0
    assert improvement(0.5, 0.2) == pytest.approx(0.3)
    assert improvement(0.1, 0.2) == 0.0
    assert improvement(0.1, None) == 0.0
    assert improvement(0.1, None, new_cell=True) == NEW_CELL_BONUS
    assert improvement(float("nan"), 0.0, new_cell=True) == 0.0


def test_the_heavier_model_is_tried_first():
    assert _bandit().choose()[0] == "big"


def test_it_learns_the_best_arm():
    bandit = _bandit()
    chosen = _run(bandit, 600, random.Random(1))
    late = chosen[-200:]
    best = ("small", "mutate")
    assert sum(a[:2] == best for a in late) > len(late) / 2
    assert bandit.stats(("small", "mutate", "s0")).pulls > 0


def test_same_seed_same_choices():
    assert _run(_bandit(), 200, random.Random(3)) == _run(_bandit(), 200, random.Random(3))


def test_a_resumed_bandit_continues_identically():
    straight, world = _bandit(), random.Random(5)
    expected = _run(straight, 300, world)

    first, world = _bandit(), random.Random(5)
    head = _run(first, 137, world)
    state = json.loads(json.dumps(first.to_json()))
    resumed = Bandit.from_json(state)
    assert resumed.to_json() == first.to_json()
    tail = _run(resumed, 163, world)
    assert head + tail == expected
    assert resumed.to_json() == straight.to_json()


def test_ties_are_broken_by_the_seed():
    firsts = {Bandit({"a": 1, "b": 1}, ["mutate"], ["s"], seed=s).choose() for s in range(20)}
    assert firsts == {("a", "mutate", "s"), ("b", "mutate", "s")}


def test_models_and_strategies_can_come_and_go():
    bandit = _bandit()
    _run(bandit, 50, random.Random(2))
    before = bandit.stats(("big", "mutate", "s0"))
    bandit.set_models({"small": 1.0, "new": 1.0})
    bandit.set_strategies(["s0", "s2"])
    assert {a[0] for a in bandit.arms} == {"small", "new"}
    chosen = _run(bandit, 50, random.Random(3))
    assert all(a[0] != "big" and a[2] != "s1" for a in chosen)
    assert any(a[0] == "new" for a in chosen) and any(a[2] == "s2" for a in chosen)
    bandit.set_models({"big": 1.0})
    assert bandit.stats(("big", "mutate", "s0")) == before  # kept while away


def test_eligible_restricts_the_choice():
    bandit = _bandit()
    assert bandit.choose(lambda a: a[1] == "repair")[1] == "repair"
    assert bandit.choose(lambda a: False) is None


def test_reward_is_improvement_per_thousand_tokens_and_gpu_seconds():
    bandit = _bandit(gpu_second_cost=0.5)
    assert bandit.credit(("big", "mutate", "s0"), 0.2, 2000) == pytest.approx(0.1)
    assert bandit.credit(("big", "mutate", "s0"), 0.2, 1000, 2.0) == pytest.approx(0.1)
    assert bandit.stats(("big", "mutate", "s0")) == ArmStats(
        2, pytest.approx(0.2), 3000, 2.0, pytest.approx(0.4)
    )
    with pytest.raises(ValueError):
        bandit.credit(("big", "mutate", "s0"), -1, 10)


def test_bad_configuration_and_state_are_refused():
    with pytest.raises(ValueError, match="weight of model"):
        Bandit({"m": -1}, OPS, ["s"])
    with pytest.raises(StateError, match="version"):
        Bandit.from_json({"version": 99})
    state = _bandit().to_json()
    del state["rng"]
    with pytest.raises(StateError):
        Bandit.from_json(state)

"""Draws: SplitMix64 behind random.Random, with a one-word JSON state."""

from __future__ import annotations

import json
import random

import pytest

from evolution.llm.draws import Draws


def test_the_reference_sequence_of_splitmix64():
    # The published first outputs of SplitMix64 seeded with 0.
    d = Draws(0)
    assert d.getrandbits(64) == 0xE220A8397B1DCDAF
    assert d.getrandbits(64) == 0x6E789E6AA1B965F4


def test_a_json_round_trip_continues_the_same_stream():
    a = Draws(7)
    for _ in range(5):
        a.random()
    b = Draws(99)
    b.restore(json.loads(json.dumps(a.to_json())))
    assert [a.random() for _ in range(20)] == [b.random() for _ in range(20)]
    assert a.sample(range(100), 5) == b.sample(range(100), 5)
    assert len(json.dumps(a.to_json())) < 60  # Mersenne Twister's is about 7 KB


def test_the_random_interface_works_and_looks_uniform():
    d = Draws(3)
    xs = [d.random() for _ in range(20000)]
    assert all(0.0 <= x < 1.0 for x in xs)
    assert abs(sum(xs) / len(xs) - 0.5) < 0.01
    counts = [0] * 5
    for _ in range(10000):
        counts[d.randrange(5)] += 1
    assert min(counts) > 1800 and max(counts) < 2200
    assert d.getrandbits(0) == 0
    assert d.getrandbits(130) < 2**130
    assert sorted(d.sample(range(10), 10)) == list(range(10))
    with pytest.raises(ValueError):
        d.getrandbits(-1)


def test_seeds_give_distinct_streams_and_text_seeds_work():
    assert Draws(1).random() != Draws(2).random()
    assert Draws("run-1").random() == Draws("run-1").random()
    assert Draws("run-1").random() != Draws("run-2").random()


def test_an_old_mersenne_twister_state_is_read_deterministically():
    old = random.Random(5).getstate()
    saved = [old[0], list(old[1]), old[2]]
    a, b = Draws(0), Draws(1)
    a.restore(saved)
    b.restore(json.loads(json.dumps(saved)))
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]


@pytest.mark.parametrize(
    "bad",
    [["mt", "00", None], ["splitmix64", "zz", None], ["splitmix64", "1" * 17, None], [1, 2]],
)
def test_a_bad_state_is_an_error(bad):
    with pytest.raises((ValueError, TypeError)):
        Draws(0).restore(bad)

"""Seed and parameter emitters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ribs.emitters import EmitterBase

from evolution.candidate import CandidateSpec, Outcome
from evolution.descriptors import parse_dims
from evolution.emitters import Emitter, GenomeEmitter, ParamEmitter, SeedEmitter
from evolution.grid import MapArchive

SRC = "class ModelNew:\n    pass\n"
SPACE = {"BLOCK": [128, 256, 512, 1024], "num_warps": [1, 2, 4, 8, 16]}
DIMS = parse_dims("block_size,num_warps_param")


def told(emitter: ParamEmitter, archive: MapArchive, spec: CandidateSpec, cid: int, obj=0.1):
    o = Outcome(cid, "OK", obj, "cpu-time", 0.0, {}, dict(spec.params))
    d = archive.consider(o)
    if d.changes_archive:
        archive.commit(o, d)
    emitter.tell(spec, o, d)
    return d


def test_seed_emitter_yields_each_seed_once():
    a, b = CandidateSpec("A = 1\n", label="a"), CandidateSpec("B = 1\n", label="b")
    same_as_a = CandidateSpec("A  =  1  # comment\n", label="a2")
    e = SeedEmitter([a, b, same_as_a])
    assert isinstance(e, Emitter) and e.name == "seed" and e.remaining == 2
    assert e.ask(1) == [a]
    assert not e.exhausted
    assert e.ask(5) == [b]
    assert e.exhausted and e.ask(3) == []
    assert e.owns(a) and not e.owns(CandidateSpec("C = 1\n"))


def test_seed_emitter_skips_seeds_done_in_an_earlier_session():
    a, b = CandidateSpec("A = 1\n"), CandidateSpec("B = 1\n")
    e = SeedEmitter([a, b])
    e.adopt(a)
    assert e.ask(5) == [b]


def test_param_emitter_starts_with_the_default_then_explores():
    e = ParamEmitter(SRC, SPACE, DIMS, "fam", seed=0, initial=3)
    first = e.ask(1)[0]
    assert first.params == {"BLOCK": 128, "num_warps": 1}
    assert (first.emitter, first.label, first.parent_ids) == ("params", "fam", ())
    assert e.decode(first.genome) == (0, 0)
    more = e.ask(3)
    assert len(more) == 3 and all(s.parent_ids == () for s in more)
    assert len({tuple(s.params.items()) for s in [first, *more]}) == 4
    assert e.name == "params:fam" and e.owns(first)
    assert not e.owns(CandidateSpec(SRC, first.params, emitter="params", label="other"))


def test_decode_follows_the_documented_formula():
    e = ParamEmitter(SRC, SPACE, DIMS, "fam")
    assert e.decode([0.0, 0.0]) == (0, 0)
    assert e.decode([0.2499, 0.2]) == (0, 1)
    assert e.decode([0.25, 0.99]) == (1, 4)
    assert e.decode([1.0, 1.0]) == (3, 4)  # g = 1 is clipped to the last choice
    assert e.decode([-0.3, 7.0]) == (0, 4)
    for ix in itertools.product(range(4), range(5)):
        assert e.decode(e.centre(ix)) == ix


def test_param_emitter_proposes_every_point_once_then_is_exhausted():
    archive = MapArchive(DIMS)
    e = ParamEmitter(SRC, SPACE, DIMS, "fam", seed=3)
    seen = set()
    cid = 0
    while not e.exhausted:
        batch = e.ask(3)
        assert batch, "not exhausted, so it must propose something"
        for spec in batch:
            key = tuple(sorted(spec.params.items()))
            assert key not in seen
            seen.add(key)
            cid += 1
            told(e, archive, spec, cid, obj=-0.01 * cid)
    assert len(seen) == e.size == 20 == e.proposed
    assert e.ask(4) == []


@pytest.mark.parametrize("variation", ["gaussian", "iso_line"])
def test_offspring_name_their_parents_from_the_family_elites(variation):
    archive = MapArchive(DIMS)
    space = {"BLOCK": [2**k for k in range(4, 14)], "num_warps": [1, 2, 4, 8, 16, 32]}
    e = ParamEmitter(SRC, space, DIMS, "fam", variation=variation, seed=1, initial=2)
    ids = {}
    for spec in e.ask(3):  # default + 2 random: no parents
        ids[len(ids) + 1] = spec
        told(e, archive, spec, len(ids))
    assert len(e.genomes.archive) == 3
    children = e.ask(10)
    assert children and all(s.parent_ids for s in children)
    assert all(set(s.parent_ids) <= set(ids) for s in children)
    if variation == "iso_line":
        assert any(len(s.parent_ids) == 2 for s in children)
    assert all(0.0 <= g <= 1.0 for s in children for g in s.genome)


def test_genome_emitter_is_a_ribs_custom_emitter():
    e = ParamEmitter(SRC, SPACE, DIMS, "fam")
    assert isinstance(e.genomes, GenomeEmitter) and isinstance(e.genomes, EmitterBase)
    e.genomes.batch_size = 5
    g = e.genomes.ask()
    assert g.shape == (5, 2) and np.all((g >= 0) & (g <= 1))
    assert (e.genomes.last_parent_ids == -1).all()  # empty shadow archive: random genomes


def test_failed_candidates_do_not_become_parents():
    archive = MapArchive(DIMS)
    e = ParamEmitter(SRC, SPACE, DIMS, "fam", seed=2)
    spec = e.ask(1)[0]
    o = Outcome(1, "INCORRECT", None, "cpu-time", 0.0, {}, spec.params)
    e.tell(spec, o, archive.consider(o))
    assert len(e.genomes.archive) == 0


def test_resume_learns_points_and_elites_from_params_alone():
    archive = MapArchive(DIMS)
    e = ParamEmitter(SRC, SPACE, DIMS, "fam", seed=4)
    stored = CandidateSpec(SRC, {"BLOCK": 512, "num_warps": 4}, emitter="params", label="fam")
    assert e.indices_of(stored) == (2, 2)
    told(e, archive, stored, 9)
    pending = CandidateSpec(SRC, {"BLOCK": 256, "num_warps": 1}, emitter="params", label="fam")
    e.adopt(pending)
    proposed = [tuple(sorted(s.params.items())) for s in e.ask(18)]
    assert len(proposed) == 18
    assert tuple(sorted(stored.params.items())) not in proposed
    assert tuple(sorted(pending.params.items())) not in proposed
    assert e.exhausted
    off_space = CandidateSpec(SRC, {"BLOCK": 3}, emitter="params", label="fam")
    assert e.indices_of(off_space) is None


def test_spaces_too_large_to_enumerate_end_after_many_consecutive_misses():
    space = {"a": list(range(6)), "b": list(range(6))}
    e = ParamEmitter(SRC, space, DIMS, "big", seed=0, enumerate_limit=0, retries=2, max_misses=8)
    rounds = 0
    while not e.exhausted and rounds < 1000:
        e.ask(1)
        rounds += 1
    assert e.exhausted and rounds < 1000
    assert e.ask(1) == []


def test_bad_spaces_and_variations_are_refused():
    with pytest.raises(ValueError, match="empty search space"):
        ParamEmitter(SRC, {}, DIMS, "fam")
    with pytest.raises(ValueError, match="non-empty list"):
        ParamEmitter(SRC, {"BLOCK": []}, DIMS, "fam")
    with pytest.raises(ValueError, match="unknown variation"):
        ParamEmitter(SRC, SPACE, DIMS, "fam", variation="crossover")

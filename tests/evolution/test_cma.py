"""CMAParamEmitter: CMA-ME with generation barriers, through the real SearchLoop and fakes."""

from __future__ import annotations

import collections
import dataclasses
import math
import threading

import numpy as np
import pytest
from ribs.emitters import EvolutionStrategyEmitter

from evolution.candidate import CandidateSpec, Outcome
from evolution.descriptors import parse_dims
from evolution.emitters import CMAParamEmitter, ParamEmitter
from evolution.fakes import FakeDispatcher, MemoryStore, bowl_ms, fake_result
from evolution.grid import IMPROVED, TIE, MapArchive
from evolution.loop import STOP_BUDGET, STOP_EXHAUSTED, STOP_STOPPED, Progress, SearchLoop

SRC = "import triton\n\nclass ModelNew:\n    pass\n"
SPACE = {"BLOCK": [2**k for k in range(5, 14)], "num_warps": [1, 2, 4, 8, 16, 32]}
OPTIMUM = {"BLOCK": 1024, "num_warps": 8}
CPU_DIMS = "block_size,num_warps_param"


def bowl(job) -> dict:
    return fake_result(job.params, bowl_ms(job.params), device="cpu")


def objective_of(params) -> float:
    return math.log(0.8 / bowl_ms(params))


class ESSpy:
    """Records every ``ask`` and ``tell`` of pyribs' EvolutionStrategyEmitter."""

    def __init__(self, monkeypatch) -> None:
        self.asked: list[np.ndarray] = []
        self.told: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        ask, tell = EvolutionStrategyEmitter.ask, EvolutionStrategyEmitter.tell
        spy = self

        def spy_ask(es):
            out = ask(es)
            spy.asked.append(np.array(out))
            return out

        def spy_tell(es, solution, objective, measures, add_info, **fields):
            spy.told.append(
                (
                    np.array(solution),
                    np.array(objective),
                    np.array(add_info["status"]),
                    np.array(fields["candidate_id"]),
                )
            )
            return tell(es, solution, objective, measures, add_info, **fields)

        monkeypatch.setattr(EvolutionStrategyEmitter, "ask", spy_ask)
        monkeypatch.setattr(EvolutionStrategyEmitter, "tell", spy_tell)


def cma(archive, seed=0, space=SPACE, **kw) -> CMAParamEmitter:
    return CMAParamEmitter(SRC, space, archive.dims, "fam", seed=seed, **kw)


def run_loop(emitter_kw=None, *, dims=CPU_DIMS, budget=40, capacity=4, seed=0, evaluate=bowl,
             dispatcher_cls=FakeDispatcher, store=None, **loop_kw):  # fmt: skip
    archive = MapArchive(parse_dims(dims))
    emitter = cma(archive, seed=seed, **(emitter_kw or {}))
    dispatcher = dispatcher_cls(evaluate, capacity, seed=seed)
    store = store if store is not None else MemoryStore()
    loop = SearchLoop(archive, [emitter], dispatcher, store, budget, **loop_kw)
    return loop, emitter, dispatcher, store


def told(emitter, archive, spec, cid, obj=0.1, verdict="OK"):
    o = Outcome(cid, verdict, obj if verdict == "OK" else None, "cpu-time", 0.0, {}, spec.params)
    d = archive.consider(o)
    if d.changes_archive:
        archive.commit(o, d)
    emitter.tell(spec, o, d)
    return o, d


# --- the barrier ------------------------------------------------------------------------------


def test_ask_hands_out_one_generation_then_waits_for_all_of_it(monkeypatch):
    spy = ESSpy(monkeypatch)
    archive = MapArchive(parse_dims(CPU_DIMS))
    e = cma(archive, batch_size=8)
    first = e.ask(3)
    assert len(first) == 3 and len(spy.asked) == 1
    rest = e.ask(100)
    assert len(rest) == 5 and e.waiting and e.ask(1) == []
    members = first + rest
    assert [s.genome for s in members] == [tuple(g) for g in spy.asked[0]]
    assert all(s.emitter == "params" and s.label == "fam" and e.owns(s) for s in members)
    for cid, spec in enumerate(members[:-1], 1):
        told(e, archive, spec, cid)
        assert e.ask(1) == [] and not spy.told
    told(e, archive, members[-1], 8)
    assert len(spy.told) == 1 and e.generations == 1 and not e.waiting
    assert len(e.ask(8)) == 8 and len(spy.asked) == 2


class GenerationChecker(FakeDispatcher):
    """Asserts at every submit that every job in flight belongs to the current generation."""

    emitter: CMAParamEmitter

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.generation_of: dict[str, int] = {}
        self.barrier_polls = 0

    def submit(self, job):
        gen = self.emitter.generations
        assert all(self.generation_of[j.job_id] == gen for j in self._pending)
        assert self.emitter.in_flight <= self.emitter.batch_size
        self.generation_of[job.job_id] = gen
        super().submit(job)

    def poll(self, timeout_s):
        if self.emitter.waiting and self.outstanding < self.capacity:
            self.barrier_polls += 1  # free capacity, but the loop waits for the generation
        return super().poll(timeout_s)


def test_the_loop_never_has_more_than_one_generation_in_flight(monkeypatch):
    spy = ESSpy(monkeypatch)
    loop, e, dispatcher, store = run_loop(
        dict(batch_size=8), budget=40, capacity=4, seed=3, dispatcher_cls=GenerationChecker
    )
    dispatcher.emitter = e
    summary = loop.run()
    assert summary.evaluations == 40 and summary.stopped_reason == STOP_BUDGET
    assert dispatcher.barrier_polls > 0
    per_gen = collections.Counter(dispatcher.generation_of.values())
    assert max(per_gen.values()) <= 8  # duplicates are learned from the store, not dispatched
    # Every generation told to the ES is complete and in ask order.
    assert len(spy.told) == e.generations >= 2
    for asked, (solution, *_) in zip(spy.asked, spy.told, strict=False):
        assert solution.shape == (8, 2) and np.array_equal(asked, solution)


def test_out_of_order_results_are_matched_to_their_members(monkeypatch):
    spy = ESSpy(monkeypatch)
    loop, e, dispatcher, store = run_loop(dict(batch_size=6), budget=30, capacity=6, seed=5)
    loop.run()
    assert len(spy.told) >= 3
    for solution, objective, _, ids in spy.told:
        for genome, obj, cid in zip(solution, objective, ids, strict=True):
            params = e.params_of(e.decode(genome))
            assert obj == pytest.approx(objective_of(params))
            assert store.specs[int(cid)].params == params


def test_results_told_in_any_order_reach_the_es_in_ask_order(monkeypatch):
    spy = ESSpy(monkeypatch)
    archive = MapArchive(parse_dims(CPU_DIMS))
    e = cma(archive, batch_size=8, seed=2)
    members = e.ask(8)
    for i in np.random.default_rng(0).permutation(8):
        told(e, archive, members[i], int(i) + 1, obj=0.01 * int(i))
    solution, objective, _, ids = spy.told[0]
    assert list(ids) == list(range(1, 9))
    assert objective == pytest.approx([0.01 * i for i in range(8)])


def test_budget_40_gets_within_1_2x_of_the_optimum():
    loop, e, dispatcher, store = run_loop(budget=40, capacity=4, seed=11)
    summary = loop.run()
    assert summary.evaluations == 40
    best = store.specs[summary.best.candidate_id].params
    assert summary.best.speedup >= 2.0 / 1.2  # the fake optimum is 2x
    assert bowl_ms(best) <= 1.2 * bowl_ms(OPTIMUM)
    assert e.generations >= 2
    assert any(store.specs[j.candidate_id].parent_ids for j in dispatcher.submitted)


# --- ties, failures ---------------------------------------------------------------------------


def test_a_tie_and_its_remeasure_count_once():
    archive = MapArchive(parse_dims(CPU_DIMS))
    e = cma(archive, batch_size=4)
    members = e.ask(4)
    o, d = told(e, archive, members[0], 1, obj=0.2)
    tie = dataclasses.replace(d, status=TIE)
    e.tell(members[0], o, tie)
    e.tell(members[0], o, dataclasses.replace(d, status=IMPROVED))  # the re-measure
    for cid, spec in enumerate(members[1:3], 2):
        told(e, archive, spec, cid)
    assert e.generations == 0 and e.waiting and e.in_flight == 1
    told(e, archive, members[3], 4)
    assert e.generations == 1
    e.tell(members[0], o, tie)  # a late re-measure of an earlier generation is ignored
    assert e.generations == 1 and len(e.shadow) <= 4


def ties_everywhere(job) -> dict:
    # Every new candidate is a hair faster than the previous ones: a tie in the single cell.
    return fake_result(job.params, 0.5 - 0.0005 * job.candidate_id, device="cpu")


def test_ties_remeasured_by_the_loop_do_not_double_count(monkeypatch):
    spy = ESSpy(monkeypatch)
    loop, e, dispatcher, store = run_loop(
        dict(batch_size=5), dims="backend", budget=30, capacity=3, seed=1, evaluate=ties_everywhere
    )
    summary = loop.run()
    per_candidate = collections.Counter(j.candidate_id for j in dispatcher.submitted)
    assert any(n == 2 for n in per_candidate.values())  # re-measured ties
    assert summary.evaluations == 30
    assert len(spy.told) == e.generations >= 2
    for solution, _, _, ids in spy.told:
        assert len(solution) == 5 and (ids > 0).all()


def sometimes_failing(job) -> dict:
    if job.params["num_warps"] >= 16 or job.params["BLOCK"] == 64:
        return fake_result(job.params, 1.0, device="cpu", verdict="RUNTIME_ERROR")
    return bowl(job)


def test_failures_do_not_crash_the_es_and_never_enter_the_shadow_archive(monkeypatch):
    spy = ESSpy(monkeypatch)

    def gate(spec: CandidateSpec):
        if spec.params["BLOCK"] == 8192:
            return {"verdict": "STATIC_REJECT", "messages": ["too big"], "features": {}}
        return None

    loop, e, dispatcher, store = run_loop(
        budget=40, capacity=4, seed=4, prefilter=gate, evaluate=sometimes_failing
    )
    summary = loop.run()
    assert summary.stopped_reason == STOP_BUDGET and summary.evaluations == 40
    assert summary.verdicts.get("RUNTIME_ERROR", 0) > 0
    failed = {cid for _, cid, r in store.results if r["verdict"] != "OK"}
    shadow_ids = set(e.shadow.data("candidate_id").tolist())
    assert shadow_ids and not shadow_ids & failed
    penalised = 0
    for _, objective, status, ids in spy.told:
        assert np.isfinite(objective).all()
        bad = np.isin(ids, list(failed))
        penalised += int(bad.sum())
        assert (status[bad] == 0).all()
        if bad.any() and (~bad).any():
            assert objective[bad].max() < objective[~bad].min()
    assert penalised > 0


def always_failing(job) -> dict:
    return fake_result(job.params, 1.0, device="cpu", verdict="COMPILE_ERROR")


def test_a_run_where_everything_fails_restarts_instead_of_crashing():
    loop, e, dispatcher, store = run_loop(
        dict(batch_size=4), budget=20, capacity=4, seed=2, evaluate=always_failing
    )
    summary = loop.run()
    assert summary.evaluations == 20 and summary.elites == 0
    assert e.generations >= 5 and e.restarts >= 5 and len(e.shadow) == 0


# --- exhaustion, resume -----------------------------------------------------------------------


def test_a_covered_space_exhausts_the_emitter():
    space = {"BLOCK": [256, 1024], "num_warps": [4, 8]}
    loop, e, dispatcher, store = run_loop(dict(space=space, batch_size=4), budget=50, seed=6)
    summary = loop.run()
    assert summary.stopped_reason == STOP_EXHAUSTED and summary.evaluations == 4
    assert e.exhausted and e.proposed == 4 and e.ask(4) == []


def test_max_generations_exhausts_the_emitter():
    loop, e, dispatcher, store = run_loop(dict(max_generations=2, batch_size=6), budget=50)
    summary = loop.run()
    assert summary.stopped_reason == STOP_EXHAUSTED
    assert e.generations == 2 and e.exhausted and summary.evaluations <= 12


def test_resume_feeds_stored_outcomes_to_the_shadow_archive_and_adopts_pending():
    store = MemoryStore()
    stop = threading.Event()

    def stop_early(p: Progress) -> None:
        if p.evaluations >= 10 and p.in_flight:
            stop.set()

    loop1, e1, d1, _ = run_loop(
        dict(batch_size=6), budget=40, capacity=4, seed=1, store=store, on_progress=stop_early
    )
    s1 = loop1.run(stop)
    assert s1.stopped_reason == STOP_STOPPED
    done = {cid for _, cid, _ in store.results}
    abandoned = {cid for cid, _ in store.pending()}
    assert abandoned

    loop2, e2, d2, _ = run_loop(dict(batch_size=6), budget=40, capacity=4, seed=2, store=store)
    assert loop2.resume() == s1.evaluations
    assert len(e2.shadow) == len(e1.shadow) > 0 and e2.generations == 0
    assert e2.proposed == len(done | abandoned)
    s2 = loop2.run()
    best = e2.shadow.best_elite
    assert e2.es is not None and e2.es.x0.shape == best["solution"].shape
    redispatched = [j.candidate_id for j in d2.submitted]
    assert set(redispatched[: len(abandoned)]) == abandoned
    assert not done & set(redispatched)
    assert s2.stopped_reason == STOP_BUDGET and s2.evaluations == 40 == len(store.results)
    keys = [store.specs[cid].key for _, cid, _ in store.results]
    assert len(keys) == len(set(keys))


def test_resume_starts_the_es_from_the_best_stored_elite():
    archive = MapArchive(parse_dims(CPU_DIMS))
    e = cma(archive)
    best = CandidateSpec(SRC, {"BLOCK": 512, "num_warps": 4}, emitter="params", label="fam")
    other = CandidateSpec(SRC, {"BLOCK": 64, "num_warps": 1}, emitter="params", label="fam")
    told(e, archive, best, 1, obj=0.5)
    told(e, archive, other, 2, obj=0.1)
    assert e.generations == 0 and len(e.shadow) == 2
    e.ask(1)
    assert np.allclose(e.es.x0, e.centre(e.indices_of(best)))


# --- surface ----------------------------------------------------------------------------------


def test_name_owns_and_bad_arguments():
    archive = MapArchive(parse_dims(CPU_DIMS))
    e = cma(archive)
    assert isinstance(e, ParamEmitter) and e.name == "cma:fam"
    assert e.owns(CandidateSpec(SRC, {"BLOCK": 32}, emitter="params", label="fam"))
    assert not e.owns(CandidateSpec(SRC, {"BLOCK": 32}, emitter="params", label="other"))
    with pytest.raises(ValueError, match="unknown ranker"):
        cma(archive, ranker="nov")
    with pytest.raises(ValueError, match="batch_size"):
        cma(archive, batch_size=1)
    with pytest.raises(ValueError, match="empty search space"):
        cma(archive, space={})

"""SearchLoop against in-memory fakes: budget, duplicates, ties, idempotence, stop, resume."""

from __future__ import annotations

import collections
import math
import re
import threading
import time

import pytest

from evolution.candidate import CandidateSpec
from evolution.descriptors import parse_dims
from evolution.emitters import Emitter, ParamEmitter, SeedEmitter
from evolution.fakes import FakeDispatcher, MemoryStore, bowl_ms, fake_result
from evolution.grid import IMPROVED, NEW, TIE, WORSE, MapArchive
from evolution.loop import (
    STOP_BUDGET,
    STOP_EXHAUSTED,
    STOP_STALLED,
    STOP_STOPPED,
    Progress,
    SearchLoop,
)
from evolution.ports import JobResult

CPU_DIMS = "block_size,num_warps_param"
SRC = "import triton\n\nclass ModelNew:\n    pass\n"
SPACE = {"BLOCK": [2**k for k in range(5, 14)], "num_warps": [1, 2, 4, 8, 16, 32]}
OPTIMUM = {"BLOCK": 1024, "num_warps": 8}


def seed(ms: float, second_ms: float | None = None, tag: str = "") -> CandidateSpec:
    text = f"MS = {ms}\nTAG = {tag!r}\n"
    if second_ms is not None:
        text += f"MS2 = {second_ms}\n"
    return CandidateSpec(text, label=f"seed-{ms}-{tag}")


class Evaluator:
    """Fake evaluator: ``MS = x`` in the source fixes the time (``MS2`` for a re-measure),
    otherwise :func:`bowl_ms` of the params; ``FAIL`` in the source is a runtime error."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.calls: collections.Counter[int] = collections.Counter()

    def __call__(self, job) -> dict:
        self.calls[job.candidate_id] += 1
        if "FAIL" in job.source:
            return fake_result(job.params, 1.0, device=self.device, verdict="RUNTIME_ERROR")
        ms = re.search(r"^MS = ([0-9.]+)", job.source, re.M)
        ms2 = re.search(r"^MS2 = ([0-9.]+)", job.source, re.M)
        if ms2 and self.calls[job.candidate_id] > 1:
            t = float(ms2.group(1))
        else:
            t = float(ms.group(1)) if ms else bowl_ms(job.params)
        return fake_result(job.params, t, device=self.device)


def make_loop(
    emitters,
    *,
    dims=CPU_DIMS,
    budget=20,
    capacity=4,
    seed_=0,
    redeliver=0.0,
    device="cpu",
    store=None,
    **kw,
):
    archive = MapArchive(parse_dims(dims))
    built = [e(archive) if callable(e) and not isinstance(e, Emitter) else e for e in emitters]
    dispatcher = FakeDispatcher(Evaluator(device), capacity, seed=seed_, redeliver=redeliver)
    store = store if store is not None else MemoryStore()
    loop = SearchLoop(archive, built, dispatcher, store, budget, **kw)
    return loop, archive, dispatcher, store


def params_family(label="fam", seed_=0, space=SPACE, **kw):
    return lambda archive: ParamEmitter(SRC, space, archive.dims, label, seed=seed_, **kw)


class CheckingDispatcher(FakeDispatcher):
    """Asserts the budget and capacity invariants at every submit (a job is in flight from
    when it is recorded, so ``in_flight`` counts this one)."""

    loop: SearchLoop

    def submit(self, job):
        assert self.outstanding < self.capacity
        assert self.loop.in_flight <= self.capacity
        assert self.loop.evaluations + self.loop.in_flight <= self.loop.budget
        super().submit(job)


def test_budget_is_respected_exactly():
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    emitters = [
        SeedEmitter([seed(0.5), seed(0.45, tag="b")]),
        ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=1),
    ]
    dispatcher = CheckingDispatcher(Evaluator("cuda"), 5, seed=3, redeliver=0.3)
    store = MemoryStore()
    loop = SearchLoop(archive, emitters, dispatcher, store, budget=23)
    dispatcher.loop = loop
    summary = loop.run()
    assert summary.stopped_reason == STOP_BUDGET
    assert summary.evaluations == 23 == len(dispatcher.submitted)
    assert len([r for r in store.results if r[0] is not None]) == 23
    assert dispatcher.outstanding == 0


def test_duplicates_are_never_dispatched():
    space = {"BLOCK": [64, 128, 256, 512], "num_warps": [2, 4, 8]}
    twins = [params_family("a", 1, space), params_family("b", 2, space)]
    same = SeedEmitter([CandidateSpec(SRC, {"BLOCK": 64, "num_warps": 2}, label="dup-seed")])
    loop, archive, dispatcher, store = make_loop([*twins, same], budget=100)
    summary = loop.run()
    keys = [(j.source, tuple(sorted(j.params.items()))) for j in dispatcher.submitted]
    assert len(keys) == len(set(keys)) == 12
    assert summary.stopped_reason == STOP_EXHAUSTED and summary.evaluations == 12
    assert loop.duplicates >= 12  # the second family and the seed only proposed duplicates
    assert summary.elites == 12


def test_a_duplicate_with_a_stored_result_is_learned_for_free():
    store = MemoryStore()
    old = seed(0.2, tag="earlier run")
    cid = store.propose(old).candidate_id
    store.ingest(JobResult("old-job", cid, fake_result({}, 0.2, device="cpu")))
    loop, archive, dispatcher, _ = make_loop([SeedEmitter([old, seed(0.5)])], budget=5, store=store)
    summary = loop.run()
    assert [j.candidate_id for j in dispatcher.submitted] == [cid + 1]
    assert summary.evaluations == 1
    assert summary.best.candidate_id == cid and summary.best.speedup == pytest.approx(4.0)


def test_an_elite_won_by_a_free_duplicate_is_stored_with_its_round():
    store = MemoryStore()
    old = seed(0.2, tag="earlier run")
    cid = store.propose(old).candidate_id
    store.ingest(JobResult("old-job", cid, fake_result({}, 0.2, device="cpu")))
    seen_at_submit: list[list[int]] = []

    class Watching(FakeDispatcher):
        def submit(self, job):
            seen_at_submit.append([e[1] for e in store.elite_events])
            super().submit(job)

    archive = MapArchive(parse_dims(CPU_DIMS))
    dispatcher = Watching(Evaluator("cpu"), 4)
    loop = SearchLoop(archive, [SeedEmitter([old, seed(0.5)])], dispatcher, store, 5)
    loop.run()
    assert seen_at_submit == [[cid]]  # stored before the round's job went out


class Recorder(SeedEmitter):
    def __init__(self, specs):
        super().__init__(specs)
        self.told: list[tuple[int, str]] = []

    def tell(self, spec, outcome, decision):
        super().tell(spec, outcome, decision)
        self.told.append((outcome.candidate_id, decision.status))


def test_a_duplicate_never_evaluated_by_its_first_run_is_evaluated_now():
    store = MemoryStore()
    orphan = seed(0.3, tag="proposed by a run that crashed")
    cid = store.propose(orphan).candidate_id  # no result, and nobody waits for one
    loop, archive, dispatcher, _ = make_loop([SeedEmitter([orphan])], budget=5, store=store)
    summary = loop.run()
    assert [j.candidate_id for j in dispatcher.submitted] == [cid]
    assert summary.evaluations == 1 and summary.elites == 1


def test_ties_are_remeasured_once_and_settled_by_the_mean():
    # objective = log(0.8 / ms), noise 0.02 per measurement: margin 0.04 between two.
    seeds = [
        seed(0.5),  # 1: elite
        seed(0.495),  # 2: tie (+0.010); re-measured the same: within half margin -> worse
        seed(0.485, second_ms=0.47),  # 3: tie (+0.031); re-measure +0.062 -> mean wins
    ]
    emitter = Recorder(seeds)
    loop, archive, dispatcher, store = make_loop([emitter], budget=10, capacity=1, device="cuda")
    summary = loop.run()
    per_candidate = collections.Counter(j.candidate_id for j in dispatcher.submitted)
    assert per_candidate == {1: 1, 2: 2, 3: 2}
    assert summary.evaluations == 5 and summary.stopped_reason == STOP_EXHAUSTED
    assert emitter.told == [(1, NEW), (2, TIE), (2, WORSE), (3, TIE), (3, IMPROVED)]
    assert summary.best.candidate_id == 3
    assert [e[1] for e in store.elite_events] == [1, 3]


def test_a_tie_found_when_the_budget_is_spent_keeps_the_elite():
    loop, archive, dispatcher, _ = make_loop(
        [SeedEmitter([seed(0.5), seed(0.495)])], budget=2, capacity=1, device="cuda"
    )
    summary = loop.run()
    assert len(dispatcher.submitted) == 2 and summary.evaluations == 2
    assert summary.best.candidate_id == 1


def test_duplicate_deliveries_are_ingested_once():
    loop, archive, dispatcher, store = make_loop(
        [params_family(seed_=5)], budget=25, capacity=6, seed_=7, redeliver=1.0
    )
    summary = loop.run()
    assert dispatcher.redelivered > 5
    assert summary.evaluations == 25 == len(store.results)
    cells = [e[0] for e in store.elite_events]
    assert len(cells) == len(set(cells)) == summary.elites  # one cell per point here


class ElsewhereStore(MemoryStore):
    """A store that already holds every result (ingest returns False) after the first 3."""

    def ingest(self, job_result):
        fresh = super().ingest(job_result)
        return fresh and len(self.results) <= 3


def test_results_the_store_already_holds_are_learned_once_and_not_awaited_forever():
    store = ElsewhereStore()
    loop, archive, dispatcher, _ = make_loop(
        [params_family(seed_=2)], budget=12, capacity=3, seed_=4, redeliver=0.5, store=store
    )
    summary = loop.run()
    assert summary.evaluations == 12 == len(store.results) == len(dispatcher.submitted)
    assert summary.stopped_reason == STOP_BUDGET


class SilentDispatcher(FakeDispatcher):
    """Accepts jobs and never finishes them (a slow fleet)."""

    def poll(self, timeout_s):
        time.sleep(timeout_s)
        return []


def test_stop_event_returns_promptly_and_leaves_jobs_pending():
    archive = MapArchive(parse_dims(CPU_DIMS))
    store = MemoryStore()
    emitter = ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=0)
    dispatcher = SilentDispatcher(Evaluator(), capacity=4)
    loop = SearchLoop(archive, [emitter], dispatcher, store, budget=50, poll_timeout_s=0.05)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    summary = loop.run(stop)
    assert time.monotonic() - t0 < 1.0
    assert summary.stopped_reason == STOP_STOPPED and summary.evaluations == 0
    assert len(dispatcher.submitted) == 4 == len(store.pending())


def test_stop_from_progress_callback():
    stop = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if p.evaluations >= 6:
            stop.set()

    loop, *_ = make_loop([params_family()], budget=40, capacity=2, on_progress=on_progress)
    summary = loop.run(stop)
    assert summary.stopped_reason == STOP_STOPPED
    assert 6 <= summary.evaluations < 40
    assert [p.evaluations for p in seen] == sorted(p.evaluations for p in seen)
    assert seen[-1].objective_label == "cpu-time" and seen[-1].best_speedup > 0
    assert seen[-1].best_speedup == pytest.approx(math.exp(seen[-1].best_objective))


def test_resume_does_not_redispatch_evaluated_candidates():
    store = MemoryStore()
    stop = threading.Event()

    def stop_early(p: Progress) -> None:
        if p.evaluations >= 9:
            stop.set()

    seeds = [seed(0.9, tag="x"), seed(0.7, tag="y")]
    loop1, archive1, d1, _ = make_loop(
        [SeedEmitter(seeds), params_family(seed_=3)],
        budget=30,
        capacity=4,
        store=store,
        on_progress=stop_early,
        seed_=1,
    )
    s1 = loop1.run(stop)
    assert s1.stopped_reason == STOP_STOPPED
    done = {cid for _, cid, _ in store.results}
    abandoned = {cid for cid, _ in store.pending()}
    assert abandoned  # jobs were in flight when it stopped

    loop2, archive2, d2, _ = make_loop(
        [SeedEmitter(seeds), params_family(seed_=4)], budget=30, capacity=4, store=store, seed_=2
    )
    assert loop2.resume() == s1.evaluations
    assert archive2.elites() == archive1.elites()
    s2 = loop2.run()
    redispatched = [j.candidate_id for j in d2.submitted]
    assert set(redispatched[: len(abandoned)]) == abandoned  # pending first
    assert not done & set(redispatched)
    assert s2.evaluations == 30 == len(store.results)
    assert s2.stopped_reason == STOP_BUDGET
    keys = [store.specs[cid].key for _, cid, _ in store.results]
    assert len(keys) == len(set(keys))


def test_prefilter_rejects_without_spending_budget():
    def gate(spec: CandidateSpec):
        if spec.params.get("num_warps") == 32:
            return {"verdict": "STATIC_REJECT", "messages": ["too many warps"], "features": {}}
        return None

    space = {"BLOCK": [64, 128], "num_warps": [4, 32]}
    loop, archive, dispatcher, store = make_loop(
        [params_family(space=space)], budget=10, prefilter=gate
    )
    summary = loop.run()
    assert summary.evaluations == 2 == len(dispatcher.submitted)
    assert all(j.params["num_warps"] == 4 for j in dispatcher.submitted)
    assert summary.verdicts == {"OK": 2, "STATIC_REJECT": 2}
    assert [r[0] for r in store.results].count(None) == 2
    assert summary.stopped_reason == STOP_EXHAUSTED


def test_failures_count_against_the_budget_but_never_enter_the_archive():
    seeds = [seed(0.5), CandidateSpec("FAIL = 1\n", label="broken")]
    loop, archive, dispatcher, store = make_loop([SeedEmitter(seeds)], budget=5)
    summary = loop.run()
    assert summary.evaluations == 2 and summary.verdicts == {"OK": 1, "RUNTIME_ERROR": 1}
    assert summary.elites == 1


@pytest.mark.parametrize("variation", ["gaussian", "iso_line"])
def test_param_emitter_finds_the_optimum_and_fills_cells(variation):
    # 9 x 6 = 54 points; the GPU map is occupancy x kernel_count (fake features from params).
    loop, archive, dispatcher, store = make_loop(
        [params_family(seed_=11, variation=variation)],
        dims="occupancy,kernel_count",
        budget=40,
        capacity=4,
        device="cuda",
    )
    summary = loop.run()
    assert summary.evaluations == 40
    best = store.specs[summary.best.candidate_id]
    assert best.params == OPTIMUM
    assert summary.best.speedup == pytest.approx(2.0)
    assert summary.elites >= 4
    assert any(j.params and store.specs[j.candidate_id].parent_ids for j in dispatcher.submitted)


def test_stats_are_recorded_every_n_evaluations_and_at_the_end():
    loop, archive, dispatcher, store = make_loop(
        [params_family()], budget=23, stats_every=5, stats_interval_s=0.0
    )
    summary = loop.run()
    assert [s.evaluations for s in store.stats] == [5, 10, 15, 20, 23]
    last = store.stats[-1]
    assert (last.elites, last.best_candidate_id) == (summary.elites, summary.best.candidate_id)
    assert last.verdicts == {"OK": 23}


class FakeClock:
    """Time that moves only when ``tick`` is called."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedDispatcher(FakeDispatcher):
    """Each poll advances ``clock`` by 1/8 s and delivers the next count of ``script`` of the
    finished jobs (all of them once the script is over)."""

    def __init__(self, clock: FakeClock, script: list[int], capacity: int) -> None:
        super().__init__(Evaluator(), capacity)
        self.clock = clock
        self.script = list(script)

    def poll(self, timeout_s):
        self.clock.now += 0.125
        n = self.script.pop(0) if self.script else len(self._pending)
        batch, self._pending = self._pending[:n], self._pending[n:]
        out = [JobResult(j.job_id, j.candidate_id, self.evaluate(j)) for j in batch]
        self.delivered.extend(out)
        return out


def test_progress_points_are_at_most_one_per_interval_and_one_at_the_end():
    clock = FakeClock()
    archive = MapArchive(parse_dims(CPU_DIMS))
    emitter = ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=0)
    dispatcher = ScriptedDispatcher(clock, [], capacity=2)  # 2 results per 1/8 s
    store = MemoryStore()
    loop = SearchLoop(archive, [emitter], dispatcher, store, 20, stats_interval_s=0.3, clock=clock)
    loop.run()
    # Polls at 1/8, 2/8, ...: points at the first result, then the first result >= 0.3 s later.
    assert [s.evaluations for s in store.stats] == [1, 7, 13, 19, 20]


def test_a_due_progress_point_is_not_held_back_until_the_next_result():
    clock = FakeClock()
    archive = MapArchive(parse_dims(CPU_DIMS))
    emitter = ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=0)
    # Two results, three empty polls, the last result.
    dispatcher = ScriptedDispatcher(clock, [2, 0, 0, 0, 1], capacity=3)
    store = MemoryStore()
    loop = SearchLoop(archive, [emitter], dispatcher, store, 3, stats_interval_s=0.3, clock=clock)
    loop.run()
    assert [s.evaluations for s in store.stats] == [1, 2, 3]


class BatchLog(MemoryStore):
    """Logs each batch call (and checks a job is recorded before a worker gets it)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, list]] = []

    def propose_many(self, specs):
        self.log.append(("propose", list(specs)))
        return super().propose_many(specs)

    def dispatched_many(self, jobs):
        self.log.append(("dispatched", list(jobs)))
        super().dispatched_many(jobs)

    def ingest_many(self, results, elites=(), stats=()):
        self.log.append(("ingest", [list(results), list(elites), list(stats)]))
        return super().ingest_many(results, elites, stats)


class RecordedFirst(FakeDispatcher):
    store: MemoryStore

    def submit(self, job):
        assert job in self.store.jobs  # recorded before any worker can run it
        super().submit(job)


def test_the_store_is_written_once_per_round_and_once_per_batch_of_results():
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    emitter = ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=2)
    dispatcher = RecordedFirst(Evaluator("cuda"), 8)  # every poll returns all 8 in flight
    store = BatchLog()
    dispatcher.store = store
    loop = SearchLoop(archive, [emitter], dispatcher, store, 40, stats_interval_s=0.0)
    summary = loop.run()
    assert summary.evaluations == 40 and summary.elites > 1
    kinds = [kind for kind, _ in store.log]
    assert kinds == ["propose", "dispatched", "ingest"] * 5  # 5 rounds of 8
    assert all(len(items) == 8 for kind, items in store.log if kind != "ingest")
    for _, (results, elites, stats) in (e for e in store.log if e[0] == "ingest"):
        # Each batch carries the elite changes and progress points its results produced.
        assert len(results) == 8 and len(stats) == 8
        assert {e.candidate_id for e in elites} <= {r.candidate_id for r in results}
    assert len(store.elite_events) >= summary.elites
    assert [s.evaluations for s in store.stats] == list(range(1, 41))


class CrashingStore(MemoryStore):
    """Fails (like a killed controller) on the ``crash_at``-th ``ingest_many``: nothing of
    that batch is stored."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at
        self.calls = 0

    def ingest_many(self, results, elites=(), stats=()):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("killed")
        return super().ingest_many(results, elites, stats)


def test_a_killed_controller_loses_only_the_batch_it_was_learning():
    store = CrashingStore(crash_at=3)
    gpu = dict(dims="occupancy,kernel_count", device="cuda", store=store, capacity=4, seed_=None)
    loop1, archive1, d1, _ = make_loop([params_family(seed_=1)], budget=30, **gpu)
    with pytest.raises(RuntimeError, match="killed"):
        loop1.run()
    # Two batches of 4 were stored with their elite changes; the third is lost, in flight.
    assert len(store.results) == 8 and len(d1.submitted) == 12
    lost = {j.candidate_id for j in d1.submitted[8:]}
    assert {cid for cid, _ in store.pending()} == lost
    stored_elites = {e[1] for e in store.elite_events}
    assert stored_elites <= {cid for _, cid, _ in store.results}

    loop2, archive2, d2, _ = make_loop([params_family(seed_=1)], budget=30, **gpu)
    assert loop2.resume() == 8
    summary = loop2.run()
    assert {j.candidate_id for j in d2.submitted[:4]} == lost  # dispatched again, first
    assert summary.evaluations == 30 == len(store.results)
    cids = [cid for _, cid, _ in store.results]
    assert len(cids) == len(set(cids))  # each candidate evaluated once
    # The stored elite history ends at the live archive.
    current: dict[int, int] = {}
    for cell, cid, *_ in store.elite_events:
        current[cell] = cid
    assert sorted(current.items()) == sorted((c, cid) for c, cid, *_ in archive2.elites())


class Waiting(Emitter):
    """An emitter that never has anything (e.g. waiting on an LLM that never answers)."""

    name = "waiting"

    def ask(self, n):
        return []


def test_nothing_to_do_stops_as_stalled():
    loop, *_ = make_loop([Waiting()], budget=5, idle_timeout_s=0.05, poll_timeout_s=0.01)
    assert loop.run().stopped_reason == STOP_STALLED


def test_zero_budget_dispatches_nothing():
    loop, archive, dispatcher, store = make_loop([params_family()], budget=0)
    summary = loop.run()
    assert summary.evaluations == 0 and not dispatcher.submitted
    assert summary.stopped_reason == STOP_BUDGET and summary.best is None


class NewestOnlyStore(MemoryStore):
    """Like ``archive.run_store.RunStore``: ``evaluated()`` lists each candidate once, newest
    result only."""

    def evaluated(self):
        newest = {}
        for _, cid, result in self.results:
            newest.pop(cid, None)
            newest[cid] = result
        return [(cid, self.specs[cid], r) for cid, r in newest.items()]


@pytest.mark.parametrize("store_cls", [MemoryStore, NewestOnlyStore])
def test_resume_after_a_tie_neither_redispatches_nor_remeasures_again(store_cls):
    store = store_cls()
    gpu = dict(dims="occupancy,kernel_count", device="cuda", store=store)
    seeds = [seed(0.5), seed(0.485, second_ms=0.47), seed(0.3, tag="z")]
    loop1, archive1, d1, _ = make_loop([SeedEmitter(seeds)], budget=4, capacity=1, **gpu)
    s1 = loop1.run()
    assert s1.stopped_reason == STOP_BUDGET and s1.best.candidate_id == 3
    assert len(d1.submitted) == 4  # 2 was re-measured
    loop2, archive2, d2, _ = make_loop(
        [SeedEmitter(seeds), params_family()], budget=8, capacity=2, **gpu
    )
    restored = loop2.resume()
    assert restored == (4 if store_cls is MemoryStore else 3)  # newest-only hides re-measures
    assert archive2.elites() == archive1.elites()
    loop2.run()
    assert {j.candidate_id for j in d2.submitted}.isdisjoint({1, 2, 3})


def test_a_task_a_worker_refuses_stops_the_run_once_with_the_reason():
    refusal = "invalid task: t.py: the task does not fit on this GPU: needs about 90 GiB"

    def refuse(job):
        out = fake_result(job.params, 1.0, verdict="LOAD_ERROR")
        out["task_refused"] = refusal
        return out

    archive = MapArchive(parse_dims(CPU_DIMS))
    dispatcher = FakeDispatcher(refuse, capacity=1)
    loop = SearchLoop(archive, [params_family()(archive)], dispatcher, MemoryStore(), 50)
    summary = loop.run()
    assert summary.stopped_reason == "task_refused"
    assert summary.refused == refusal
    assert summary.evaluations == 1  # not one out-of-memory crash per candidate

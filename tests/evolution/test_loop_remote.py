"""SearchLoop with remote (unverified) results: a claim enters the map only as a trusted worker
measured it; marked when no trusted worker can check it; re-measured on resume."""

from __future__ import annotations

import math
import threading

import pytest

from evolution.candidate import CandidateSpec
from evolution.descriptors import parse_dims
from evolution.emitters import ParamEmitter, SeedEmitter
from evolution.fakes import FakeDispatcher, MemoryStore, fake_result
from evolution.grid import MapArchive
from evolution.loop import SearchLoop

SRC = "import triton\n\nclass ModelNew:\n    pass\n"
SPACE = {"BLOCK": [2**k for k in range(5, 14)], "num_warps": [1, 2, 4, 8, 16, 32]}


def _remote_fleet(claim_ms: float, trusted_ms: float, trusted: bool = True) -> FakeDispatcher:
    """Remote workers claim ``claim_ms`` for every job; a trusted worker measures
    ``trusted_ms``. Without a trusted worker the claim comes back marked, as the controller's
    fleet dispatcher does."""

    def evaluate(job):
        if job.trusted_only:
            if trusted:
                return fake_result(job.params, trusted_ms)
            return dict(fake_result(job.params, claim_ms), unverified=True, verification="none")
        return dict(fake_result(job.params, claim_ms), unverified=True)

    return FakeDispatcher(evaluate, capacity=4)


def _remote_loop(dispatcher: FakeDispatcher, store: MemoryStore | None = None, budget: int = 6):
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    emitter = ParamEmitter(SRC, SPACE, archive.dims, "fam", seed=1)
    return SearchLoop(archive, [emitter], dispatcher, store or MemoryStore(), budget), archive


def test_a_remote_claim_enters_the_map_only_as_a_trusted_worker_measured_it():
    dispatcher = _remote_fleet(claim_ms=0.001, trusted_ms=2.0)  # a cheater's claim
    loop, archive = _remote_loop(dispatcher)
    loop.run()
    checks = [j for j in dispatcher.submitted if j.trusted_only]
    assert checks, "improvements claimed by remote workers are re-measured"
    elites = archive.elites()
    assert elites and all(math.isclose(e[2], math.log(0.8 / 2.0), rel_tol=1e-9) for e in elites)
    claimed = {j.candidate_id for j in dispatcher.submitted if not j.trusted_only}
    assert {j.candidate_id for j in checks} <= claimed


def test_without_a_trusted_worker_the_claim_enters_marked():
    loop, archive = _remote_loop(_remote_fleet(claim_ms=0.5, trusted_ms=2.0, trusted=False))
    loop.run()
    assert archive.elites()
    assert all(math.isclose(e[2], math.log(0.8 / 0.5)) for e in archive.elites())


def test_a_claim_that_does_not_improve_the_map_is_not_re_measured():
    params = {"BLOCK": 256, "num_warps": 4}
    fast = CandidateSpec(SRC, params, "seed", (), "trusted")
    slow = CandidateSpec(SRC + "OTHER = 1\n", params, "seed", (), "remote")
    dispatcher = FakeDispatcher(
        lambda job: (
            fake_result(job.params, 1.0)
            if job.source == SRC
            else dict(fake_result(job.params, 50.0), unverified=True)
        ),
        capacity=1,
    )
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    loop = SearchLoop(archive, [SeedEmitter([fast, slow])], dispatcher, MemoryStore(), 2)
    loop.run()
    assert len(dispatcher.submitted) == 2  # same cell, 50x slower: nothing to check
    assert not [j for j in dispatcher.submitted if j.trusted_only]
    assert [e[2] for e in archive.elites()] == [pytest.approx(math.log(0.8 / 1.0))]


def test_resume_re_measures_claims_never_verified():
    store = MemoryStore()
    dispatcher = _remote_fleet(claim_ms=0.3, trusted_ms=0.6)
    loop, _ = _remote_loop(dispatcher, store, budget=4)
    # Stop as soon as the first re-measure is asked for: the claims are stored, unverified.
    real_submit = dispatcher.submit
    stop = threading.Event()

    def submit(job):
        if job.trusted_only:
            stop.set()
            return
        real_submit(job)

    dispatcher.submit = submit
    loop.run(stop)
    assert any(r.get("unverified") for _, _, r in store.results)
    resumed_dispatcher = _remote_fleet(claim_ms=0.3, trusted_ms=0.6)
    loop, archive = _remote_loop(resumed_dispatcher, store, budget=8)
    loop.resume()
    assert not archive.elites(), "an unverified claim is not put back in the map"
    loop.run()
    assert [j for j in resumed_dispatcher.submitted if j.trusted_only]
    assert all(math.isclose(e[2], math.log(0.8 / 0.6)) for e in archive.elites())

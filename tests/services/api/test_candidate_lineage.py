"""``GET /api/v1/candidates/{id}``: its ``lineage`` back to a seed, and whether its newest
evaluation was verified (a trusted worker's measurement, a remote worker's claim, or a trusted
re-measure of such a claim), on SQLite and PostgreSQL.

The rows are written as a run writes them (:class:`archive.RunStore`); a remote worker's result
is stored as the API stores it (:func:`archive.leases.stored_result`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from archive import leases, repository
from archive.lineage import ancestors
from archive.models import Candidate, Worker
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult
from services import keys
from services.api import create_app
from services.config import Settings
from services.dispatch.fleet import NO_TRUSTED_WORKER

SEED = "import torch\n\n\nclass ModelNew(torch.nn.Module):\n    pass\n"


@dataclasses.dataclass
class World:
    """A client, alice's and bob's keys, a run of alice's and its store."""

    client: TestClient
    sessions: sessionmaker[Session]
    alice: dict[str, str]
    bob: dict[str, str]
    store: RunStore

    def candidate(self, cid: int, who: dict[str, str] | None = None):
        return self.client.get(f"/api/v1/candidates/{cid}", headers=who or self.alice)


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    with sessions() as s:
        alice_user, alice = keys.create_key(s, "user", "alice")
        _, bob = keys.create_key(s, "user", "bob")
        task = repository.add_task(s, "softmax", SEED, {}, {}, owner_id=alice_user.id)
        run = repository.create_run(
            s,
            task.id,
            budget=10,
            seed=1,
            device="cpu",
            objective_label="cpu-time",
            owner_id=alice_user.id,
        )
        s.commit()
        run_id = run.id
    app = create_app(sessions, Settings(data_dir=tmp_path / "data", device="cpu"))
    return World(
        TestClient(app),
        sessions,
        {"Authorization": f"Bearer {alice}"},
        {"Authorization": f"Bearer {bob}"},
        RunStore(sessions, run_id),
    )


def result(ratio: float, worker: str | None = "celery@gpu-0") -> dict:
    return {
        "verdict": "OK",
        "correct": True,
        "speedup_vs_eager": ratio,
        "timing": {"device": "cpu", "candidate": {"median_ms": 1.0}},
        "params": {},
        "worker": worker,
    }


def chain(world: World) -> list[int]:
    """A seed, a child of it, a grandchild with two parents (seed second): their ids."""
    seed = world.store.propose(CandidateSpec(SEED, {"B": 1}, "seed", (), "softmax.py"))
    other = world.store.propose(CandidateSpec(SEED, {"B": 9}, "seed", (), "other.py"))
    child = world.store.propose(
        CandidateSpec(SEED, {"B": 2}, "gaussian", (seed.candidate_id,), "child")
    )
    grandchild = world.store.propose(
        CandidateSpec(SEED, {"B": 3}, "cma", (child.candidate_id, other.candidate_id), "grandchild")
    )
    return [seed.candidate_id, child.candidate_id, grandchild.candidate_id, other.candidate_id]


def test_a_candidate_lists_its_ancestors_back_to_the_seed_parent_first(world):
    seed, child, grandchild, other = chain(world)
    great = world.store.propose(CandidateSpec(SEED, {"B": 4}, "iso_line", (grandchild,), "gg"))
    body = world.candidate(great.candidate_id).json()
    assert body["parent_ids"] == [grandchild]
    assert body["lineage"] == [
        {"candidate_id": grandchild, "emitter": "cma", "label": "grandchild",
         "parent_ids": [child, other]},
        {"candidate_id": child, "emitter": "gaussian", "label": "child", "parent_ids": [seed]},
        {"candidate_id": seed, "emitter": "seed", "label": "softmax.py", "parent_ids": []},
    ]  # fmt: skip


def test_a_seed_has_an_empty_lineage(world):
    seed, *_ = chain(world)
    body = world.candidate(seed).json()
    assert body["parent_ids"] == [] and body["lineage"] == []
    assert body["evaluation"] is None  # not evaluated yet


def test_another_users_candidate_is_still_not_found(world):
    _, child, *_ = chain(world)
    r = world.candidate(child, world.bob)
    assert r.status_code == 404
    assert f"no candidate with id {child}" in r.json()["detail"]
    assert "lineage" not in r.json()


def test_a_cycle_in_the_parents_ends_the_lineage_before_it_repeats(world):
    seed, child, grandchild, _ = chain(world)
    with world.sessions() as s:
        s.get(Candidate, seed).parent_ids = [grandchild]  # not something a search makes
        s.commit()
    ids = [step["candidate_id"] for step in world.candidate(grandchild).json()["lineage"]]
    assert ids == [child, seed]
    with world.sessions() as s:
        assert len(ancestors(s, grandchild, max_depth=1)) == 1


def test_a_trusted_workers_evaluation_is_trusted(world):
    seed, *_ = chain(world)
    world.store.ingest(JobResult("job-trusted", seed, result(2.0)))
    evaluation = world.candidate(seed).json()["evaluation"]
    assert evaluation["worker"] == "celery@gpu-0"
    assert evaluation["verification"] == {
        "status": "trusted",
        "by": "celery@gpu-0",
        "remote_worker_id": None,
        "claimed_by": None,
        "reason": None,
    }


def enrol(world: World) -> Worker:
    with world.sessions() as s:
        worker, _ = leases.enrol_worker(s, None, "lab-box", "cpu", {})
        s.commit()
        s.expunge(worker)
        return worker


def test_a_remote_workers_claim_is_unverified_until_a_trusted_worker_measures_it(world):
    _, child, *_ = chain(world)
    remote = enrol(world)
    world.store.ingest(JobResult("job-remote", child, leases.stored_result(remote, result(9.0))))
    verification = world.candidate(child).json()["evaluation"]["verification"]
    assert verification["status"] == "unverified"
    assert verification["by"] == "remote:lab-box"
    assert verification["remote_worker_id"] == remote.id
    assert verification["reason"] is None  # the re-measure may still come

    world.store.ingest(JobResult("job-verify", child, result(3.0, worker="celery@gpu-1")))
    evaluation = world.candidate(child).json()["evaluation"]
    assert evaluation["speedup_vs_eager"] == 3.0  # the trusted measurement is the one shown
    assert evaluation["verification"]["status"] == "verified"
    assert evaluation["verification"]["by"] == "celery@gpu-1"
    assert evaluation["verification"]["claimed_by"] == "remote:lab-box"


def test_a_claim_no_trusted_worker_could_remeasure_says_why(world):
    *_, other = chain(world)
    remote = enrol(world)
    claim = leases.stored_result(remote, result(9.0))
    # What the fleet hands the loop when no trusted worker can re-measure the claim.
    held = {**claim, "verification": NO_TRUSTED_WORKER}
    world.store.ingest(JobResult("job-held", other, held))
    verification = world.candidate(other).json()["evaluation"]["verification"]
    assert verification["status"] == "unverified"
    assert verification["reason"] == NO_TRUSTED_WORKER

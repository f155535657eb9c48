"""The REST API (services.api) on SQLite and PostgreSQL: auth, ownership, uploads, runs, export.

A finished run is simulated by writing its rows through :class:`archive.RunStore` (no search,
no evaluator); task uploads really go through the validator child process.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from archive import repository
from archive.models import ApiKey
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult, RunStats
from services import keys
from services.api import create_app
from services.config import Settings

DATA = Path(__file__).parents[2] / "data"
TASK_SOURCE = (DATA / "softmax_task.py").read_text()
SEED_SOURCE = """\
import torch
import torch.nn as nn

SEARCH_SPACE = {"BLOCK": [128, 256]}


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""


@dataclasses.dataclass
class Api:
    """A client on a fresh app plus keys of each role and the runs handed to the controller."""

    client: TestClient
    sessions: sessionmaker[Session]
    admin: str
    alice: str
    bob: str
    worker: str
    alice_id: int
    bob_id: int
    started: list[int]

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Api:
    with sessions() as s:
        _, admin = keys.create_key(s, "admin", "root")
        alice_user, alice = keys.create_key(s, "user", "alice")
        bob_user, bob = keys.create_key(s, "user", "bob")
        _, worker = keys.create_key(s, "worker", "gpu-0")
        s.commit()
        alice_id, bob_id = alice_user.id, bob_user.id
    started: list[int] = []
    settings = Settings(data_dir=tmp_path / "data", device="cpu")
    app = create_app(sessions, settings, start_run=started.append)
    client = TestClient(app)
    return Api(client, sessions, admin, alice, bob, worker, alice_id, bob_id, started)


def add_task(api: Api, owner_id: int) -> int:
    """A task row owned by ``owner_id`` (skipping the validator: it is tested on its own)."""
    with api.sessions() as s:
        task = repository.add_task(s, "softmax", TASK_SOURCE, {"dtype": "torch.float32"}, {})
        task.owner_id = owner_id
        s.commit()
        return task.id


def add_run(api: Api, owner_id: int, task_id: int | None = None) -> int:
    with api.sessions() as s:
        run = repository.create_run(
            s,
            task_id or add_task(api, owner_id),
            budget=10,
            seed=1,
            device="cpu",
            objective_label="cpu-time",
            config={"dims": "block_size,num_warps_param"},
            owner_id=owner_id,
        )
        s.commit()
        return run.id


def ok_result(ratio: float) -> dict:
    return {
        "verdict": "OK",
        "correct": True,
        "speedup_vs_eager": ratio,
        "speedup_vs_compile": None,
        "timing": {"device": "cpu", "candidate": {"median_ms": 1.0}, "eager": {"median_ms": ratio}},
        "features": {},
        "messages": [],
        "device": "cpu",
        "hardware": {"name": "cpu"},
        "params": {"BLOCK": 256},
    }


def finish_run(api: Api, run_id: int) -> tuple[int, int]:
    """Two evaluated candidates: an elite (BLOCK=256) and an INCORRECT one. Their ids."""
    store = RunStore(api.sessions, run_id)
    good = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": 256}, "params", (), "seed"))
    bad = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": 128}, "params", (good.candidate_id,)))
    store.ingest(JobResult("job-1", good.candidate_id, ok_result(2.0)))
    wrong = {"verdict": "INCORRECT", "correct": False, "messages": ["max abs error 3.0"]}
    store.ingest(JobResult("job-2", bad.candidate_id, wrong))
    store.elite_changed(3, good.candidate_id, 0.69, [8.0, 2.0], None)
    verdicts = {"OK": 1, "INCORRECT": 1}
    store.record_stats(RunStats(2, 1, 0.05, 1.69, 0.69, good.candidate_id, verdicts))
    return good.candidate_id, bad.candidate_id


def upload(api: Api, key: str, source: str | bytes, filename: str = "softmax.py", **data):
    files = {"file": (filename, source, "text/x-python")}
    return api.client.post("/api/v1/tasks", files=files, data=data, headers=api.auth(key))


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/api/v1/tasks"), ("GET", "/api/v1/runs/1"), ("POST", "/api/v1/runs")],
)
def test_no_key_is_401_with_a_bearer_challenge(api, method, path):
    r = api.client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]


def test_unknown_malformed_and_revoked_keys_are_401(api):
    for header in ("Bearer km_" + "x" * 43, "Bearer nonsense", "Basic " + api.alice):
        r = api.client.get("/api/v1/tasks", headers={"Authorization": header})
        assert r.status_code == 401, header
    with api.sessions() as s:
        key = repository.api_key_by_hash(s, keys.hash_key(api.bob))
        keys.revoke(s, key.id)
        s.commit()
    assert api.client.get("/api/v1/tasks", headers=api.auth(api.bob)).status_code == 401
    assert api.client.get("/api/v1/tasks", headers=api.auth(api.alice)).status_code == 200


def test_worker_key_reaches_no_user_route(api):
    task_id = add_task(api, api.alice_id)
    worker = api.auth(api.worker)
    assert upload(api, api.worker, TASK_SOURCE).status_code == 403
    assert api.client.get("/api/v1/tasks", headers=worker).status_code == 403
    body = {"task_id": task_id, "budget": 5}
    assert api.client.post("/api/v1/runs", json=body, headers=worker).status_code == 403
    assert api.client.get("/api/v1/keys", headers=worker).status_code == 403


# -- ownership ---------------------------------------------------------------------------------


def test_a_user_cannot_see_another_users_task_run_or_candidates(api):
    bob_task = add_task(api, api.bob_id)
    bob_run = add_run(api, api.bob_id, bob_task)
    good, _ = finish_run(api, bob_run)
    alice = api.auth(api.alice)
    for path in (
        f"/api/v1/tasks/{bob_task}",
        f"/api/v1/runs/{bob_run}",
        f"/api/v1/runs/{bob_run}/archive",
        f"/api/v1/runs/{bob_run}/candidates",
        f"/api/v1/runs/{bob_run}/best.py",
        f"/api/v1/candidates/{good}",
    ):
        r = api.client.get(path, headers=alice)
        assert r.status_code == 404, path  # not 403: ids reveal nothing
        assert "no " in r.json()["detail"]
        assert api.client.get(path, headers=api.auth(api.bob)).status_code == 200, path
        assert api.client.get(path, headers=api.auth(api.admin)).status_code == 200, path
    # Nor start a run on it, nor find it in a list.
    r = api.client.post("/api/v1/runs", json={"task_id": bob_task, "budget": 5}, headers=alice)
    assert r.status_code == 404
    assert api.client.get("/api/v1/tasks", headers=alice).json()["total"] == 0
    assert api.client.get("/api/v1/runs", headers=alice).json()["items"] == []
    assert api.client.get("/api/v1/tasks", headers=api.auth(api.admin)).json()["total"] == 1


# -- tasks -------------------------------------------------------------------------------------


def test_uploading_a_valid_task_stores_it_for_its_owner(api):
    source = TASK_SOURCE + '\nprint("a task may print: the validator keeps stdout clean")\n'
    r = upload(api, api.alice, source, name="my softmax")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "my softmax"
    assert created["meta"]["dtype"] == "torch.float32"
    r = api.client.get(f"/api/v1/tasks/{created['id']}", headers=api.auth(api.alice))
    assert r.status_code == 200
    assert r.json()["source"] == source
    listed = api.client.get("/api/v1/tasks", headers=api.auth(api.alice)).json()
    assert [t["id"] for t in listed["items"]] == [created["id"]]
    with api.sessions() as s:
        assert repository.get_task(s, created["id"]).owner_id == api.alice_id


def test_an_invalid_task_is_422_with_the_loaders_message_and_line(api):
    source = "import torch\n\nclass Model(torch.nn.Module:\n    pass\n"
    r = upload(api, api.alice, source)
    assert r.status_code == 422
    body = r.json()
    assert "line 3" in body["detail"] and "syntax error" in body["detail"]
    assert body["line"] == 3
    # A task that loads but misses a required function: the message says which.
    r = upload(api, api.alice, TASK_SOURCE.replace("def get_inputs", "def inputs"))
    assert r.status_code == 422
    assert "get_inputs" in r.json()["detail"]
    assert api.client.get("/api/v1/tasks", headers=api.auth(api.alice)).json()["total"] == 0


def test_oversized_and_non_utf8_uploads_are_refused(api):
    r = upload(api, api.alice, b"#" * (1024 * 1024 + 1))  # just over: the route counts
    assert r.status_code == 413
    assert "1048576 bytes" in r.json()["detail"]
    r = upload(api, api.alice, b"#" * (3 * 1024 * 1024))  # far over: refused before reading
    assert r.status_code == 413
    r = upload(api, api.alice, b"x = '\xff\xfe'\n")
    assert r.status_code == 422
    assert "UTF-8" in r.json()["detail"]


# -- runs --------------------------------------------------------------------------------------


def test_creating_a_run_queues_it_and_hands_it_to_the_controller(api):
    task_id = add_task(api, api.alice_id)
    body = {"task_id": task_id, "budget": 20, "hardware": "cpu", "seed_candidates": [SEED_SOURCE]}
    r = api.client.post("/api/v1/runs", json=body, headers=api.auth(api.alice))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued"
    assert api.started == [run["id"]]
    with api.sessions() as s:
        row = repository.get_run(s, run["id"])
        assert row.owner_id == api.alice_id
        assert row.objective_label == "cpu-time"
        assert row.config["dims"] == "block_size,num_warps_param"
        assert [d["label"] for d in row.config["seeds"]] == ["reference", "seed_candidates[0]"]
    summary = api.client.get(f"/api/v1/runs/{run['id']}", headers=api.auth(api.alice)).json()
    assert summary["status"] == "queued"
    assert summary["evaluations"] == 0 and summary["elites"] == 0 and summary["best"] is None
    assert {"coverage", "qd_score"} <= set(summary)


def test_run_requests_are_validated_field_by_field(api):
    task_id = add_task(api, api.alice_id)
    alice = api.auth(api.alice)
    r = api.client.post("/api/v1/runs", json={"task_id": task_id, "budget": 0}, headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "budget"]
    body = {"task_id": task_id, "budget": 5, "hardware": "tpu"}
    r = api.client.post("/api/v1/runs", json=body, headers=alice)
    assert r.status_code == 422 and r.json()["field"] == "hardware"
    assert "no worker serves hardware class 'tpu'" in r.json()["detail"]
    body = {"task_id": task_id, "budget": 5, "hardware": "Not A Class!"}
    r = api.client.post("/api/v1/runs", json=body, headers=alice)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "hardware"]
    r = api.client.post("/api/v1/runs", json={"task_id": 999999, "budget": 5}, headers=alice)
    assert r.status_code == 404
    assert "no task with id 999999" in r.json()["detail"]
    seeds = [SEED_SOURCE, "import torch\nclass NotIt:\n    pass\n"]
    body = {"task_id": task_id, "budget": 5, "seed_candidates": seeds}
    r = api.client.post("/api/v1/runs", json=body, headers=alice)
    assert r.status_code == 422
    assert "seed_candidates[1]" in r.json()["detail"]
    assert "ModelNew" in r.json()["detail"]
    assert r.json()["field"] == "seed_candidates[1]"
    assert api.started == []


def test_text_the_database_cannot_hold_is_422_not_500(api):
    task_id = add_task(api, api.alice_id)
    alice = {**api.auth(api.alice), "content-type": "application/json"}
    body = b'{"task_id": %d, "budget": 1, "seed_candidates": ["\\ud800"]}' % task_id
    r = api.client.post("/api/v1/runs", content=body, headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "seed_candidates", 0]
    assert "input" not in r.json()["detail"][0]  # a whole seed file is not echoed back
    run_id = add_run(api, api.alice_id, task_id)
    r = api.client.get(f"/api/v1/runs/{run_id}/candidates?verdict=%00", headers=alice)
    assert r.status_code == 422
    r = upload(api, api.alice, "x = 1\x00\n")
    assert r.status_code == 422 and "NUL" in r.json()["detail"]


def test_candidates_are_paginated_and_filtered_by_verdict(api):
    run_id = add_run(api, api.alice_id)
    good, bad = finish_run(api, run_id)
    alice = api.auth(api.alice)
    page = api.client.get(f"/api/v1/runs/{run_id}/candidates?limit=1", headers=alice).json()
    assert page["total"] == 2 and page["limit"] == 1 and page["offset"] == 0
    assert [c["id"] for c in page["items"]] == [good]
    page = api.client.get(f"/api/v1/runs/{run_id}/candidates?limit=1&offset=1", headers=alice)
    assert [c["id"] for c in page.json()["items"]] == [bad]
    page = api.client.get(f"/api/v1/runs/{run_id}/candidates?verdict=INCORRECT", headers=alice)
    assert page.json()["total"] == 1
    assert page.json()["items"][0]["verdict"] == "INCORRECT"
    assert page.json()["items"][0]["parent_ids"] == [good]
    r = api.client.get(f"/api/v1/runs/{run_id}/candidates?limit=0", headers=alice)
    assert r.status_code == 422
    detail = api.client.get(f"/api/v1/candidates/{bad}", headers=alice).json()
    assert detail["source"] == SEED_SOURCE and detail["params"] == {"BLOCK": 128}
    assert detail["evaluation"]["messages"] == ["max abs error 3.0"]


def test_archive_and_summary_of_a_finished_run(api):
    run_id = add_run(api, api.alice_id)
    good, _ = finish_run(api, run_id)
    alice = api.auth(api.alice)
    archive = api.client.get(f"/api/v1/runs/{run_id}/archive", headers=alice).json()
    assert archive["dims"] == "block_size,num_warps_param"
    [cell] = archive["cells"]
    assert cell["cell"] == 3 and cell["candidate_id"] == good and cell["measures"] == [8.0, 2.0]
    assert cell["objective_label"] == "cpu-time"  # how this elite's evaluation measured it
    summary = api.client.get(f"/api/v1/runs/{run_id}", headers=alice).json()
    assert summary["elites"] == 1 and summary["evaluations"] == 2
    assert summary["best"]["candidate_id"] == good
    # Every number says what it counts, and they agree.
    assert summary["verdicts"] == {"OK": 1, "INCORRECT": 1}
    assert summary["counts"] == {
        "evaluations": 2,
        "candidates_evaluated": 2,
        "remeasures": 0,
        "static_rejects": 0,
        "proposed": 2,
        "duplicates": 0,
    }
    assert summary["best"]["objective_label"] == "cpu-time"
    assert not summary["best"]["is_reference"]
    assert summary["stop_reason"] is None  # never stopped: no reason yet
    assert summary["templates"]["matched"] == []
    assert any("QD-score" in n for n in summary["notes"])


def test_a_bogus_verdict_filter_is_422_naming_the_verdicts(api):
    run_id = add_run(api, api.alice_id)
    alice = api.auth(api.alice)
    r = api.client.get(f"/api/v1/runs/{run_id}/candidates?verdict=BOGUS", headers=alice)
    assert r.status_code == 422
    assert "INCORRECT" in r.text and r.json()["detail"][0]["loc"] == ["query", "verdict"]


def test_best_py_is_404_on_an_empty_run_and_the_baked_elite_otherwise(api):
    run_id = add_run(api, api.alice_id)
    alice = api.auth(api.alice)
    r = api.client.get(f"/api/v1/runs/{run_id}/best.py", headers=alice)
    assert r.status_code == 404
    assert "no correct candidate" in r.json()["detail"]
    finish_run(api, run_id)
    r = api.client.get(f"/api/v1/runs/{run_id}/best.py", headers=alice)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/x-python")
    assert "BLOCK = 256\n" in r.text
    assert "SEARCH_SPACE = {'BLOCK': [256]}" in r.text
    compile(r.text, "best.py", "exec")


# -- keys --------------------------------------------------------------------------------------


def test_an_admin_makes_a_key_that_authenticates_and_is_listed_by_prefix(api):
    body = {"role": "user", "name": "carol"}
    assert api.client.post("/api/v1/keys", json=body, headers=api.auth(api.alice)).status_code == (
        403
    )
    r = api.client.post("/api/v1/keys", json=body, headers=api.auth(api.admin))
    assert r.status_code == 201
    made = r.json()
    assert made["key"].startswith("km_") and len(made["key"]) == 46
    assert made["prefix"] == made["key"][:8] and made["role"] == "user"
    assert api.client.get("/api/v1/tasks", headers=api.auth(made["key"])).status_code == 200
    listing = api.client.get("/api/v1/keys", headers=api.auth(api.admin))
    assert listing.status_code == 200
    assert listing.json()["total"] == 5
    assert made["prefix"] in [k["prefix"] for k in listing.json()["items"]]
    assert made["key"] not in listing.text and "hash" not in listing.text
    r = api.client.delete(f"/api/v1/keys/{made['id']}", headers=api.auth(api.admin))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert api.client.get("/api/v1/tasks", headers=api.auth(made["key"])).status_code == 401
    r = api.client.post(
        "/api/v1/keys", json={"role": "root", "name": "x"}, headers=api.auth(api.admin)
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "role"]


def test_keys_are_stored_only_as_hashes(api):
    with api.sessions() as s:
        rows = s.execute(sa.select(ApiKey.__table__)).all()
    dump = repr(rows)
    for key in (api.admin, api.alice, api.bob, api.worker):
        assert key not in dump
        assert key[8:] not in dump  # nothing past the shown prefix either
    assert {r.key_hash for r in rows} == {
        keys.hash_key(k) for k in (api.admin, api.alice, api.bob, api.worker)
    }


def test_ensure_admin_makes_one_admin_key_on_an_empty_database(sessions):
    with sessions() as s:
        key = keys.ensure_admin(s)
        s.commit()
        assert key is not None and keys.authenticate(s, key).role == "admin"
        assert keys.ensure_admin(s) is None

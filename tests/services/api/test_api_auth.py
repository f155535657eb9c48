"""Authentication and authorisation of every API operation, on SQLite and PostgreSQL.

The operations are read from the live app's OpenAPI schema, so routes added later are held to
the same rules:

- every operation needs a credential, but for :data:`PUBLIC` ones; without one, or with a
  malformed, unknown or revoked one, it is 401 with a ``Bearer`` challenge;
- an operation on API keys (``HTTPBearer``) is open to admins, to users unless it is in
  :data:`ADMIN_ONLY`, and to worker keys only if it is in :data:`WORKER_KEY_OK` (else 403);
- an operation on remote workers' tokens (``WorkerToken``) refuses every API key (401);
- another user's task, run or candidate is 404, exactly like an unknown id (never 403, which
  would say it exists); an admin sees everything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository
from archive.llm_log import LlmLog
from archive.run_store import RunStore
from archive.testing import temporary_database
from evolution.candidate import CandidateSpec
from evolution.llm.port import LlmRequest, RequestMeta
from evolution.ports import JobResult
from services import keys
from services.api import create_app
from services.config import Settings

TASK_SOURCE = (Path(__file__).parents[2] / "data" / "softmax_task.py").read_text()
SEED_SOURCE = """\
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""
API = "/api/v1"
#: Operations anyone may call without a credential.
PUBLIC = {("GET", "/healthz")}
#: Operations on API keys that only an admin may call (a user key gets 403).
ADMIN_ONLY = {
    ("GET", f"{API}/keys"),
    ("POST", f"{API}/keys"),
    ("DELETE", f"{API}/keys/{{key_id}}"),
    ("GET", f"{API}/workers"),
    ("DELETE", f"{API}/workers/{{worker_id}}"),
    ("GET", f"{API}/controllers"),
    ("GET", "/metrics"),
}
#: Operations on API keys that a worker key may call (every other one is 403 to it).
WORKER_KEY_OK = {("POST", f"{API}/workers/register")}
#: An id nothing has (a path id the seeded rows do not name).
UNKNOWN_ID = 999_999
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclasses.dataclass
class World:
    """A client on the app, keys of each role and the ids of alice's rows."""

    client: TestClient
    sessions: sessionmaker[Session]
    admin: str
    alice: str
    bob: str
    worker: str
    revoked: str
    spare_key_id: int
    worker_token: str | None
    ids: dict[str, int]
    bob_task: int


def _world(sessions: sessionmaker[Session], tmp: Path) -> World:
    with sessions() as s:
        _, admin = keys.create_key(s, "admin", "root")
        alice_user, alice = keys.create_key(s, "user", "alice")
        bob_user, bob = keys.create_key(s, "user", "bob")
        _, worker = keys.create_key(s, "worker", "gpu-0")
        _, revoked = keys.create_key(s, "user", "carol")
        keys.revoke(s, repository.api_key_by_hash(s, keys.hash_key(revoked)).id)
        _, spare = keys.create_key(s, "user", "spare")
        spare_id = repository.api_key_by_hash(s, keys.hash_key(spare)).id
        task = repository.add_task(s, "softmax", TASK_SOURCE, {}, {}, owner_id=alice_user.id)
        bob_task = repository.add_task(s, "softmax", TASK_SOURCE, {}, {}, owner_id=bob_user.id)
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
        ids = {"task_id": task.id, "run_id": run.id}
        bob_task_id = bob_task.id
    store = RunStore(sessions, run.id)
    cand = store.propose(CandidateSpec(SEED_SOURCE, {}, "params", (), "seed"))
    result = {"verdict": "OK", "correct": True, "speedup_vs_eager": 1.5, "params": {}}
    store.ingest(JobResult("job-1", cand.candidate_id, result))
    store.elite_changed(0, cand.candidate_id, 0.4, [1.0], None)
    ids["candidate_id"] = cand.candidate_id
    request = LlmRequest("llm-1", "m1", [{"role": "user", "content": "write a kernel"}])
    LlmLog(sessions, run.id).sent(request, RequestMeta("mutate", "tiling"), {})
    ids["request_id"] = "llm-1"  # type: ignore[assignment]  # a path id that is a string
    app = create_app(sessions, Settings(data_dir=tmp, device="cpu"))
    client = TestClient(app)
    token = None
    if f"{API}/workers/register" in app.openapi()["paths"]:
        body = {"name": "auth-worker", "hardware_class": "cpu", "hardware": {}}
        r = client.post(f"{API}/workers/register", json=body, headers=_auth(worker))
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    return World(
        client, sessions, admin, alice, bob, worker, revoked, spare_id, token, ids, bob_task_id
    )


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The app on a database of each backend, with alice's and bob's rows."""
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    with temporary_database(request.param, tmp / "data") as url:
        engine = db.make_engine(url)
        try:
            db.ensure_schema(engine)
            yield _world(db.session_factory(engine), tmp / "data")
        finally:
            engine.dispose()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _schema() -> dict[str, Any]:
    return create_app(sessionmaker(), Settings(device="cpu")).openapi()


SCHEMA = _schema()
OPERATIONS = [
    (method.upper(), path, op)
    for path, item in SCHEMA["paths"].items()
    for method, op in item.items()
    if method in ("get", "post", "put", "patch", "delete")
]


def _schemes(op: dict[str, Any]) -> set[str]:
    return {name for requirement in op.get("security", []) for name in requirement}


def _url(world: World, path: str, op: dict[str, Any], **ids: int) -> str:
    """The path with alice's ids (or ``ids``), the spare key, or an unknown id filled in."""
    known = {**world.ids, "key_id": world.spare_key_id, **ids}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            value = known.get(p["name"], UNKNOWN_ID)
            path = path.replace("{" + p["name"] + "}", str(value))
    polls = [p["name"] for p in op.get("parameters", []) if p["name"] == "wait_s"]
    return path + ("?wait_s=0" if polls else "")  # a long-poll answers at once


def _call(world: World, method: str, url: str, headers: dict[str, str] | None = None):
    return world.client.request(method, url, headers=headers or {})


OP_IDS = [f"{m} {p}" for m, p, _ in OPERATIONS]


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=OP_IDS)
def test_every_operation_but_the_public_ones_needs_a_credential(world, method, path, op):
    url = _url(world, path, op)
    if (method, path) in PUBLIC:
        assert not _schemes(op), f"{method} {path} is public but documents a credential"
        assert _call(world, method, url).status_code not in (401, 403)
        return
    assert _schemes(op), (
        f"{method} {path} documents no credential: make it require one, or add it to PUBLIC"
    )
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer km_" + "x" * 43},  # well-formed, unknown
        {"Authorization": "Bearer km_" + "x" * 5000},
        {"Authorization": "Bearer " + world.alice + "x"},
        {"Authorization": "Basic " + world.alice},
        {"Authorization": "Bearer kmw_" + "x" * 43},  # an unknown worker token
        _auth(world.revoked),
    ):
        r = _call(world, method, url, headers)
        assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"]
    assert _call(world, "GET", "/docs").status_code == 200
    assert _call(world, "GET", f"{API}/openapi.json").status_code == 200


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=OP_IDS)
def test_each_role_reaches_only_its_operations(world, method, path, op):
    url = _url(world, path, op)
    schemes = _schemes(op)
    if "HTTPBearer" in schemes:
        allowed = {
            world.admin: True,
            world.alice: (method, path) not in ADMIN_ONLY,
            world.worker: (method, path) in WORKER_KEY_OK,
        }
        for key, ok in allowed.items():
            status = _call(world, method, url, _auth(key)).status_code
            if ok:
                assert status not in (401, 403), (method, path, key[:8], status)
            else:
                assert status == 403, (method, path, key[:8], status)
        if world.worker_token is not None:  # worker tokens are for the worker routes only
            r = _call(world, method, url, _auth(world.worker_token))
            assert r.status_code == 401, (method, path, r.status_code)
    elif "WorkerToken" in schemes:
        for key in (world.admin, world.alice, world.worker):
            r = _call(world, method, url, _auth(key))
            assert r.status_code == 401, (method, path, key[:8], r.status_code)
        assert world.worker_token is not None
        status = _call(world, method, url, _auth(world.worker_token)).status_code
        assert status not in (401, 403), (method, path, status)
    else:
        assert (method, path) in PUBLIC, f"{method} {path}: unknown security {schemes}"


OWNED = {"task_id", "run_id", "candidate_id"}
OWNED_OPERATIONS = [
    (m, p, op)
    for m, p, op in OPERATIONS
    if {x["name"] for x in op.get("parameters", []) if x["in"] == "path"} & OWNED
]


@pytest.mark.parametrize(
    ("method", "path", "op"), OWNED_OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OWNED_OPERATIONS]
)
def test_another_users_rows_are_not_found(world, method, path, op):
    url = _url(world, path, op)
    r = _call(world, method, url, _auth(world.bob))
    assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert "no " in r.json()["detail"]
    unknown = _url(world, path, op, **dict.fromkeys(OWNED, UNKNOWN_ID))
    r_unknown = _call(world, method, unknown, _auth(world.bob))
    assert r_unknown.status_code == 404  # an unknown id: the same answer
    for key in (world.alice, world.admin):  # the owner and an admin do find it
        r = _call(world, method, url, _auth(key))
        assert r.status_code not in (401, 403, 404), (method, path, key[:8], r.status_code)


def test_a_user_cannot_start_a_run_on_another_users_task_nor_list_it(world):
    body = {"task_id": world.ids["task_id"], "budget": 1}
    r = world.client.post(f"{API}/runs", json=body, headers=_auth(world.bob))
    assert r.status_code == 404
    assert f"no task with id {world.ids['task_id']}" in r.json()["detail"]
    for what, own in (("tasks", world.bob_task), ("runs", None)):
        listed = world.client.get(f"{API}/{what}", headers=_auth(world.bob)).json()
        ids = {item["id"] for item in listed["items"]}
        assert world.ids[f"{what[:-1]}_id"] not in ids
        assert own is None or own in ids
        everything = world.client.get(f"{API}/{what}?limit=500", headers=_auth(world.admin))
        assert world.ids[f"{what[:-1]}_id"] in {i["id"] for i in everything.json()["items"]}
    every_task = world.client.get(f"{API}/tasks?limit=500", headers=_auth(world.admin)).json()
    assert {world.ids["task_id"], world.bob_task} <= {t["id"] for t in every_task["items"]}


def test_a_user_cannot_make_or_list_keys(world):
    with world.sessions() as s:
        before = repository.count_api_keys(s)
    body = {"role": "admin", "name": "me"}
    for key in (world.alice, world.worker):
        r = world.client.post(f"{API}/keys", json=body, headers=_auth(key))
        assert r.status_code == 403 and r.json()["detail"]
        assert world.client.get(f"{API}/keys", headers=_auth(key)).status_code == 403
    with world.sessions() as s:
        assert repository.count_api_keys(s) == before


def test_a_worker_key_can_neither_submit_nor_read(world):
    worker = _auth(world.worker)
    files = {"file": ("t.py", TASK_SOURCE, "text/x-python")}
    assert world.client.post(f"{API}/tasks", files=files, headers=worker).status_code == 403
    body = {"task_id": world.ids["task_id"], "budget": 1}
    assert world.client.post(f"{API}/runs", json=body, headers=worker).status_code == 403
    for path in ("tasks", "runs", f"runs/{world.ids['run_id']}", f"tasks/{world.ids['task_id']}"):
        assert world.client.get(f"{API}/{path}", headers=worker).status_code == 403, path


def test_a_revoked_key_stops_at_once(world):
    with world.sessions() as s:
        _, key = keys.create_key(s, "user", "dave")
        s.commit()
    assert world.client.get(f"{API}/tasks", headers=_auth(key)).status_code == 200
    with world.sessions() as s:
        keys.revoke(s, repository.api_key_by_hash(s, keys.hash_key(key)).id)
        s.commit()
    r = world.client.get(f"{API}/tasks", headers=_auth(key))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

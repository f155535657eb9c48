"""Fuzzing the REST API from its own OpenAPI schema: no input gets a 5xx.

The schema is read from the live app (``/api/v1/openapi.json``), so every operation is fuzzed,
routes added later included. The app runs on a real database (SQLite file, PostgreSQL) holding
a task, a finished run with candidates, and keys of every role, so ids exist.

Two tests per operation:

- ``test_no_request_gets_a_server_error``: schemathesis generates requests (valid ones and
  invalid ones, deterministically, :data:`MAX_EXAMPLES` per operation and mode). Each is sent as
  generated and, when it has ids in its path, again with the ids of the seeded rows. Checks: not
  a 5xx, a documented status code and content type, a body valid against the documented schema,
  invalid input refused with a 4xx.
- ``test_hostile_values_get_a_4xx_naming_the_field``: what random generation rarely tries, sent
  to every parameter and body field the schema lists: integers past 32 and 64 bits, NUL
  characters and lone surrogates (PostgreSQL's text cannot hold them), non-finite numbers,
  bodies that are not JSON, not UTF-8, absurdly nested, or malformed multipart. Each must get
  a documented answer, never a 5xx, and a refusal a JSON body naming the field at fault (or
  another field, where the hostile value turned out acceptable: text that is not UTF-8 arrives
  with replacement characters).

A request is sent with a user key; one refused with 401 or 403 (admin routes, worker routes) is
sent again with an admin key, a worker key, then a remote worker's token, so that the route's
own validation is reached.

The tests of load (bursts, a request during an upload's validation) are in test_api_bursts.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository
from archive.models import ApiKey
from archive.run_store import RunStore
from archive.testing import temporary_database
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
OPENAPI = "/api/v1/openapi.json"
#: Examples per operation and generation mode (fuzzing phase); the coverage phase adds its own.
MAX_EXAMPLES = 40
#: Each upload is validated in a child process that imports torch (about a second).
UPLOAD_EXAMPLES = 8
#: Long-poll parameters that would make the server wait are set to this (the fuzz is about
#: input, not waiting); values the server refuses are sent as generated.
LONG_POLLS = {"wait_s": 0}
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


# -- the app under test ------------------------------------------------------------------------


@dataclasses.dataclass
class Seeded:
    """The app, the credentials to try in turn, and the ids of the rows its database holds."""

    app: Any
    sessions: sessionmaker[Session]
    credentials: list[str]
    ids: dict[str, int]

    def restore(self) -> None:
        """Make the credentials valid again after a request that may have revoked one (a
        fuzzed DELETE): the API keys are un-revoked, the remote worker enrolled anew."""
        hashes = [keys.hash_key(k) for k in self.credentials if k.startswith(keys.KEY_PREFIX)]
        with self.sessions() as s:
            s.execute(sa.update(ApiKey).where(ApiKey.key_hash.in_(hashes)).values(revoked_at=None))
            s.commit()
        if len(self.credentials) > 3:
            self.credentials[3] = _enrol_remote_worker(self.app, self.credentials[2])


def _seed(sessions: sessionmaker[Session]) -> tuple[list[str], dict[str, int]]:
    """Keys of each role, a task and a finished run with two evaluated candidates."""
    with sessions() as s:
        user, user_key = keys.create_key(s, "user", "alice")
        _, admin_key = keys.create_key(s, "admin", "root")
        _, worker_key = keys.create_key(s, "worker", "gpu-0")
        _, spare_key = keys.create_key(s, "user", "spare")  # the one DELETE /keys/{id} revokes
        task = repository.add_task(s, "softmax", TASK_SOURCE, {"dtype": "torch.float32"}, {})
        task.owner_id = user.id
        run = repository.create_run(
            s,
            task.id,
            budget=10,
            seed=1,
            device="cpu",
            objective_label="cpu-time",
            config={"dims": "block_size,num_warps_param"},
            owner_id=user.id,
        )
        spare = repository.api_key_by_hash(s, keys.hash_key(spare_key))
        s.commit()
        ids = {"task_id": task.id, "run_id": run.id, "key_id": spare.id}
    store = RunStore(sessions, run.id)
    good = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": 256}, "params", (), "seed"))
    bad = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": 128}, "params", (good.candidate_id,)))
    ok = {
        "verdict": "OK",
        "correct": True,
        "speedup_vs_eager": 2.0,
        "timing": {"device": "cpu", "candidate": {"median_ms": 1.0}, "eager": {"median_ms": 2.0}},
        "hardware": {"name": "cpu"},
        "params": {"BLOCK": 256},
    }
    store.ingest(JobResult("job-1", good.candidate_id, ok))
    wrong = {"verdict": "INCORRECT", "correct": False, "messages": ["max abs error 3.0"]}
    store.ingest(JobResult("job-2", bad.candidate_id, wrong))
    store.elite_changed(3, good.candidate_id, 0.69, [8.0, 2.0], None)
    store.record_stats(RunStats(2, 1, 0.05, 1.69, 0.69, good.candidate_id, {"OK": 1}))
    ids["candidate_id"] = good.candidate_id
    return [user_key, admin_key, worker_key], ids


def _enrol_remote_worker(app, worker_key: str) -> str | None:
    """A remote worker's token, where the app enrols remote workers (through its API)."""
    path = "/api/v1/workers/register"
    if path not in app.openapi()["paths"]:
        return None
    body = {"name": "fuzz-worker", "hardware_class": "cpu", "hardware": {}}
    r = TestClient(app).post(path, json=body, headers={"Authorization": f"Bearer {worker_key}"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The app on a seeded database of each backend, shared by every operation's tests."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with temporary_database(request.param, tmp / "data") as url:
        engine = db.make_engine(url)
        try:
            db.ensure_schema(engine)
            sessions = db.session_factory(engine)
            credentials, ids = _seed(sessions)
            settings = Settings(data_dir=tmp / "data", device="cpu")
            app = create_app(sessions, settings, start_run=lambda _run_id: None)
            token = _enrol_remote_worker(app, credentials[2])
            if token is not None:
                credentials.append(token)
            yield Seeded(app, sessions, credentials, ids)
        finally:
            engine.dispose()


def _schema():
    # Reading the schema touches no database: an unbound session factory is enough here; the
    # requests go to the app of the ``seeded`` fixture.
    app = create_app(sessionmaker(), Settings(device="cpu"))
    config = schemathesis.Config.from_dict(
        {
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # The credentials are added to every request here (see _send); requests
                # without any are tests/services/api/test_api_auth.py's. Unknown query
                # parameters are ignored, as HTTP APIs commonly do.
                "with-security-parameters": False,
                "allow-extra-parameters": False,
            },
            "operations": [
                {
                    "include-method": "POST",
                    "include-path": "/api/v1/tasks",
                    "generation": {"max-examples": UPLOAD_EXAMPLES},
                    # Its boundary values are mostly valid uploads, each validated in turn.
                    "phases": {"coverage": {"enabled": False}},
                }
            ],
        }
    )
    return schemathesis.openapi.from_asgi(OPENAPI, app, config=config)


schema = _schema()


# -- schemathesis' generated requests ----------------------------------------------------------


def _shorten_long_polls(case) -> None:
    """Set long-poll parameters that would make the server wait (absent or valid) to 0."""
    for p in case.operation.definition.raw.get("parameters", []):
        if p["in"] != "query" or p["name"] not in LONG_POLLS:
            continue
        query = dict(case.query or {})
        try:
            value = float(query.get(p["name"], p["schema"].get("default", 0)))
        except (TypeError, ValueError):
            continue  # not a number: refused at once
        if p["schema"].get("minimum", 0) <= value <= p["schema"].get("maximum", value):
            query[p["name"]] = LONG_POLLS[p["name"]]
            case.query = query


def _send(case, seeded: Seeded, checks=CHECKS):
    """Send with each credential in turn until one is not refused; check the last answer."""
    _shorten_long_polls(case)
    for credential in seeded.credentials:
        headers = {"Authorization": f"Bearer {credential}"}
        response = case.call(headers=headers, app=seeded.app)
        if response.status_code not in (401, 403):
            break
    if case.method.upper() != "GET" and response.status_code < 300:
        seeded.restore()
    case.validate_response(response, checks=checks, headers=headers)
    return response


@schema.parametrize()
def test_no_request_gets_a_server_error(case, seeded):
    _send(case, seeded)
    known = {k: seeded.ids[k] for k in (case.path_parameters or {}) if k in seeded.ids}
    if known:
        # The ids may be what made the case invalid: the request may now be a valid one.
        case.path_parameters = {**case.path_parameters, **known}
        _send(case, seeded, [c for c in CHECKS if c is not negative_data_rejection])


# -- hostile values, field by field ------------------------------------------------------------

#: Integers the database cannot hold (ids are 32-bit, SQLite's and PostgreSQL's integers 64-bit)
#: and text that is not an integer at all, as they appear in a URL.
HOSTILE_INT_TEXT = [
    "0",
    "-1",
    str(2**31),
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "1" + "0" * 40,
    str(-(2**63) - 1),
    "1e400",
    "NaN",
    "inf",
    "0x10",
    "%00",
]
HOSTILE_NUMBER_TEXT = ["NaN", "inf", "-inf", "1e400", "-1e400", "%00", str(2**64)]
#: Text PostgreSQL cannot store (NUL; a lone surrogate, percent-encoded as UTF-8 would have it),
#: text that is not UTF-8, and text far longer than any field.
HOSTILE_STRING_TEXT = ["%00", "a%00b", "%ED%A0%80", "%FF%FE", "x" * 5000]
#: The same inside JSON (as JSON text).
HOSTILE_JSON_INTS = [
    "0",
    "-1",
    str(2**31),
    str(2**63),
    str(2**64),
    "1" + "0" * 40,
    str(-(2**63) - 1),
    "1e400",
    "1.5",
    "true",
    '"1"',
]
HOSTILE_JSON_NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", str(2**64), '"x"']
HOSTILE_JSON_STRINGS = ['"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"x\\udfff"', "1", "null"]
HOSTILE_JSON_OTHERS = [
    '"\\u0000"',
    '["\\u0000"]',
    '["\\ud800"]',
    '{"\\u0000": 1}',
    '{"k": "\\ud800"}',
    f"[{2**64}]",
    "1e400",
]
#: Whole JSON bodies that are not what any operation takes.
HOSTILE_JSON_BODIES = [
    b"",
    b"null",
    b"[]",
    b'"x"',
    b"1e400",
    b"{",
    b'{"a": 1,}',
    b"\xff\xfe{}",
    b"[" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
]


@dataclasses.dataclass
class Probe:
    """One hostile request: what it tries and how it is sent."""

    what: str
    path: str
    query: str = ""
    body: bytes | None = None
    content_type: str | None = None


def _operations() -> list[tuple[str, str]]:
    paths = schema.raw_schema["paths"]
    methods = {"get", "post", "put", "patch", "delete"}
    return [(m.upper(), p) for p, item in paths.items() for m in item if m in methods]


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema.raw_schema["components"]["schemas"][name]
    return node


def _kinds(node: dict[str, Any]) -> set[str]:
    """The JSON types a (resolved) schema allows, ``null`` left out."""
    node = _resolve(node)
    kinds = {node["type"]} if isinstance(node.get("type"), str) else set(node.get("type", []))
    for alt in node.get("anyOf", []) + node.get("oneOf", []):
        kinds |= _kinds(alt)
    if "enum" in node or "const" in node:
        kinds.add("string")
    return kinds - {"null"}


def _example(node: dict[str, Any], name: str, ids: dict[str, int]) -> Any:
    """A value a valid request could have: the seeded id for an id, else the simplest one."""
    node = _resolve(node)
    for alt in node.get("anyOf", []) + node.get("oneOf", []):
        if _kinds(alt):
            return _example(alt, name, ids)
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    if "default" in node and node["default"] is not None:
        return node["default"]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {k: _example(props.get(k, {}), k, ids) for k in node.get("required", [])}
    if kind == "array":
        return [_example(node.get("items", {}), name, ids) for _ in range(node.get("minItems", 0))]
    if kind in ("integer", "number"):
        return ids.get(name, max(node.get("minimum", 1), 1))
    if kind == "boolean":
        return True
    return "x" * max(node.get("minLength", 1), 1)


def _path(template: str, params: list[dict[str, Any]], ids: dict[str, int], **chosen) -> str:
    for p in params:
        if p["in"] == "path":
            value = chosen.get(p["name"], _example(p["schema"], p["name"], ids))
            template = template.replace("{" + p["name"] + "}", str(value))
    return template


def _base(op: dict[str, Any], ids: dict[str, int]) -> tuple[bytes | None, str | None]:
    """A body (and its content type) the operation could take: sent with parameter probes."""
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body_schema = _resolve(content["application/json"]["schema"])
        return json.dumps(_example(body_schema, "body", ids)).encode(), "json"
    if "multipart/form-data" in content:
        form = _resolve(content["multipart/form-data"]["schema"])
        files = [n for n, p in form.get("properties", {}).items() if _is_file(_resolve(p))]
        return _multipart([(f, "f.py", b"x = 1\n") for f in files])
    return None, None


def _short_polls(params: list[dict[str, Any]], but: str | None = None) -> str:
    """The query that keeps long-polls short (see :data:`LONG_POLLS`), but for one parameter."""
    names = [p["name"] for p in params if p["in"] == "query" and p["name"] in LONG_POLLS]
    return "&".join(f"{n}={LONG_POLLS[n]}" for n in names if n != but)


def _plain_probe(method: str, path: str, ids: dict[str, int]) -> Probe:
    op = schema.raw_schema["paths"][path][method.lower()]
    params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
    body, content_type = _base(op, ids)
    return Probe(
        "plain request", _path(path, params, ids), _short_polls(params), body, content_type
    )


def _probes(method: str, path: str, ids: dict[str, int]) -> Iterator[Probe]:
    op = schema.raw_schema["paths"][path][method.lower()]
    params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
    content = op.get("requestBody", {}).get("content", {})
    base_body, base_type = _base(op, ids) if "application/json" in content else (None, None)
    for p in params:
        kinds = _kinds(p["schema"])
        values = (
            HOSTILE_INT_TEXT
            if kinds == {"integer"}
            else HOSTILE_NUMBER_TEXT
            if "number" in kinds
            else HOSTILE_STRING_TEXT
        )
        for value in values:
            what = f"{p['in']} {p['name']}={value[:40]}"
            if p["in"] == "path":
                url, query = _path(path, params, ids, **{p["name"]: value}), _short_polls(params)
            else:
                url = _path(path, params, ids)
                query = "&".join(q for q in (_short_polls(params, p["name"]), "") if q)
                query = f"{query}&{p['name']}={value}".lstrip("&")
            yield Probe(what, url, query, base_body, base_type)
    # The body probes: the path with the seeded ids, long-polls short.
    url = _path(path, params, ids) + (f"?{_short_polls(params)}" if _short_polls(params) else "")
    if "application/json" in content:
        body_schema = _resolve(content["application/json"]["schema"])
        for raw in HOSTILE_JSON_BODIES:
            yield Probe(f"JSON body {raw[:20]!r}", url, body=raw, content_type="json")
        base = _example(body_schema, "body", ids)
        for name, prop in body_schema.get("properties", {}).items():
            kinds = _kinds(prop)
            values = (
                HOSTILE_JSON_INTS
                if kinds == {"integer"}
                else HOSTILE_JSON_NUMBERS
                if kinds == {"number"}
                else HOSTILE_JSON_STRINGS
                if kinds == {"string"}
                else HOSTILE_JSON_OTHERS
            )
            for value in values:
                text = json.dumps({**base, name: "\x01HOSTILE\x01"}).replace(
                    json.dumps("\x01HOSTILE\x01"), value
                )
                yield Probe(
                    f"body {name}={value[:40]}", url, body=text.encode(), content_type="json"
                )
    if "multipart/form-data" in content:
        yield from _multipart_probes(_resolve(content["multipart/form-data"]["schema"]), url)


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: (name, filename or None, content) per part."""
    boundary = "fuzzboundary7MA4YWxkTrZu0gW"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode(
            "utf-8", "surrogatepass"
        )
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _is_file(node: dict[str, Any]) -> bool:
    return node.get("format") == "binary" or "contentMediaType" in node


def _multipart_probes(form: dict[str, Any], url: str) -> Iterator[Probe]:
    props = form.get("properties", {})
    files = [n for n, p in props.items() if _is_file(_resolve(p))]
    fields = [n for n in props if n not in files]
    for raw, ctype in [
        (b"garbage", "multipart/form-data"),
        (b"garbage", "multipart/form-data; boundary=xyz"),
        (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx", "multipart/form-data; boundary=xyz"),
        (b"--xyz\r\n" * 5000, "multipart/form-data; boundary=xyz"),
    ]:
        yield Probe(f"multipart {raw[:20]!r} {ctype}", url, body=raw, content_type=ctype)
    # Contents refused before anything runs them: NUL, not UTF-8, a lone surrogate.
    for name in files:
        for data in (b"x = 1\x00\n", b"\xff\xfe", "x = '\ud800'".encode("utf-8", "surrogatepass")):
            parts = [(f, "f.py", data if f == name else b"x = 1\n") for f in files]
            body, ctype = _multipart(parts)
            yield Probe(f"file {name}={data[:20]!r}", url, body=body, content_type=ctype)
        parts = [(f, None, b"x = 1\n") for f in files]  # a plain field, not a file
        body, ctype = _multipart(parts)
        yield Probe(f"{name} not a file", url, body=body, content_type=ctype)
    for name in fields:
        for data in (b"a\x00b", b"\xed\xa0\x80", b"x" * 5000):
            parts = [(f, "f.py", b"x = 1\n") for f in files] + [(name, None, data)]
            body, ctype = _multipart(parts)
            yield Probe(f"field {name}={data[:20]!r}", url, body=body, content_type=ctype)
    for data in ("a\x00b.py", "a\ud800.py"):
        parts = [(f, data, b"x = 1\n") for f in files]
        body, ctype = _multipart(parts)
        yield Probe(f"filename {data!r}", url, body=body, content_type=ctype)


def _names_a_field(body: dict[str, Any]) -> bool:
    """Whether an error body says which field is at fault: ``field``, or a ``loc`` per error.

    Not necessarily the probed one: a value may be acceptable after all (text that is not
    UTF-8 arrives with replacement characters), and then it is another field that fails.
    """
    detail = body.get("detail")
    if isinstance(detail, list):
        return bool(detail) and all(isinstance(e, dict) and e.get("loc") for e in detail)
    return isinstance(body.get("field"), str) and bool(body["field"])


def _send_probe(client: TestClient, method: str, probe: Probe, seeded: Seeded):
    """Send with each credential in turn until one is not refused; the last answer."""
    url = probe.path + (f"?{probe.query}" if probe.query else "")
    headers = {}
    if probe.content_type is not None:
        ctype = "application/json" if probe.content_type == "json" else probe.content_type
        headers["content-type"] = ctype
    for credential in seeded.credentials:
        headers["Authorization"] = f"Bearer {credential}"
        r = client.request(method, url, content=probe.body, headers=headers)
        if r.status_code not in (401, 403):
            break
    if method != "GET" and r.status_code < 300:
        seeded.restore()
    return r


@pytest.mark.parametrize(("method", "path"), _operations(), ids=lambda v: v)
def test_hostile_values_get_a_4xx_naming_the_field(method, path, seeded):
    client = TestClient(seeded.app, raise_server_exceptions=False)
    documented = set(schema.raw_schema["paths"][path][method.lower()]["responses"])
    # First a plain request, to know the probes below reach the route past authentication.
    r = _send_probe(client, method, _plain_probe(method, path, seeded.ids), seeded)
    assert r.status_code not in (401, 403), f"no credential reaches {method} {path}: {r.text}"
    failures = []
    for probe in _probes(method, path, seeded.ids):
        r = _send_probe(client, method, probe, seeded)
        problem = None
        if r.status_code >= 500:
            problem = f"server error {r.status_code}: {r.text[:200]}"
        elif str(r.status_code) not in documented and r.status_code != 405:
            problem = f"undocumented status {r.status_code}: {r.text[:200]}"
        elif 400 <= r.status_code < 500 and r.status_code not in (401, 403, 404, 405, 409):
            try:
                body = r.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or "detail" not in body:
                problem = f"{r.status_code} without a JSON detail: {r.text[:200]}"
            elif not _names_a_field(body):
                problem = f"{r.status_code} names no field: {r.text[:200]}"
        if problem:
            failures.append(f"{probe.what}: {problem}")
    assert not failures, f"{method} {path}:\n" + "\n".join(failures)

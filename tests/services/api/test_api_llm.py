"""LLM search over the REST API: what the server offers, runs that ask for it, their requests.

The endpoint is the server's settings, never a request field: a run names only models the server
offers, caps no higher than the server's, and nothing the API returns shows the endpoint's URL
or key. A run's requests are written through :class:`archive.llm_log.LlmLog`, as a search does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from archive import repository
from archive.llm_log import LlmLog
from evolution.llm.port import LlmReply, LlmRequest, ReplyUse, RequestMeta
from services import keys
from services.api import create_app
from services.config import Settings
from tests.services.api.test_api import TASK_SOURCE

API = "/api/v1"
SECRET = "sk-test-never-shown-4242"
URL = "http://10.0.0.7:8000/v1"


def _client(sessions: sessionmaker[Session], tmp_path: Path, **llm) -> tuple[TestClient, str, int]:
    with sessions() as s:
        user, key = keys.create_key(s, "user", "alice")
        task = repository.add_task(s, "softmax", TASK_SOURCE, {}, {}, owner_id=user.id)
        s.commit()
        task_id = task.id
    settings = Settings(data_dir=tmp_path / "data", device="cpu", **llm)
    return TestClient(create_app(sessions, settings, start_run=lambda _: None)), key, task_id


@pytest.fixture
def llm_api(sessions, tmp_path):
    """An app whose server offers two models, one priced, with a request cap of 50."""
    return _client(
        sessions,
        tmp_path,
        llm_base_url=URL,
        llm_api_key=SECRET,
        llm_models="coder:3,small",
        llm_prices=json.dumps({"coder": [1.0, 2.0]}),
        llm_max_requests=50,
    )


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_models_on_offer_are_listed_without_the_endpoint_or_its_key(llm_api):
    client, key, _ = llm_api
    r = client.get(f"{API}/llm/models", headers=_auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["available"] is True and body["max_requests"] == 50
    assert body["models"] == [
        {"name": "coder", "weight": 3.0, "priced": True},
        {"name": "small", "weight": 1.0, "priced": False},
    ]
    assert SECRET not in r.text and "10.0.0.7" not in r.text


def test_a_server_without_an_endpoint_says_so_and_refuses_llm_runs(sessions, tmp_path):
    client, key, task_id = _client(sessions, tmp_path)
    body = client.get(f"{API}/llm/models", headers=_auth(key)).json()
    assert body["available"] is False and "KERNELMAP_LLM_BASE_URL" in body["reason"]
    run = {"task_id": task_id, "budget": 5, "emitters": ["llm"]}
    r = client.post(f"{API}/runs", json=run, headers=_auth(key))
    assert r.status_code == 422 and r.json()["field"] == "llm"
    assert "KERNELMAP_LLM_BASE_URL" in r.json()["detail"]


@pytest.mark.parametrize(
    ("llm", "emitters", "says"),
    [
        ({"models": ["gpt-5"]}, ["llm"], "'gpt-5' not offered by this server"),
        ({"max_requests": 51}, ["llm"], "above this server's cap of 50"),
        ({"max_cost": 1.0, "models": ["small"]}, ["llm"], "small has none"),
        ({"models": ["coder"]}, ["templates"], 'add "llm" to emitters'),
    ],
)
def test_llm_options_the_server_cannot_honour_are_422_on_the_llm_field(
    llm_api, llm, emitters, says
):
    client, key, task_id = llm_api
    run = {"task_id": task_id, "budget": 5, "emitters": emitters, "llm": llm}
    r = client.post(f"{API}/runs", json=run, headers=_auth(key))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "llm" and says in r.json()["detail"]


def test_an_endpoint_in_the_request_is_refused(llm_api):
    client, key, task_id = llm_api
    llm = {"base_url": "http://169.254.169.254/v1", "models": ["coder"]}
    run = {"task_id": task_id, "budget": 5, "emitters": ["llm"], "llm": llm}
    r = client.post(f"{API}/runs", json=run, headers=_auth(key))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "llm", "base_url"]


def test_an_llm_run_stores_its_options_and_reports_its_requests(llm_api, sessions):
    client, key, task_id = llm_api
    llm = {"models": ["coder", "small:0.5"], "max_tokens": 2000, "max_requests": 20}
    run = {"task_id": task_id, "budget": 5, "emitters": ["templates", "llm"], "llm": llm}
    r = client.post(f"{API}/runs", json=run, headers=_auth(key))
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    with sessions() as s:
        stored = repository.get_run(s, run_id).config["llm"]
    assert stored["models"] == [["coder", 3.0], ["small", 0.5]]  # the server's weight unless given
    assert stored["max_tokens"] == 2000 and stored["max_requests"] == 20
    summary = client.get(f"{API}/runs/{run_id}", headers=_auth(key)).json()
    assert summary["llm"] is None  # nothing asked yet

    log = LlmLog(sessions, run_id)
    prompt = [{"role": "user", "content": "make it faster"}]
    for n, text in ((1, "no code here"), (2, "```python\nclass ModelNew: pass\n```")):
        log.sent(LlmRequest(f"llm-{n}", "coder", prompt), RequestMeta("mutate", "tiling"), {})
        reply = LlmReply(f"llm-{n}", "coder", text, prompt_tokens=100, completion_tokens=20)
        use = ReplyUse(reason="malformed", message="no code") if n == 1 else ReplyUse("k" * 64)
        log.replied(reply, use, {"version": 2})
    summary = client.get(f"{API}/runs/{run_id}", headers=_auth(key)).json()["llm"]
    assert summary["requests"] == 2 and summary["failures"] == {"malformed": 1}
    assert summary["prompt_tokens"] == 200 and summary["completion_tokens"] == 40

    page = client.get(f"{API}/runs/{run_id}/llm/requests", headers=_auth(key)).json()
    assert page["total"] == 2 and [i["request_id"] for i in page["items"]] == ["llm-2", "llm-1"]
    assert page["items"][1]["reason"] == "malformed" and "messages" not in page["items"][0]
    one = client.get(f"{API}/runs/{run_id}/llm/requests/llm-1", headers=_auth(key)).json()
    assert one["messages"] == prompt and one["response"] == "no code here"
    r = client.get(f"{API}/runs/{run_id}/llm/requests/llm-9", headers=_auth(key))
    assert r.status_code == 404 and "no LLM request 'llm-9'" in r.json()["detail"]

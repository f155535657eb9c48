"""API runs with LLM search, driven by the controller against a scripted OpenAI-compatible server.

The controller's settings hold the endpoint (the run only names models); its requests are
journaled in ``llm_requests`` and its children proposed like any emitter's. A controller with no
endpoint fails such a run with a message that says so, rather than searching without the LLM.
"""

from __future__ import annotations

import itertools

import sqlalchemy as sa

from archive import repository
from archive.models import Candidate, LlmRequestRow
from services.runs import views
from tests.llm_server import text_reply
from tests.services.runs.test_controller import Harness

CHILD = """\
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1) * {scale}
"""


def test_an_api_llm_run_is_searched_with_the_servers_endpoint(sessions, tmp_path, llm_server):
    counter = itertools.count(1)

    def reply(body):
        n = next(counter)
        return text_reply(f"```python\n{CHILD.format(scale=1.0 + n * 1e-9)}```\n")

    llm_server.responder = reply
    h = Harness(
        sessions,
        tmp_path,
        llm_base_url=llm_server.base_url,
        llm_models="coder:2,small",
        llm_api_key="sk-controller-secret",
    )
    try:
        run_id = h.new_run(
            budget=14,
            emitters=["llm"],
            llm={"models": ["coder"], "max_requests": 6},
            settings=h.settings,
        )
        h.start()
        assert h.wait_status(run_id, "finished", "failed") == "finished"
    finally:
        h.close()
    with sessions() as s:
        rows = s.scalars(sa.select(LlmRequestRow).where(LlmRequestRow.run_id == run_id)).all()
        llm_children = s.scalars(
            sa.select(Candidate).where(Candidate.run_id == run_id, Candidate.emitter == "llm")
        ).all()
        summary = views.run_summary(s, run_id)
    sent = [r for r in rows if r.status != "refused"]  # a refused request never left
    assert 1 <= len(sent) <= 6 and {r.model for r in rows} == {"coder"}
    assert len(llm_server.completions) == len(sent)
    assert llm_children and all(c.label.startswith("llm:coder/") for c in llm_children)
    assert all(c.parent_ids or c.label.endswith("/target") for c in llm_children)
    assert summary["llm"]["requests"] == len(rows) - summary["llm"]["refused"]
    assert summary["llm"]["candidates"] >= len(llm_children)
    auth = {
        next(v for k, v in r.headers.items() if k.lower() == "authorization")
        for r in llm_server.completions
    }
    assert auth == {"Bearer sk-controller-secret"}


def test_a_controller_without_an_endpoint_fails_an_llm_run_saying_why(sessions, tmp_path):
    h = Harness(sessions, tmp_path, llm_base_url="http://127.0.0.1:9/v1", llm_models="coder")
    run_id = h.new_run(budget=4, emitters=["llm"], settings=h.settings)
    h.settings = h.settings.model_copy(update={"llm_base_url": None})  # the controller's own
    h.controller = h._controller()
    h.start()
    try:
        assert h.wait_status(run_id, "finished", "failed") == "failed"
    finally:
        h.close()
    with sessions() as s:
        error = repository.get_run(s, run_id).error
    assert "KERNELMAP_LLM_BASE_URL" in error

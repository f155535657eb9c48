"""The dashboard's runs pages over HTTP: the list (yours only; an admin's includes CLI runs), a
run's page (its map linking to candidates, escaped user text), the forms (start a run, upload a
task: the API's validation next to the field; CSRF), pause/resume/cancel, live JSON, best.py."""

from __future__ import annotations

import re

from archive import repository
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult, RunStats
from tests.services.api.test_api import (
    SEED_SOURCE,
    TASK_SOURCE,
    add_run,
    add_task,
    finish_run,
    ok_result,
)
from tests.web.conftest import csrf_of, sign_in

PAYLOAD = "<script>alert('x')</script>"


def _run_with_elite(site, owner_id, *, label="seed", params=None, dims=None, task_id=None):
    """A run with one evaluated elite (ratio 2); its id and the elite's candidate id."""
    run_id = add_run(site, owner_id, task_id)
    if dims is not None:
        with site.sessions() as s:
            repository.get_run(s, run_id).config = {"dims": dims}
            s.commit()
    store = RunStore(site.sessions, run_id)
    spec = CandidateSpec(SEED_SOURCE, params or {"BLOCK": 256}, "params", (), label)
    cid = store.propose(spec).candidate_id
    store.ingest(JobResult(f"job-{run_id}", cid, ok_result(2.0)))
    store.elite_changed(0, cid, 0.69, [8.0, 2.0, 1.0], None)
    store.record_stats(RunStats(1, 1, 0.05, 1.69, 0.69, cid, {"OK": 1}))
    return run_id, cid


def _status(site, run_id: int) -> str:
    with site.sessions() as s:
        return repository.get_run(s, run_id).status


def _set_status(site, run_id: int, status: str) -> None:
    with site.sessions() as s:
        repository.set_run_status(s, run_id, status)
        s.commit()


# -- the list ----------------------------------------------------------------------------------


def test_the_list_shows_a_users_own_runs_and_an_admin_every_run_with_cli_ones(site):
    mine = add_run(site, site.alice_id)
    theirs = add_run(site, site.bob_id)
    cli = add_run(site, None)  # made by `kernelmap run`: no owner
    finish_run(site, mine)
    alice = sign_in(site, site.alice)
    page = alice.get("/runs")
    assert page.status_code == 200
    assert f'href="/runs/{mine}"' in page.text
    assert f'href="/runs/{theirs}"' not in page.text and f'href="/runs/{cli}"' not in page.text
    assert "<progress" in page.text and "1.99x" in page.text  # progress bar, best ratio
    admin = sign_in(site, site.admin).get("/runs").text
    for run_id in (mine, theirs, cli):
        assert f'href="/runs/{run_id}"' in admin
    assert "kernelmap run" in admin  # the CLI run's owner column
    # Newest first.
    assert admin.index(f'href="/runs/{cli}"') < admin.index(f'href="/runs/{mine}"')


def test_the_list_is_live_while_a_run_is_active_and_pages_by_offset(site):
    run_id = add_run(site, site.alice_id)
    finish_run(site, run_id)
    _set_status(site, run_id, "running")
    alice = sign_in(site, site.alice)
    assert 'data-poll="/runs/live.json?offset=0"' in alice.get("/runs").text
    live = alice.get("/runs/live.json").json()
    assert live["live"] is True and live["total"] == 1
    (row,) = live["rows"]
    assert row["id"] == run_id and row["status"] == "running"
    assert row["evaluations"] == 2 and row["progress"] == 0.2  # 2 of a budget of 10
    assert row["best"] == "1.99x"  # exp(0.69) and row["best_label"] == "cpu-time"
    _set_status(site, run_id, "finished")
    assert alice.get("/runs/live.json").json()["live"] is False
    assert "data-poll" not in alice.get("/runs").text
    assert alice.get("/runs/live.json?offset=50").json()["rows"] == []
    # Another user's poll sees nothing of it.
    assert sign_in(site, site.bob).get("/runs/live.json").json()["rows"] == []


# -- a run's page ------------------------------------------------------------------------------


def test_another_users_run_is_404_like_an_unknown_one(site):
    run_id, _ = _run_with_elite(site, site.bob_id)
    alice = sign_in(site, site.alice)
    token = csrf_of(alice.get("/runs").text)
    for path in (f"/runs/{run_id}", "/runs/999999", f"/runs/{run_id}/best.py"):
        r = alice.get(path)
        assert r.status_code == 404, path
        assert "among yours" in r.text
    assert alice.get(f"/runs/{run_id}/live.json").status_code == 404
    r = alice.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
    assert r.status_code == 404
    assert _status(site, run_id) == "queued"
    assert sign_in(site, site.bob).get(f"/runs/{run_id}").status_code == 200


def test_the_run_page_shows_the_map_linking_each_cell_to_its_candidate(site):
    run_id = add_run(site, site.alice_id)
    good, bad = finish_run(site, run_id)
    alice = sign_in(site, site.alice)
    r = alice.get(f"/runs/{run_id}")
    assert r.status_code == 200
    page = r.text
    assert f'<a href="/candidates/{good}"><rect' in page
    assert f"<title>candidate {good}: 1.99x (cpu-time)" in page
    assert f'href="/candidates/{bad}"' not in page.split('class="heatmap"')[1].split("</svg>")[0]
    assert "INCORRECT" in page and "OK" in page  # verdict counts
    assert "PyTorch eager" in page and "torch.compile" in page  # the best's baselines
    assert f'href="/runs/{run_id}/best.py"' in page
    assert page.count('class="curve"') == 3  # best ratio, QD score, coverage
    assert "QD-score" in page  # the summary's notes
    assert f'action="/runs/{run_id}/pause"' in page  # a queued run can be paused
    assert f'action="/runs/{run_id}/resume"' not in page
    assert len(r.content) < 300_000


def test_a_third_dimension_is_shown_one_slice_at_a_time(site):
    dims = "block_size,num_warps_param,backend"
    run_id, cid = _run_with_elite(site, site.alice_id, dims=dims)
    alice = sign_in(site, site.alice)
    page = alice.get(f"/runs/{run_id}").text
    assert 'name="z"' in page and "data-autosubmit" in page
    heatmap = page.split('class="heatmap"')[1].split("</svg>")[0]
    assert f'href="/candidates/{cid}"' not in heatmap  # its backend bin is 1, not 0
    sliced = alice.get(f"/runs/{run_id}?z=1").text
    assert f'<a href="/candidates/{cid}"><rect' in sliced
    assert '<option value="1" selected>' in sliced


def test_user_text_is_escaped_everywhere(site):
    with site.sessions() as s:
        task = repository.add_task(s, PAYLOAD, TASK_SOURCE, {}, {}, owner_id=site.alice_id)
        s.commit()
        task_id = task.id
    params = {"BLOCK": PAYLOAD}
    run_id, cid = _run_with_elite(
        site, site.alice_id, label=PAYLOAD, params=params, task_id=task_id
    )
    alice = sign_in(site, site.alice)
    for path in ("/runs", f"/runs/{run_id}"):
        page = alice.get(path).text
        assert "<script>alert" not in page, path
        assert "&lt;script&gt;alert" in page, path
        assert page.count("<script") == 1, path  # our own app.js only


# -- forms -------------------------------------------------------------------------------------


def test_starting_a_run_with_a_bad_budget_shows_the_error_next_to_the_field(site):
    task_id = add_task(site, site.alice_id)
    alice = sign_in(site, site.alice)
    token = csrf_of(alice.get("/runs").text)
    form = {
        "csrf_token": token,
        "task_id": str(task_id),
        "budget": "0",
        "hardware": "cpu",
        "emitters": ["gaussian"],
        "descriptors": "block_size:8",
    }
    r = alice.post("/runs", data=form)
    assert r.status_code == 422
    error = re.search(r'<p class="field-error" id="budget-error">([^<]*)</p>', r.text)
    assert error and "greater than or equal to 1" in error.group(1)
    assert 'id="budget" name="budget" inputmode="numeric" value="0"' in r.text  # kept
    assert 'value="block_size:8"' in r.text
    assert sign_in(site, site.alice).get("/runs/live.json").json()["total"] == 0
    r = alice.post("/runs", data={**form, "budget": "5", "hardware": "tpu"})
    assert r.status_code == 422
    assert re.search(r'id="hardware-error">[^<]*no worker serves hardware class', r.text)
    r = alice.post("/runs", data={**form, "budget": "5", "emitters": ["gaussian", "cma"]})
    assert r.status_code == 422 and 'id="emitters-error"' in r.text
    assert site.started == []


def test_a_good_start_form_queues_a_run_and_hands_it_to_the_controller(site):
    task_id = add_task(site, site.alice_id)
    alice = sign_in(site, site.alice)
    token = csrf_of(alice.get("/runs").text)
    form = {
        "csrf_token": token,
        "task_id": str(task_id),
        "budget": "7",
        "emitters": ["templates", "gaussian"],
        "descriptors": "",
    }
    r = alice.post("/runs", data=form, follow_redirects=False)
    assert r.status_code == 303
    run_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert site.started == [run_id]
    with site.sessions() as s:
        run = repository.get_run(s, run_id)
        assert (run.status, run.budget, run.owner_id) == ("queued", 7, site.alice_id)
    assert alice.get(r.headers["location"]).status_code == 200
    # Another user's task is not found, as in the API.
    bob_task = add_task(site, site.bob_id)
    r = alice.post("/runs", data={**form, "task_id": str(bob_task)})
    assert r.status_code == 422 and f"no task with id {bob_task}" in r.text


def test_the_upload_form_stores_a_valid_task_and_shows_the_validators_message(site):
    alice = sign_in(site, site.alice)
    token = csrf_of(alice.get("/runs").text)
    files = {"file": ("softmax.py", TASK_SOURCE, "text/x-python")}
    r = alice.post(
        "/tasks/upload",
        data={"csrf_token": token, "name": "my softmax"},
        files=files,
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    task_id = int(re.search(r"task=(\d+)", r.headers["location"]).group(1))
    with site.sessions() as s:
        task = repository.get_task(s, task_id)
        assert (task.name, task.owner_id) == ("my softmax", site.alice_id)
    page = alice.get(r.headers["location"]).text
    assert f'<option value="{task_id}" selected>' in page
    bad = {"file": ("bad.py", "import torch\n\nclass Model(torch.nn.Module:\n    pass\n")}
    r = alice.post("/tasks/upload", data={"csrf_token": token}, files=bad)
    assert r.status_code == 422
    error = re.search(r'id="file-error" role="alert">([^<]*)</p>', r.text)
    assert error and "line 3" in error.group(1) and "syntax error" in error.group(1)
    r = alice.post("/tasks/upload", data={"csrf_token": token}, files={"file": ("x.py", b"\xff")})
    assert r.status_code == 422 and "UTF-8" in r.text
    big = {"file": ("big.py", b"#" * (2 * 1024 * 1024))}
    r = alice.post("/tasks/upload", data={"csrf_token": token}, files=big)
    assert r.status_code == 413 and "1048576 bytes" in r.text
    with site.sessions() as s:
        assert repository.count_tasks(s, site.alice_id) == 1


def test_forms_without_the_csrf_token_are_refused_and_change_nothing(site):
    task_id = add_task(site, site.alice_id)
    run_id = add_run(site, site.alice_id, task_id)
    alice = sign_in(site, site.alice)
    r = alice.post("/runs", data={"task_id": str(task_id), "budget": "5"})
    assert r.status_code == 403
    r = alice.post(f"/runs/{run_id}/pause", data={"csrf_token": "forged"})
    assert r.status_code == 403
    files = {"file": ("softmax.py", TASK_SOURCE, "text/x-python")}
    assert alice.post("/tasks/upload", files=files).status_code == 403
    assert _status(site, run_id) == "queued"
    with site.sessions() as s:
        assert repository.count_owned_runs(s, site.alice_id) == 1
        assert repository.count_tasks(s, site.alice_id) == 1
    assert site.started == []


def test_pause_resume_and_cancel_from_the_page(site):
    run_id = add_run(site, site.alice_id)
    alice = sign_in(site, site.alice)
    token = csrf_of(alice.get(f"/runs/{run_id}").text)
    for action, status in (("pause", "paused"), ("resume", "queued"), ("cancel", "cancelled")):
        r = alice.post(
            f"/runs/{run_id}/{action}", data={"csrf_token": token}, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}", action
        assert _status(site, run_id) == status
    assert site.started == [run_id] * 3  # the controller is woken each time
    finished = add_run(site, site.alice_id)
    _set_status(site, finished, "finished")
    r = alice.post(f"/runs/{finished}/pause", data={"csrf_token": token})
    assert r.status_code == 409
    assert re.search(r'class="error" role="alert">cannot pause a run that is finished', r.text)
    assert _status(site, finished) == "finished"


def test_the_run_pages_live_json_and_best_py(site):
    run_id = add_run(site, site.alice_id)
    alice = sign_in(site, site.alice)
    assert alice.get(f"/runs/{run_id}/best.py").status_code == 404  # nothing correct yet
    finish_run(site, run_id)
    _set_status(site, run_id, "running")
    assert f'data-poll="/runs/{run_id}/live.json"' in alice.get(f"/runs/{run_id}").text
    live = alice.get(f"/runs/{run_id}/live.json").json()
    assert live["live"] is True and live["status"] == "running"
    assert (live["evaluations"], live["budget"], live["progress"]) == (2, 10, 0.2)
    assert live["verdicts"] == {"OK": 1, "INCORRECT": 1}
    _set_status(site, run_id, "finished")
    assert alice.get(f"/runs/{run_id}/live.json").json()["live"] is False
    r = alice.get(f"/runs/{run_id}/best.py")
    api = site.client.get(f"/api/v1/runs/{run_id}/best.py", headers=site.auth(site.alice))
    assert r.status_code == 200 and r.content == api.content
    assert r.headers["content-disposition"] == api.headers["content-disposition"]
    assert "BLOCK = 256" in r.text


def test_pages_without_a_session_go_to_login(site):
    run_id = add_run(site, site.alice_id)
    for path in ("/runs", f"/runs/{run_id}", "/runs/live.json", f"/runs/{run_id}/best.py"):
        r = site.client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path


def test_an_llm_runs_page_shows_its_requests_and_strategies_escaped(site):
    from archive.llm_log import LlmLog
    from evolution.llm.port import LlmReply, LlmRequest, ReplyUse, RequestMeta
    from evolution.llm.strategies import Strategy, StrategyPool

    run_id, _ = _run_with_elite(site, site.alice_id)
    with site.sessions() as s:
        run = repository.get_run(s, run_id)
        run.config = {**run.config, "llm": {"models": [["coder", 1.0]]}}
        s.commit()
    pool = StrategyPool([Strategy("tiling", "Tile it."), Strategy("r1", PAYLOAD, "tiling", 1)])
    state = {"strategies": pool.to_json()}
    log = LlmLog(site.sessions, run_id)
    prompt = [{"role": "user", "content": "faster"}]
    log.sent(LlmRequest("llm-1", "coder", prompt), RequestMeta("mutate", "r1"), state)
    reply = LlmReply("llm-1", "coder", "no code", prompt_tokens=90, completion_tokens=10)
    log.replied(reply, ReplyUse(reason="malformed", message="no code block"), state)
    page = sign_in(site, site.alice).get(f"/runs/{run_id}").text
    assert "LLM search" in page and "1 requests" in page and "malformed 1" in page
    assert "<td>coder</td><td>mutate</td>" in page
    assert "rewritten from tiling" in page
    assert PAYLOAD not in page and "&lt;script&gt;" in page
    plain = add_run(site, site.alice_id)
    assert "LLM search" not in sign_in(site, site.alice).get(f"/runs/{plain}").text

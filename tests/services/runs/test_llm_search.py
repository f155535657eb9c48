"""`kernelmap run --llm` end to end: a scripted OpenAI-compatible server on loopback, a real
SQLite database in the test's directory and real evaluator processes (CPU, the softmax example).

The server answers by request id (``X-Kernelmap-Request``): each new id takes the next planned
behaviour and a retry of an id its next attempt, so what each request meets is known whatever
order the pool's threads send them in. A valid answer is an edit of the diff base the prompt
shows (SEARCH/REPLACE blocks, or a whole file when the prompt shows none) that appends a
distinct ``LLM_VARIANT = n`` line, so every child is new and still correct.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evolution.llm.edits import diff_blocks, format_blocks
from services.cli.runs import print_finished_run
from services.config import Settings
from services.runs.search import RunOptions, run_search
from tests.llm_server import (
    LlmTestServer,
    Received,
    Scripted,
    huge_reply,
    malformed_reply,
    slow_reply,
    status_reply,
    text_reply,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
TASK = ROOT / "examples" / "softmax" / "task.py"
REWRITE_BASE = (ROOT / "examples" / "softmax" / "torch_softmax.py").read_text()
PARAM_SEED = ROOT / "tests" / "data" / "chunked_softmax.py"
MEMO_HACK = (ROOT / "tests" / "corpus" / "candidates" / "memo_shape.py").read_text()
GC_HACK = (ROOT / "tests" / "corpus" / "candidates" / "gc_scan.py").read_text()
SECRET = "sk-test-SECRET-123"
MODELS = "m1:2,m2"
ADVICE = "Prefer one fused pass per row; keep the running max and sum in registers."
NO_MATCH = (
    "<<<<<<< SEARCH\n        return torch.no_such_op(x)  # MARK-no-match\n=======\n"
    "        return x\n>>>>>>> REPLACE\n"
)
#: The diff base a prompt shows (never cut, see evolution/llm/prompts.py).
_BASE = re.compile(
    r"^## (?:Parent|First parent|Failed candidate|Starting point) \(candidate \d+\)\n"
    r"```python\n(.*?)\n```$",
    re.MULTILINE | re.DOTALL,
)
_VARIANT = re.compile(r"^LLM_VARIANT = (\d+)$", re.MULTILINE)

Step = Scripted | Callable[[dict, int], Scripted]


def header(received: Received, name: str) -> str | None:
    """A header of ``received``, whatever case the client sent it in."""
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), None)


def fence(source: str) -> str:
    return f"Here is the whole file:\n```python\n{source.rstrip()}\n```\n"


def variant(source: str, n: int) -> str:
    return f"{source.rstrip()}\n\n\nLLM_VARIANT = {n}\n"


def edit(body: dict, n: int) -> Scripted:
    """A valid, distinct child: blocks against the prompt's diff base, else a whole file."""
    found = _BASE.search(body["messages"][-1]["content"])
    if found is None:  # a target with no starting point asks for a whole file
        return text_reply(fence(variant(REWRITE_BASE, n)))
    base = found.group(1)
    blocks = diff_blocks(base, variant(base, n))
    assert blocks, "the variant line must be quotable as a diff"
    return text_reply("One idea, as a diff:\n" + format_blocks(blocks))


class Scenario:
    """The server's ``request_responder``: the planned steps of each new request id in turn
    (the last step repeats), then :func:`edit` for every id after the plan; strategy rewrites
    get :data:`ADVICE`. ``delay_s(n)`` delays the reply to the n-th id."""

    def __init__(
        self,
        plan: list[tuple[str, list[Step]]] = (),
        delay_s: Callable[[int], float] = lambda n: 0.0,
    ) -> None:
        self._plan = collections.deque(plan)
        self.delay_s = delay_s
        self.kind: dict[str, str] = {}  # request id -> the planned behaviour's name
        self.texts: dict[str, str] = {}  # request id -> the text of its 200 completion
        self._steps: dict[str, collections.deque[Step]] = {}
        self._order: dict[str, int] = {}
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> Scripted:
        rid = header(received, "X-Kernelmap-Request") or "?"
        body = received.body or {}
        if body["messages"][0]["content"].startswith("You improve the advice"):
            with self._lock:
                self.kind.setdefault(rid, "rewrite")
            return text_reply(ADVICE)
        with self._lock:
            if rid not in self._steps:
                name, steps = self._plan.popleft() if self._plan else ("edit", [edit])
                self.kind[rid], self._steps[rid] = name, collections.deque(steps)
                self._order[rid] = len(self._order) + 1
            steps = self._steps[rid]
            step = steps.popleft() if len(steps) > 1 else steps[0]
            n = next(self._n)
        reply = step(body, n) if callable(step) else step
        if reply.status == 200 and reply.body is None:
            self.texts[rid] = reply.text
        delay = self.delay_s(self._order[rid])
        return dataclasses.replace(reply, delay_s=max(reply.delay_s, delay))


def settings_for(data_dir: Path, server: LlmTestServer, **kw) -> Settings:
    values = {
        "data_dir": data_dir,
        "database_url": None,
        "device": "cpu",
        "llm_base_url": server.base_url,
        "llm_models": MODELS,
        "llm_api_key": SECRET,
        **kw,
    }
    return Settings(**values)


def query(data_dir: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(data_dir / "kernelmap.db", timeout=30) as c:
        return c.execute(sql, args).fetchall()


def llm_rows(data_dir: Path, run_id: int) -> dict[str, dict]:
    """The run's ``llm_requests`` rows by request id."""
    with sqlite3.connect(data_dir / "kernelmap.db", timeout=30) as c:
        c.row_factory = sqlite3.Row
        rows = c.execute("select * from llm_requests where run_id = ?", (run_id,)).fetchall()
    return {r["request_id"]: dict(r) for r in rows}


def assert_secret_nowhere(data_dir: Path, *texts: str) -> None:
    """The key is in no row of any table, no byte of any file under ``data_dir``, no text."""
    with sqlite3.connect(data_dir / "kernelmap.db", timeout=30) as c:
        tables = [t for (t,) in c.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for row in c.execute(f'select * from "{table}"'):  # noqa: S608 - names from sqlite
                assert SECRET not in repr(row), f"the API key is stored in table {table}"
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in files), "the run's report was written"
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), f"the API key is in {path}"
    for text in texts:
        assert SECRET not in text


def bandit_pulls(state: dict) -> int:
    return sum(int(entry[3]) for entry in state["bandit"]["stats"])


def request_number(request_id: str) -> int:
    return int(request_id.removeprefix("llm-"))


PLAN = [
    ("malformed", [text_reply("MARK-malformed: use shared memory, it will be faster.")]),
    ("no_match", [text_reply(NO_MATCH)]),
    ("rate_limited_then_ok", [status_reply(429, retry_after="0"), edit]),
    ("server_error_then_ok", [status_reply(500), edit]),
    ("timeout", [slow_reply(6.0, "MARK-timeout")]),
    ("too_large", [huge_reply(300_000)]),
    ("auth", [status_reply(401, message=f"Incorrect API key provided: {SECRET}.")]),
    ("memo_hack", [text_reply(fence(MEMO_HACK))]),
    ("gate_hack", [text_reply(fence(GC_HACK))]),
    ("bad_response", [malformed_reply()]),
]
#: The planned failures and the reason their rows must carry.
FAILED = {
    "malformed": "malformed",
    "no_match": "no_match",
    "timeout": "timeout",
    "too_large": "too_large",
    "auth": "auth",
    "bad_response": "bad_response",
}


def test_an_llm_run_survives_every_kind_of_reply_and_keeps_hacks_and_the_key_out(
    tmp_path, llm_server, caplog, capsys
):
    """One run whose replies are diffs, rewrites, junk, errors, retries, a timeout, a huge
    reply, two reward hacks and a 401 echoing the key: it spends its budget; every failure is
    journaled with its reason and never evaluated; children are labelled and linked to their
    parents; hacks fail their verdicts and never hold a cell; the key appears nowhere."""
    caplog.set_level(logging.DEBUG)
    scenario = Scenario(PLAN)
    llm_server.request_responder = scenario
    data = tmp_path / "data"
    # One request at a time, so the plan settles in its order before any child after it is
    # asked for: the budget (one seed, four planned children) needs three of those, so no planned
    # request is still in flight when it is spent. With four at a time the timeout's 2 s often
    # outlasted the whole search (3 s of evaluations), which abandoned it: 3 runs in 10 failed.
    # The pool's concurrency is tested in tests/services/llm/test_client.py.
    settings = settings_for(data, llm_server, llm_timeout_s=2.0, llm_retries=2, llm_concurrency=1)
    out = run_search(
        settings,
        RunOptions(task=TASK, budget=8, device="cpu", templates=False, llm=True),
    )
    run_id = out["run_id"]
    assert out["status"] == "finished" and out["stopped_reason"] == "budget"
    assert out["evaluations"] == 8
    capsys.readouterr()
    print_finished_run(settings, None, run_id, True)  # what `kernelmap run --json` prints
    printed = capsys.readouterr().out
    summary = json.loads(printed)
    assert summary["stop_reason"] == "budget" and summary["evaluations"] == 8

    rows = llm_rows(data, run_id)
    by_kind = {scenario.kind[rid]: rid for rid in scenario.kind}
    assert set(FAILED) | {"rate_limited_then_ok", "server_error_then_ok"} <= set(by_kind)
    # Each planned failure: one row, failed with its reason, nothing proposed from it.
    for kind, reason in FAILED.items():
        row = rows[by_kind[kind]]
        assert (row["status"], row["reason"]) == ("failed", reason), (kind, row["message"])
        assert row["candidate_key"] is None
    assert "MARK-malformed" in rows[by_kind["malformed"]]["response"]
    assert "***" in rows[by_kind["auth"]]["message"]  # the endpoint's echo, scrubbed
    llm = summary["llm"]
    for reason in FAILED.values():
        assert llm["failures"].get(reason) == 1, llm["failures"]
    # Requests in flight when the budget ran out, and children not taken by then (recorded
    # "not_proposed"), are the only other failures.
    others = {"abandoned", "not_proposed"}
    assert set(llm["failures"]) <= set(FAILED.values()) | others, llm["failures"]
    assert llm["requests"] == len(rows) - llm["refused"] and set(scenario.kind) <= set(rows)
    assert llm["candidates"] >= 4 and llm["correct"] >= 1

    # Retried ids were sent twice under the same id and succeeded on the second attempt.
    sent = collections.Counter(header(r, "X-Kernelmap-Request") for r in llm_server.completions)
    retried = {by_kind["rate_limited_then_ok"], by_kind["server_error_then_ok"]}
    for rid in retried:
        assert sent[rid] == 2 and rows[rid]["attempts"] == 2
        assert rows[rid]["status"] == "replied" and rows[rid]["candidate_key"], (
            rows[rid]["reason"],
            rows[rid]["message"],
        )
    assert all(n == 1 for rid, n in sent.items() if rid not in retried), sent

    cands = {
        r[0]: {"source": r[1], "emitter": r[2], "label": r[3], "parents": json.loads(r[4]),
               "key": r[5]}
        for r in query(
            data,
            "select id, source, emitter, label, parent_ids, key_sha256 from candidates"
            " where run_id = ?",
            run_id,
        )
    }  # fmt: skip
    verdicts = collections.defaultdict(set)
    for cid, verdict in query(data, "select candidate_id, verdict from evaluations"):
        verdicts[cid].add(verdict)
    elites = {cid for (cid,) in query(data, "select candidate_id from elites where run_id = ?",
                                      run_id)}  # fmt: skip
    by_key = {c["key"]: cid for cid, c in cands.items()}
    # Nothing a failed reply said became a candidate.
    for c in cands.values():
        assert "MARK-" not in c["source"]
    assert not [r for r in rows.values() if r["status"] == "failed" and r["candidate_key"]]

    # Every reply that gave a candidate: stored whole, prompt included; the candidate is
    # labelled with its request's model and operator and linked to its parents.
    replied = [r for r in rows.values() if r["status"] == "replied" and r["operator"] != "rewrite"]
    assert len(replied) == llm["candidates"]
    # A child still waiting for the loop when the budget ran out is never proposed (its row
    # says what it would have been): at most the emitter's requests in flight.
    proposed = [r for r in replied if r["candidate_key"] in by_key]
    assert len(replied) - len(proposed) <= 4
    diffs = 0
    for row in proposed:
        messages = json.loads(row["messages"])
        assert [m["role"] for m in messages] == ["system", "user"]
        assert row["response"] == scenario.texts[row["request_id"]]
        cid = by_key[row["candidate_key"]]
        cand = cands[cid]
        assert cand["emitter"] == "llm"
        assert cand["label"] == f"llm:{row['model']}/{row['operator']}"
        assert row["model"] in {"m1", "m2"}
        assert cand["parents"] == json.loads(row["parent_ids"])
        if row["operator"] != "target":
            assert cand["parents"], row["operator"]
        if "<<<<<<< SEARCH" in row["response"]:
            diffs += 1
            parent = cands[cand["parents"][0]]
            n = _VARIANT.findall(row["response"])[-1]
            assert cand["source"].rstrip() == variant(parent["source"], int(n)).rstrip()
        assert verdicts[cid], f"candidate {cid} was never evaluated"
    assert diffs >= 1, "no diff reply was applied to its parent"

    # The reward hacks: evaluated (or refused by the gate), failed, never a cell's elite.
    memo = [cid for cid, c in cands.items() if "self.cache[key]" in c["source"]]
    gc_scan = [cid for cid, c in cands.items() if "gc.get_objects()" in c["source"]]
    assert memo and gc_scan
    for cid in memo:
        assert verdicts[cid] and "OK" not in verdicts[cid], verdicts[cid]
    assert verdicts[min(memo)] == {"INCORRECT"}
    for cid in gc_scan:
        assert verdicts[cid] == {"STATIC_REJECT"}
    assert not elites & {*memo, *gc_scan}

    # The key was sent, and is nowhere else.
    auth = {header(r, "Authorization") for r in llm_server.completions}
    assert auth == {f"Bearer {SECRET}"}
    logged = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )  # fmt: skip
    assert "llm request" in logged  # the pool's log records were captured
    assert_secret_nowhere(data, logged, caplog.text, printed, json.dumps(out, default=str))


def test_the_request_cap_is_exact_and_the_other_emitters_spend_the_budget(tmp_path, llm_server):
    """--llm-max-requests 3: three ids reach the server (a retried one counts once), the
    fourth is refused and journaled so, and the reference and parameter emitters finish."""
    scenario = Scenario([("rate_limited_then_ok", [status_reply(429, retry_after="0"), edit])])
    llm_server.request_responder = scenario
    data = tmp_path / "data"
    settings = settings_for(data, llm_server, llm_retries=1)
    out = run_search(
        settings,
        RunOptions(
            task=TASK,
            seeds=[PARAM_SEED],
            budget=8,
            device="cpu",
            templates=False,
            llm=True,
            llm_max_requests=3,
        ),
    )
    assert out["status"] == "finished" and out["stopped_reason"] == "budget"
    assert out["evaluations"] == 8
    ids = [header(r, "X-Kernelmap-Request") for r in llm_server.completions]
    assert len(ids) == 4 and len(set(ids)) == 3  # one id was retried after its 429
    from services.runs.search import open_database
    from services.runs.views import run_summary

    engine, sessions = open_database(settings)
    try:
        with sessions() as s:
            summary = run_summary(s, out["run_id"])
    finally:
        engine.dispose()
    assert summary["llm"]["requests"] == 3 and summary["llm"]["refused"] >= 1
    rows = llm_rows(data, out["run_id"])
    refused = {rid for rid, r in rows.items() if r["status"] == "refused"}
    assert (
        refused
        and not refused & set(ids)
        and all(rows[rid]["reason"] == "budget" for rid in refused)
    )
    emitters = {e for (e,) in query(data, "select emitter from proposals")}
    assert "llm" in emitters and len(emitters) >= 3  # reference, parameters and LLM


def _wait_until(proc: subprocess.Popen, done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        try:
            if done():
                return
        except sqlite3.OperationalError:
            pass  # the database is not created or migrated yet
        time.sleep(0.2)
    raise AssertionError("the run never reached the point to kill it")


def test_a_killed_llm_run_resumes_without_resending_a_request(tmp_path, llm_server):
    """SIGKILL mid-run with requests in flight, then --resume: no id reaches the server twice,
    the new ids continue the old ones, the ones in flight are marked lost, the bandit keeps
    its pulls and the run spends its budget; the key is in no output, row or file."""
    killed = threading.Event()
    # The first session's replies take 0.3 s, but those after the third hang until the kill,
    # so some are surely in flight when it comes; the resumed session's come at 0.3 s.
    scenario = Scenario(delay_s=lambda n: 0.3 if n <= 3 or killed.is_set() else 600.0)
    llm_server.request_responder = scenario
    data = tmp_path / "data"
    env = dict(
        os.environ,
        KERNELMAP_LLM_BASE_URL=llm_server.base_url,
        KERNELMAP_LLM_MODELS=MODELS,
        KERNELMAP_LLM_API_KEY=SECRET,
        KERNELMAP_LLM_TIMEOUT_S="60",
    )
    env.pop("KERNELMAP_DATABASE_URL", None)
    base = [sys.executable, "-m", "services.cli.main", "run", "--data-dir", str(data)]
    first = subprocess.Popen(
        [*base, str(TASK), "--llm", "--budget", "8", "--device", "cpu", "--no-templates"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            rows = query(data, "select request_id, status from llm_requests")
            seen = {header(r, "X-Kernelmap-Request") for r in llm_server.completions}
            answered = [rid for rid, status in rows if status in ("replied", "failed")]
            in_flight = [rid for rid, status in rows if status == "sent" and rid in seen]
            return len(answered) >= 3 and bool(in_flight)

        _wait_until(first, ready, timeout_s=120)
        os.killpg(first.pid, signal.SIGKILL)
        first_out, first_err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate(timeout=30)
    killed.set()
    (run_id,) = query(data, "select id from runs")[0]
    before = llm_rows(data, run_id)
    (state_json,) = query(data, "select llm_state from runs where id = ?", run_id)[0]
    state_before = json.loads(state_json)
    sent_before = len(llm_server.completions)
    in_flight = {rid for rid, r in before.items() if r["status"] == "sent"}
    assert in_flight

    second = subprocess.run(
        [*base, "--resume", str(run_id), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["status"] == "finished" and summary["stop_reason"] == "budget"
    assert summary["evaluations"] == 8

    ids = [header(r, "X-Kernelmap-Request") for r in llm_server.completions]
    assert len(ids) == len(set(ids)), "a request id reached the server twice"
    after = llm_rows(data, run_id)
    new = sorted(request_number(rid) for rid in set(after) - set(before))
    assert new, "the resumed session asked nothing"
    old_max = max(request_number(rid) for rid in before)
    assert new == list(range(old_max + 1, old_max + 1 + len(new)))
    assert {request_number(rid) for rid in ids[sent_before:]} <= set(new)
    for rid in in_flight:
        assert (after[rid]["status"], after[rid]["reason"]) == ("lost", "lost")
    assert summary["llm"]["lost"] >= len(in_flight)
    (state_json,) = query(data, "select llm_state from runs where id = ?", run_id)[0]
    state_after = json.loads(state_json)
    assert state_after["ids"] >= old_max + len(new)
    assert bandit_pulls(state_after) >= bandit_pulls(state_before)
    assert bandit_pulls(state_after) > 0

    auth = {header(r, "Authorization") for r in llm_server.completions}
    assert auth == {f"Bearer {SECRET}"}
    assert_secret_nowhere(data, first_out, first_err, second.stdout, second.stderr)

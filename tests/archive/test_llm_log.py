"""The LLM emitter's journal and its report, on SQLite and PostgreSQL.

Every request is recorded before it is sent and settled by its reply, each time with the
emitter's state; requests in flight at a stop are marked lost and counted at their
reservation; a log whose lease was lost writes nothing; the report counts what the replies
came to (candidates, correct ones, cell winners) per model and operator, and the strategies.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from archive import db, repository, run_leases
from archive import models as m
from archive.errors import RunNotFound
from archive.llm_log import MESSAGE_CHARS, LlmLog, LlmSpent
from archive.llm_report import llm_request, llm_requests, llm_summary
from archive.run_leases import LeaseLost
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.llm.port import (
    REWRITE,
    Failure,
    LlmJournal,
    LlmReply,
    LlmRequest,
    ReplyUse,
    RequestMeta,
)
from evolution.ports import Job, JobResult

PROMPT = [{"role": "system", "content": "You write Triton."}, {"role": "user", "content": "go"}]


def _run(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        task = repository.add_task(s, "softmax", "class Model: pass\n")
        run = repository.create_run(
            s, task.id, budget=10, seed=0, device="cpu", objective_label="cpu-time"
        )
        s.commit()
        return run.id


def _send(
    log: LlmLog,
    request_id: str,
    *,
    model: str = "m-small",
    operator: str = "mutate",
    strategy: str = "tiling",
    reserved: int = 1000,
    state: dict | None = None,
) -> None:
    request = LlmRequest(request_id, model, PROMPT, max_tokens=800)
    meta = RequestMeta(operator, strategy, (1, 2), reserved)
    log.sent(request, meta, state or {"ids": request_id})


def _reply(request_id: str, model: str = "m-small", **kw) -> LlmReply:
    fields = {"text": "```python\nX = 1\n```", "prompt_tokens": 120, "completion_tokens": 30}
    fields.update(kw)
    return LlmReply(request_id, model, latency_s=1.5, attempts=1, **fields)


def _rows(sessions: sessionmaker[Session], run_id: int) -> dict[str, m.LlmRequestRow]:
    with sessions() as s:
        rows = s.scalars(sa.select(m.LlmRequestRow).where(m.LlmRequestRow.run_id == run_id))
        return {r.request_id: r for r in rows}


def test_requests_replies_and_refusals_are_recorded_with_the_state(sessions) -> None:
    run_id = _run(sessions)
    log = LlmLog(sessions, run_id)
    assert isinstance(log, LlmJournal)
    with pytest.raises(RunNotFound):
        LlmLog(sessions, 4242)
    assert log.load_state() is None

    _send(log, "llm-1", state={"ids": 1})
    row = _rows(sessions, run_id)["llm-1"]
    assert (row.status, row.messages, row.parent_ids) == ("sent", PROMPT, [1, 2])
    assert (row.max_tokens, row.reserved_tokens, row.replied_at) == (800, 1000, None)
    assert log.load_state() == {"ids": 1}

    _send(log, "llm-2", state={"ids": 2})
    _send(log, "llm-3", state={"ids": 3})
    log.unsent("llm-3", {"ids": 3, "refused": True})
    log.replied(_reply("llm-1", cost=0.002), ReplyUse(candidate_key="k" * 64), {"ids": 3, "n": 1})
    cut = "x" * 5000
    log.replied(
        _reply("llm-2", text="partial", failure=Failure.TOO_LARGE, message=cut),
        ReplyUse(reason="request_failed", message="ignored: the reply's message wins"),
        {"ids": 3, "n": 2, "nested": {"bandit": [0.5, 1]}},
    )

    rows = _rows(sessions, run_id)
    one, two, three = rows["llm-1"], rows["llm-2"], rows["llm-3"]
    assert (one.status, one.reason, one.candidate_key, one.cost) == (
        "replied",
        None,
        "k" * 64,
        0.002,
    )
    assert (one.prompt_tokens, one.completion_tokens, one.attempts, one.latency_s) == (
        120,
        30,
        1,
        1.5,
    )
    assert one.response.startswith("```python") and one.replied_at is not None
    assert (two.status, two.reason, two.response) == ("failed", "too_large", "partial")
    assert two.message == "x" * MESSAGE_CHARS
    assert (three.status, three.reason, three.prompt_tokens) == ("refused", "budget", 0)
    assert log.load_state() == {"ids": 3, "n": 2, "nested": {"bandit": [0.5, 1]}}


def test_reply_use_decides_replied_or_failed(sessions) -> None:
    run_id = _run(sessions)
    log = LlmLog(sessions, run_id)
    for i in range(3):
        _send(log, f"llm-{i}", operator=REWRITE)
    log.replied(_reply("llm-0"), ReplyUse(strategy_id="tiling-2"), {})
    log.replied(_reply("llm-1"), ReplyUse(reason="duplicate", message="seen before"), {})
    log.replied(_reply("llm-2", text=None, failure=Failure.TIMEOUT), ReplyUse(), {})
    rows = _rows(sessions, run_id)
    assert (rows["llm-0"].status, rows["llm-0"].strategy_id) == ("replied", "tiling-2")
    assert (rows["llm-1"].status, rows["llm-1"].reason) == ("failed", "duplicate")
    assert rows["llm-1"].message == "seen before"
    assert (rows["llm-2"].status, rows["llm-2"].reason) == ("failed", "timeout")


def test_a_reply_to_an_unrecorded_request_gets_a_row(sessions) -> None:
    run_id = _run(sessions)
    log = LlmLog(sessions, run_id)
    log.replied(_reply("llm-9", model="m-big", cost=0.01), ReplyUse(candidate_key="c" * 64), {})
    log.replied(_reply("llm-10", text=None, failure=Failure.SERVER_ERROR), ReplyUse(), {"s": 1})
    rows = _rows(sessions, run_id)
    assert (rows["llm-9"].status, rows["llm-9"].model, rows["llm-9"].prompt_tokens) == (
        "replied",
        "m-big",
        120,
    )
    assert (rows["llm-10"].status, rows["llm-10"].reason) == ("failed", "server_error")
    assert log.spent().requests == 2 and log.load_state() == {"s": 1}


def test_close_lost_marks_the_requests_in_flight(sessions) -> None:
    run_id = _run(sessions)
    other = _run(sessions)
    log = LlmLog(sessions, run_id)
    for i in range(4):
        _send(log, f"llm-{i}")
    _send(LlmLog(sessions, other), "llm-0")  # another run's request is not this run's
    log.replied(_reply("llm-0"), ReplyUse(candidate_key="k" * 64), {})
    log.unsent("llm-3", {})
    assert log.close_lost() == 2
    assert log.close_lost() == 0
    rows = _rows(sessions, run_id)
    assert {k: r.status for k, r in rows.items()} == {
        "llm-0": "replied",
        "llm-1": "lost",
        "llm-2": "lost",
        "llm-3": "refused",
    }
    assert (rows["llm-1"].reason, rows["llm-1"].message) == (
        "lost",
        "in flight when the controller stopped",
    )
    assert _rows(sessions, other)["llm-0"].status == "sent"


def test_spent_counts_lost_requests_at_their_reservation_and_skips_refused(sessions) -> None:
    run_id = _run(sessions)
    log = LlmLog(sessions, run_id)
    assert log.spent() == LlmSpent(0, 0, 0, None, 0)
    for i, reserved in enumerate((1000, 2000, 4000, 8000)):
        _send(log, f"llm-{i}", reserved=reserved)
    log.replied(_reply("llm-0"), ReplyUse(candidate_key="k" * 64), {})
    log.replied(_reply("llm-1", prompt_tokens=50, completion_tokens=5), ReplyUse(reason="x"), {})
    log.unsent("llm-3", {})
    log.close_lost()  # llm-2
    spent = log.spent()
    assert spent == LlmSpent(
        requests=3, prompt_tokens=170, completion_tokens=35, cost=None, lost_tokens=4000
    )
    assert spent.tokens == 170 + 35 + 4000

    _send(log, "llm-4")
    log.replied(_reply("llm-4", cost=0.25), ReplyUse(candidate_key="j" * 64), {})
    assert log.spent().cost == pytest.approx(0.25)


def _lease_fence(sessions: sessionmaker[Session], run_id: int):
    """A fence for ``ctl-old``'s lease, and a function that lets ``ctl-new`` take the run."""
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with sessions() as s:
        lease = run_leases.acquire(s, run_id, "ctl-old", 3.0, now=t0)
        s.commit()

    def take_over() -> None:
        with sessions() as s:
            assert run_leases.acquire(s, run_id, "ctl-new", 3.0, now=t0 + dt.timedelta(seconds=10))
            s.commit()

    return (lambda session: run_leases.check(session, lease)), take_over


def test_a_log_whose_lease_was_lost_writes_nothing(sessions) -> None:
    run_id = _run(sessions)
    fence, take_over = _lease_fence(sessions, run_id)
    log = LlmLog(sessions, run_id, fence=fence)
    _send(log, "llm-1", state={"v": 1})
    _send(log, "llm-2", state={"v": 2})
    take_over()

    with pytest.raises(LeaseLost):
        _send(log, "llm-3", state={"v": 3})
    with pytest.raises(LeaseLost):
        log.replied(_reply("llm-1"), ReplyUse(candidate_key="k" * 64), {"v": 4})
    with pytest.raises(LeaseLost):
        log.replied(_reply("llm-7"), ReplyUse(candidate_key="k" * 64), {"v": 5})
    with pytest.raises(LeaseLost):
        log.unsent("llm-2", {"v": 6})
    with pytest.raises(LeaseLost):
        log.close_lost()
    rows = _rows(sessions, run_id)
    assert {k: r.status for k, r in rows.items()} == {"llm-1": "sent", "llm-2": "sent"}
    assert log.load_state() == {"v": 2}


def test_a_request_takes_the_replies_before_it_along_in_one_transaction(sessions) -> None:
    run_id = _run(sessions)
    fence, take_over = _lease_fence(sessions, run_id)
    log = LlmLog(sessions, run_id, fence=fence)
    _send(log, "llm-1", state={"v": 1})
    _send(log, "llm-2", state={"v": 2})
    took = [
        (_reply("llm-1"), ReplyUse(candidate_key="k" * 64)),
        (_reply("llm-2", text=None, failure=Failure.TIMEOUT), ReplyUse()),
    ]
    request = LlmRequest("llm-3", "m-small", PROMPT, max_tokens=800)
    log.sent(request, RequestMeta("mutate", "tiling", (1,), 900), {"v": 3}, replies=took)
    rows = _rows(sessions, run_id)
    assert {k: (r.status, r.reason) for k, r in rows.items()} == {
        "llm-1": ("replied", None),
        "llm-2": ("failed", "timeout"),
        "llm-3": ("sent", None),
    }
    assert rows["llm-1"].candidate_key == "k" * 64 and log.load_state() == {"v": 3}

    # All or nothing: a write refused by the fence leaves the replies unrecorded too.
    take_over()
    request = LlmRequest("llm-4", "m-small", PROMPT, max_tokens=800)
    with pytest.raises(LeaseLost):
        log.sent(
            request,
            RequestMeta("mutate", "tiling"),
            {"v": 4},
            replies=[(_reply("llm-3"), ReplyUse(candidate_key="j" * 64))],
        )
    rows = _rows(sessions, run_id)
    assert rows["llm-3"].status == "sent" and "llm-4" not in rows
    assert log.load_state() == {"v": 3}


def _evaluate(store: RunStore, spec: CandidateSpec, verdict: str, job_id: str) -> int:
    """Propose ``spec``, dispatch it and ingest its result; returns the candidate id."""
    cid = store.propose(spec).candidate_id
    store.dispatched(Job(job_id, cid, spec.source, {}))
    result = {"verdict": verdict, "correct": verdict == "OK", "messages": []}
    store.ingest(JobResult(job_id, cid, result))
    return cid


def test_summary_counts_what_the_replies_came_to_per_arm(sessions) -> None:
    run_id = _run(sessions)
    store = RunStore(sessions, run_id)
    log = LlmLog(sessions, run_id)
    with sessions() as s:
        assert llm_summary(s, run_id) is None  # no request, no state yet

    good = CandidateSpec("A = 1\n", emitter="llm")  # correct, wins a cell
    fine = CandidateSpec("B = 1\n", emitter="llm")  # correct, never a cell
    bad = CandidateSpec("C = 1\n", emitter="llm")  # incorrect
    unseen = CandidateSpec("D = 1\n", emitter="llm")  # a key the loop has not proposed yet
    good_id = _evaluate(store, good, "OK", "j-good")
    _evaluate(store, fine, "OK", "j-fine")
    _evaluate(store, bad, "INCORRECT", "j-bad")
    store.elite_changed(3, good_id, 0.9, [0.1, 0.2], None)

    arms = [
        ("m-small", "mutate", "tiling", good.key, 0.01),
        ("m-small", "mutate", "tiling", fine.key, 0.01),
        ("m-small", "crossover", "fusion", bad.key, None),
        ("m-big", "mutate", "fusion", unseen.key, 0.05),
    ]
    for i, (model, operator, strategy, key, cost) in enumerate(arms):
        _send(log, f"llm-{i}", model=model, operator=operator, strategy=strategy)
        log.replied(_reply(f"llm-{i}", model=model, cost=cost), ReplyUse(candidate_key=key), {})
    _send(log, "llm-4", model="m-big", operator="repair", strategy="tiling")
    log.replied(_reply("llm-4", model="m-big", text=None, failure=Failure.TIMEOUT), ReplyUse(), {})
    _send(log, "llm-5", operator=REWRITE, strategy="tiling")
    log.replied(_reply("llm-5"), ReplyUse(strategy_id="s1"), {})
    _send(log, "llm-6", strategy="s1")
    log.replied(_reply("llm-6"), ReplyUse(reason="edit_failed", message="no code block"), {})
    _send(log, "llm-7", reserved=5000)  # in flight
    _send(log, "llm-8")
    log.unsent("llm-8", {})
    pool = {
        "version": 1,
        "max_active": 4,
        "next": 2,
        "strategies": [
            {"id": "tiling", "text": "Tile it.", "parent_id": None, "generation": 0},
            {"id": "fusion", "text": "Fuse it.", "parent_id": None, "generation": 0},
            {"id": "s1", "text": "Tile, then fuse.", "parent_id": "tiling", "generation": 1},
        ],
        "active": ["fusion", "s1"],
    }
    _send(log, "llm-9", state={"strategies": pool})  # in flight too
    with sessions() as s:
        assert llm_summary(s, run_id)["in_flight"] == 2
    assert log.close_lost() == 2  # the controller stopped: llm-7 and llm-9 are lost

    with sessions() as s:
        summary = llm_summary(s, run_id)
    by_arm = summary.pop("by_arm")
    strategies = summary.pop("strategies")
    assert summary == {
        "requests": 9,
        "refused": 1,
        "in_flight": 0,
        "lost": 2,
        "failures": {"edit_failed": 1, "lost": 2, "timeout": 1},
        "prompt_tokens": 120 * 7,
        "completion_tokens": 30 * 7,
        "cost": pytest.approx(0.07),
        "candidates": 4,
        "correct": 2,
        "elites": 1,
    }

    def arm(model, operator, requests, candidates, correct, improvements, replies):
        return {
            "model": model,
            "operator": operator,
            "requests": requests,
            "candidates": candidates,
            "correct": correct,
            "improvements": improvements,
            "prompt_tokens": 120 * replies,
            "completion_tokens": 30 * replies,
        }

    assert by_arm == [
        arm("m-big", "mutate", 1, 1, 0, 0, replies=1),
        arm("m-big", "repair", 1, 0, 0, 0, replies=1),
        arm("m-small", "crossover", 1, 1, 0, 0, replies=1),
        arm("m-small", "mutate", 5, 2, 2, 1, replies=3),  # llm-0, 1, 6 replied; 7, 9 lost
        arm("m-small", REWRITE, 1, 0, 0, 0, replies=1),
    ]
    # Requests per strategy: rewrites and refusals are not uses of a strategy.
    assert strategies == [
        {**pool["strategies"][0], "active": False, "requests": 5},
        {**pool["strategies"][1], "active": True, "requests": 2},
        {**pool["strategies"][2], "active": True, "requests": 1},
    ]


def test_summary_sees_a_duplicate_of_an_earlier_runs_candidate(sessions) -> None:
    first = RunStore(sessions, _run(sessions))
    spec = CandidateSpec("A = 1\n")
    _evaluate(first, spec, "OK", "j-1")
    with sessions() as s:
        run = repository.create_run(
            s, first.task_id, budget=10, seed=1, device="cpu", objective_label="cpu-time"
        )
        s.commit()
    RunStore(sessions, run.id).propose(spec)  # a duplicate: the first run's candidate
    log = LlmLog(sessions, run.id)
    _send(log, "llm-1")
    log.replied(_reply("llm-1"), ReplyUse(candidate_key=spec.key), {})
    with sessions() as s:
        summary = llm_summary(s, run.id)
        assert (summary["candidates"], summary["correct"], summary["elites"]) == (1, 1, 0)
        assert summary["strategies"] == []


def test_requests_are_listed_newest_first_and_shown_whole(sessions) -> None:
    run_id = _run(sessions)
    store = RunStore(sessions, run_id)
    spec = CandidateSpec("A = 1\n", emitter="llm")
    cid = _evaluate(store, spec, "OK", "j-1")
    log = LlmLog(sessions, run_id)
    for i in range(3):
        _send(log, f"llm-{i}")
    log.replied(_reply("llm-0", cost=0.5), ReplyUse(candidate_key=spec.key), {})
    with sessions() as s:
        listed = llm_requests(s, run_id)
        assert [r["request_id"] for r in listed] == ["llm-2", "llm-1", "llm-0"]
        assert "messages" not in listed[0] and "response" not in listed[0]
        first = listed[-1]
        assert (first["status"], first["candidate_id"], first["cost"]) == ("replied", cid, 0.5)
        assert dt.datetime.fromisoformat(first["created_at"]).tzinfo is not None
        assert [r["request_id"] for r in llm_requests(s, run_id, limit=1, offset=1)] == ["llm-1"]

        whole = llm_request(s, run_id, "llm-0")
        assert (whole["messages"], whole["response"], whole["candidate_id"]) == (
            PROMPT,
            _reply("llm-0").text,
            cid,
        )
        assert (whole["parent_ids"], whole["reserved_tokens"], whole["attempts"]) == (
            [1, 2],
            1000,
            1,
        )
        assert whole["replied_at"] is not None and whole["strategy_id"] is None
        assert llm_request(s, run_id, "llm-1")["replied_at"] is None
        assert llm_request(s, run_id, "llm-404") is None


def test_the_migration_creates_and_drops_the_llm_tables(db_url) -> None:
    engine = db.make_engine(db_url)
    try:
        db.ensure_schema(engine)
        inspector = sa.inspect(engine)
        assert "llm_requests" in inspector.get_table_names()
        assert "llm_state" in {c["name"] for c in inspector.get_columns("runs")}
        uniques = inspector.get_unique_constraints("llm_requests")
        assert [u["column_names"] for u in uniques] == [["run_id", "request_id"]]

        command.downgrade(db.alembic_config(engine), "0005")
        inspector = sa.inspect(engine)
        assert "llm_requests" not in inspector.get_table_names()
        assert "llm_state" not in {c["name"] for c in inspector.get_columns("runs")}
        db.ensure_schema(engine)
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()

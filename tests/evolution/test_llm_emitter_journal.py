"""LlmEmitter's journal and resume, in the loop (the rest: test_llm_emitter_loop.py)."""

from __future__ import annotations

import json
import random
import re
import threading

import pytest

from evolution.candidate import CandidateSpec, outcome_from_result
from evolution.descriptors import parse_dims
from evolution.emitters import LlmEmitter, SeedEmitter, archive_elites
from evolution.fakes import FakeDispatcher, MemoryJournal, MemoryStore, ScriptedLlm, fake_result
from evolution.grid import REJECTED, TIE, Decision, MapArchive
from evolution.llm.cells import Elite
from evolution.llm.errors import StateError
from evolution.llm.port import LlmRequest
from evolution.llm.strategies import BUILTIN
from evolution.loop import STOP_BUDGET, STOP_STOPPED, SearchLoop
from tests.evolution.test_llm_emitter import SEED, TASK, base_of, faster_diff, model
from tests.evolution.test_loop import CPU_DIMS

ADVICE = (
    "Keep each program's tile in registers, unroll the inner loop over the reduction axis,"
    " and mask the last partial tile instead of padding the inputs."
)
META = "You improve the advice"
_MS = re.compile(r"^MS = ([0-9.]+)", re.M)


def evaluate(job) -> dict:
    """``MS = x`` fixes the time, ``FAIL`` is a runtime error; no timing noise, so no ties."""
    if "FAIL" in job.source:
        result = fake_result(job.params, 1.0, device="cpu", verdict="RUNTIME_ERROR")
        result["messages"] = ["IndexError: out of bounds in ModelNew.forward"]
        return result
    found = _MS.search(job.source)
    return fake_result(job.params, float(found.group(1)) if found else 1.0, rel_iqr=0.0)


def build(
    port,
    *,
    store=None,
    journal=None,
    budget=20,
    operators=("mutate",),
    extra=(),
    dispatch_seed=None,
    emitter_cls=LlmEmitter,
    loop_kw=None,
    **kw,
):
    """A loop of the seed, the LLM emitter over ``port`` and ``extra`` emitters."""
    store = store if store is not None else MemoryStore()
    archive = MapArchive(parse_dims(CPU_DIMS))
    kw.setdefault("max_in_flight", 2)
    emitter = emitter_cls(
        port,
        TASK,
        [("m1", 1.0), ("m2", 0.5)],
        archive.dims,
        archive_elites(archive, store.specs.get),
        {"gpu": "fake"},
        seed=3,
        operators=operators,
        journal=journal,
        **kw,
    )
    others = [e(archive) if callable(e) else e for e in extra]
    emitters = [SeedEmitter([CandidateSpec(SEED, label="seed")]), emitter, *others]
    dispatcher = FakeDispatcher(evaluate, 4, seed=dispatch_seed)
    loop_kw = {"poll_timeout_s": 0.001, **(loop_kw or {})}
    loop = SearchLoop(archive, emitters, dispatcher, store, budget, **loop_kw)
    return loop, emitter, dispatcher, store


def pulls(emitter: LlmEmitter) -> int:
    """Every credit the bandit holds (arms on offer or not)."""
    return sum(row[3] for row in emitter.bandit.to_json()["stats"])


def number(request_id: str) -> int:
    return int(request_id.rsplit("-", 1)[1])


# --- the journal --------------------------------------------------------------------------------


class JournalFirst(ScriptedLlm):
    """Asserts at each submit that the journal already holds the request and its id is used."""

    journal: MemoryJournal

    def submit(self, request: LlmRequest) -> bool:
        assert self.journal.sent_requests[-1][0].request_id == request.request_id
        assert self.journal.state["ids"] == number(request.request_id)
        return super().submit(request)


class RecordingJournal(MemoryJournal):
    """Also keeps the state given with each ``sent``."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_states: list[dict] = []

    def sent(self, request, meta, state, replies=()):
        self.sent_states.append(json.loads(json.dumps(state)))
        super().sent(request, meta, state, replies)


def test_each_request_is_journaled_before_it_is_submitted_and_each_reply_with_its_use():
    bad = "I would rather not write code today."
    journal = RecordingJournal()
    port = JournalFirst(
        [faster_diff, bad, faster_diff, faster_diff, bad, faster_diff], max_requests=6
    )
    port.journal = journal
    loop, emitter, dispatcher, store = build(port, journal=journal, budget=12)
    loop.run()

    ids = [r.request_id for r, _ in journal.sent_requests]
    assert len(ids) == len(set(ids)) == len(port.requests) + len(journal.unsent_ids)
    assert [number(i) for i in ids] == list(range(1, len(ids) + 1))
    # The state recorded with a request already counts its id.
    assert [s["ids"] for s in journal.sent_states] == [number(i) for i in ids]
    assert all(
        m.operator == "mutate" and m.strategy in {s.id for s in BUILTIN}
        for _, m in journal.sent_requests
    )
    assert all(
        m.reserved_tokens == r.reserved_tokens > r.max_tokens for r, m in journal.sent_requests
    )
    assert all(
        len(m.parent_ids) == 1 and m.parent_ids[0] in store.specs for _, m in journal.sent_requests
    )

    # A refused request is recorded as unsent, and was never submitted.
    assert journal.unsent_ids and set(journal.unsent_ids).isdisjoint(
        r.request_id for r in port.requests
    )
    # Every reply is journaled with what became of it.
    # (A child is recorded when the loop takes it, a failure when its reply comes back.)
    assert sorted(r.request_id for r, _ in journal.replies) == sorted(
        r.request_id for r in port.requests
    )
    uses = {r.request_id: u for r, u in journal.replies}
    keys = {s.key for s in store.specs.values() if s.emitter == "llm"}
    children = [u for u in uses.values() if u.candidate_key is not None]
    assert len(children) == 4 and {u.candidate_key for u in children} == keys
    assert [u.reason for u in uses.values() if u.candidate_key is None] == ["malformed"] * 2
    assert all(u.message for u in uses.values() if u.reason)
    assert all(u.strategy_id is None for u in uses.values())
    # The last record's state: tells after it are not recorded (their credits stay owed there).
    assert journal.state["ids"] == emitter.state()["ids"] == len(ids)
    assert {k for k, *_ in journal.state["owed"]} >= {k for k, *_ in emitter.state()["owed"]}


class RefusesSecond(ScriptedLlm):
    """Refuses the second submit (a cap holding the first request's worst case)."""

    def submit(self, request):
        if len(self.requests) == 1 and not self.refused:
            self.refused += 1
            return False
        return super().submit(request)


def test_a_refused_request_id_is_never_used_again():
    journal = MemoryJournal()
    port = RefusesSecond([faster_diff] * 6)
    loop, emitter, dispatcher, store = build(port, journal=journal, budget=8)
    loop.run()
    assert journal.unsent_ids[0] == "llm-2"
    sent = [r.request_id for r in port.requests]
    assert "llm-2" not in sent and sent[:2] == ["llm-1", "llm-3"]
    ids = [r.request_id for r, _ in journal.sent_requests]
    assert len(ids) == len(set(ids))
    assert emitter.state()["ids"] == number(ids[-1])


# --- resume -------------------------------------------------------------------------------------


def stop_after(n: int) -> tuple[threading.Event, dict]:
    stop = threading.Event()

    def on_progress(p) -> None:
        if p.evaluations >= n:
            stop.set()

    return stop, {"on_progress": on_progress}


def test_a_resumed_emitter_never_reuses_an_id_nor_credits_an_outcome_twice():
    store, journal = MemoryStore(), MemoryJournal()
    stop, kw = stop_after(9)
    loop1, first, _, _ = build(
        ScriptedLlm([faster_diff] * 60),
        store=store,
        journal=journal,
        budget=30,
        dispatch_seed=1,
        loop_kw=kw,
    )
    assert loop1.run(stop).stopped_reason == STOP_STOPPED
    state = json.loads(json.dumps(journal.state))
    before = {r.request_id for r, _ in journal.sent_requests}
    # What makes this a test: children credited before the snapshot, children owed at it whose
    # outcomes the store holds or will hold (told after the last record, or still in flight).
    assert sum(row[3] for row in state["bandit"]["stats"]) > 0
    owed = {key for key, *_ in state["owed"]}
    stored = {s.key for _, s, _ in store.evaluated()} | {s.key for _, s in store.pending()}
    assert owed & stored

    port = ScriptedLlm([faster_diff] * 60)
    loop2, second, _, _ = build(port, store=store, journal=journal, budget=30, dispatch_seed=2)
    second.restore(state)
    loop2.resume()
    summary = loop2.run()
    assert summary.stopped_reason == STOP_BUDGET and summary.evaluations == 30

    ids = [r.request_id for r, _ in journal.sent_requests]
    assert len(ids) == len(set(ids))
    assert min(number(r.request_id) for r in port.requests) > max(number(i) for i in before)
    assert second.requests == len(port.requests) + state["requests"]
    # One credit per failed reply and per evaluated child, whichever session told it.
    failed = [u for _, u in journal.replies if u.reason]
    evaluated = {cid for cid, s, _ in store.evaluated() if s.emitter == "llm"}
    assert pulls(second) == len(failed) + len(evaluated)
    assert len(second.children) == len(evaluated)
    assert not {key for key, *_ in second.state()["owed"]} & {
        store.specs[cid].key for cid in evaluated
    }


def breaking(request: LlmRequest) -> str:
    """A model whose kernels all fail (each its own way) and whose repairs all work."""
    n = number(request.request_id)
    prompt = request.messages[-1]["content"]
    if "failed with verdict RUNTIME_ERROR" in prompt:
        line = re.search(r"^FAIL = \d+$", prompt, re.M).group(0)
        return f"<<<<<<< SEARCH\n{line}\n=======\nFIXED = {n}\n>>>>>>> REPLACE\n"
    line = _MS.search(base_of(request)).group(0)
    return f"<<<<<<< SEARCH\n{line}\n=======\n{line}\nFAIL = {n}\n>>>>>>> REPLACE\n"


def test_a_restored_repair_queue_holds_the_saved_waiting_ids():
    store, journal = MemoryStore(), MemoryJournal()
    stop = threading.Event()

    def both_kinds(_progress) -> None:
        # Stopped once some failures were repaired while others still wait (when that happens
        # depends on the bandit's draws, not on a count of evaluations).
        repairs = (journal.state or {}).get("repairs") or {}
        if repairs.get("waiting") and repairs.get("done"):
            stop.set()

    operators = ("mutate", "repair")
    loop1, _, _, _ = build(
        ScriptedLlm([breaking] * 60),
        store=store,
        journal=journal,
        budget=40,
        operators=operators,
        loop_kw={"on_progress": both_kinds},
        max_in_flight=4,
    )
    loop1.run(stop)
    assert stop.is_set()
    state = journal.state
    waiting = state["repairs"]["waiting"]
    assert waiting and state["repairs"]["done"]  # some repaired, some waiting

    loop2, second, _, _ = build(ScriptedLlm([]), store=store, budget=40, operators=operators)
    second.restore(state)
    loop2.resume()
    second._repairs.settle()  # what the first ask does
    assert second.state()["repairs"] == state["repairs"]
    popped = [second._repairs.pop() for _ in waiting]
    assert [v.candidate_id for v in popped] == waiting[::-1]  # the newest first
    assert all(v.source == store.specs[v.candidate_id].source for v in popped)
    assert all(v.evaluation.verdict == "RUNTIME_ERROR" for v in popped)


def test_state_survives_json_and_another_version_is_refused():
    loop, emitter, _, _ = build(
        ScriptedLlm([model] * 30), budget=14, operators=("mutate", "repair")
    )
    loop.run()
    state = emitter.state()
    assert json.loads(json.dumps(state)) == state
    _, twin, _, _ = build(ScriptedLlm([]))
    twin.restore(json.loads(json.dumps(state)))
    assert twin.state() == state
    with pytest.raises(StateError, match="version"):
        twin.restore({**state, "version": state["version"] + 1})  # written by a newer kernelmap
    with pytest.raises(StateError, match="version"):
        twin.restore({**state, "version": 1})
    with pytest.raises(StateError):
        twin.restore({k: v for k, v in state.items() if k != "owed"})


def test_a_state_of_the_version_before_restores():
    # Version 2 (bandit version 1) kept Mersenne Twister states: 625 integers each.
    loop, emitter, _, _ = build(ScriptedLlm([model] * 30), budget=10)
    loop.run()
    state = json.loads(json.dumps(emitter.state()))
    mt = random.Random(1).getstate()
    old_rng = [mt[0], list(mt[1]), mt[2]]
    old = {**state, "version": 2, "rng": old_rng}
    old["bandit"] = {**state["bandit"], "version": 1, "rng": old_rng}
    twins = []
    for _ in range(2):
        _, twin, _, _ = build(ScriptedLlm([]))
        twin.restore(json.loads(json.dumps(old)))
        twins.append(twin.state())
    assert twins[0] == twins[1]  # the same continuation every time
    assert twins[0]["version"] == state["version"] and twins[0]["bandit"] == {
        **state["bandit"],
        "rng": twins[0]["bandit"]["rng"],
    }


# --- known bugs ---------------------------------------------------------------------------------


def test_a_failed_child_whose_repair_was_refused_is_still_repaired():
    port = RefusesSecond([faster_diff] * 6)
    dims = parse_dims(CPU_DIMS)
    emitter = LlmEmitter(
        port, TASK, [("m1", 1.0)], dims, list, operators=("repair",), max_in_flight=2
    )
    result = fake_result({}, 1.0, verdict="RUNTIME_ERROR")
    for cid in (1, 2):
        spec = CandidateSpec(f"FAIL = {cid}\n" + SEED, emitter="llm")
        emitter.tell(spec, outcome_from_result(cid, result), Decision(REJECTED, 0, (0.0, 0.0)))
    emitter.ask(2)  # repairs 2 sent; the repair of 1 refused while 2 is in flight
    for _ in range(3):
        emitter.ask(2)  # 2's reply is back: the refusal is retried
    repaired = [r.messages[-1]["content"] for r in port.requests]
    assert any("FAIL = 1" in p for p in repaired)


def test_a_tie_whose_remeasure_was_lost_is_credited_after_resume():
    store, journal = MemoryStore(), MemoryJournal()
    stop, kw = stop_after(2)
    tie = "<<<<<<< SEARCH\nMS = 0.5\n=======\nMS = 0.4999\n>>>>>>> REPLACE\n"
    noisy = "<<<<<<< SEARCH\nMS = 0.5\n=======\nMS = 0.4998\n>>>>>>> REPLACE\n"

    def tie_evaluate(job):
        found = _MS.search(job.source)
        return fake_result(job.params, float(found.group(1)), rel_iqr=0.01)

    loop1, first, dispatcher, _ = build(
        ScriptedLlm([tie, noisy]), store=store, journal=journal, budget=10, loop_kw=kw
    )
    dispatcher.evaluate = tie_evaluate
    loop1.run(stop)
    state = journal.state
    assert state["owed"]  # the tied children: credited once their re-measure settles them

    loop2, second, dispatcher2, _ = build(ScriptedLlm([]), store=store, budget=10)
    dispatcher2.evaluate = tie_evaluate
    second.restore(state)
    loop2.resume()
    loop2.run()
    told = {s.key for _, s, _ in store.evaluated() if s.emitter == "llm"}
    assert told and not told & {key for key, *_ in second.state()["owed"]}


def test_the_tie_scenario_above_really_ties():
    """The lost-tie bug test is meaningful: its children are ties when first told."""
    store, journal = MemoryStore(), MemoryJournal()
    stop, kw = stop_after(2)
    tie = "<<<<<<< SEARCH\nMS = 0.5\n=======\nMS = 0.4999\n>>>>>>> REPLACE\n"
    seen = []

    class Spy(LlmEmitter):
        def tell(self, spec, outcome, decision):
            seen.append(decision.status)
            super().tell(spec, outcome, decision)

    loop, _, dispatcher, _ = build(
        ScriptedLlm([tie]), store=store, journal=journal, budget=10, loop_kw=kw, emitter_cls=Spy
    )
    dispatcher.evaluate = lambda job: fake_result(
        job.params, float(_MS.search(job.source).group(1)), rel_iqr=0.01
    )
    loop.run(stop)
    assert TIE in seen


# --- one write per request ---------------------------------------------------------------------


class CallLog(MemoryJournal):
    """Keeps each write: ``(kind, request id or None, ids of the replies written)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str | None, list[str]]] = []

    def sent(self, request, meta, state, replies=()):
        self.calls.append(("sent", request.request_id, [r.request_id for r, _ in replies]))
        super().sent(request, meta, state, replies)

    def replied(self, reply, use, state):
        self.calls.append(("replied", None, [reply.request_id]))
        super().replied(reply, use, state)


def on_one_elite(port, journal, max_in_flight: int) -> LlmEmitter:
    """An emitter that mutates the seed's one elite, asked directly (no loop)."""
    elites = [Elite(1, SEED, {}, 0.47, 0, (0.0,))]
    return LlmEmitter(
        port,
        TASK,
        [("m1", 1.0)],
        [],
        lambda: elites,
        operators=("mutate",),
        max_in_flight=max_in_flight,
        journal=journal,
    )


def test_the_replies_an_ask_used_go_with_its_next_request_in_one_write():
    journal = CallLog()
    port = ScriptedLlm([faster_diff, "no code here", faster_diff])
    emitter = on_one_elite(port, journal, max_in_flight=1)
    assert emitter.ask(1) == []
    assert journal.calls == [("sent", "llm-1", [])]
    assert len(emitter.ask(1)) == 1  # the child of llm-1, recorded with the request after it
    assert journal.calls[-1] == ("sent", "llm-2", ["llm-1"])
    assert emitter.ask(1) == []  # llm-2 failed (no code): written with llm-3
    assert journal.calls[-1] == ("sent", "llm-3", ["llm-2"])
    # The script is over: llm-4 takes llm-3's child along and is refused.
    children = emitter.ask(1)
    assert len(children) == 1 and journal.calls[-1] == ("sent", "llm-4", ["llm-3"])
    assert journal.unsent_ids == ["llm-4"]
    keys = [u.candidate_key for _, u in journal.replies]
    assert keys[1] is None and keys[2] == children[0].key
    assert journal.state == json.loads(json.dumps(emitter.state()))


def test_replies_no_request_takes_along_are_written_before_ask_returns():
    journal = CallLog()
    emitter = on_one_elite(ScriptedLlm([faster_diff, faster_diff]), journal, max_in_flight=2)
    assert emitter.ask(1) == [] and [c[1] for c in journal.calls] == ["llm-1", "llm-2"]
    first = emitter.ask(1)  # both replies back: one child taken, llm-3 sent with it, refused
    assert len(first) == 1 and journal.calls[-1] == ("sent", "llm-3", ["llm-1"])
    second = emitter.ask(1)  # refused: nothing is sent, the child is written alone
    assert len(second) == 1 and journal.calls[-1] == ("replied", None, ["llm-2"])
    assert [u.candidate_key for _, u in journal.replies] == [first[0].key, second[0].key]

"""LlmEmitter in the loop: meta-prompt rewrites, giving up, waiting, the evaluator's messages."""

from __future__ import annotations

import re

import pytest

from evolution.candidate import CandidateSpec, outcome_from_result
from evolution.descriptors import parse_dims
from evolution.emitters import LlmEmitter
from evolution.fakes import MemoryJournal, ScriptedLlm, fake_result
from evolution.grid import REJECTED, Decision
from evolution.llm.cells import Elite
from evolution.llm.port import REWRITE, LlmRequest
from evolution.llm.strategies import BUILTIN, StrategyPool
from evolution.loop import STOP_BUDGET, STOP_STALLED
from tests.evolution.test_llm_emitter import SEED, TASK, faster_diff
from tests.evolution.test_llm_emitter_journal import (
    ADVICE,
    META,
    build,
    number,
    pulls,
)
from tests.evolution.test_loop import CPU_DIMS, Waiting, params_family

# --- meta-prompt evolution ----------------------------------------------------------------------


def answering(*advice: str):
    """A model that writes faster kernels and answers the rewrite meta-prompt with ``advice``,
    one after the other (the last again once they run out)."""
    texts = iter(advice)
    last = [advice[-1]]

    def reply(request: LlmRequest) -> str:
        if request.messages[0]["content"].startswith(META):
            last[0] = next(texts, last[0])
            return last[0]
        return faster_diff(request)

    return reply


def test_a_rewritten_strategy_joins_the_pool_and_the_bandit_and_is_used():
    journal = MemoryJournal()
    port = ScriptedLlm([answering(ADVICE)] * 60)
    loop, emitter, _, _ = build(
        port,
        journal=journal,
        budget=24,
        strategies=StrategyPool(BUILTIN[:1]),
        rewrite_every=4,
    )
    loop.run()
    assert "r1" in [s.id for s in emitter.strategies.active]
    assert emitter.strategies.get("r1").text == ADVICE
    assert emitter.strategies.get("r1").parent_id == "tiling"
    assert any(arm[2] == "r1" for arm in emitter.bandit.arms)

    rewrites = [(r, m) for r, m in journal.sent_requests if m.operator == REWRITE]
    assert rewrites[0][1].strategy == "tiling" and rewrites[0][0].model == "m1"  # the heaviest
    assert rewrites[0][0].messages[0]["content"].startswith(META)
    uses = {r.request_id: u for r, u in journal.replies}
    assert uses[rewrites[0][0].request_id].strategy_id == "r1"
    # Later kernel requests use the new advice.
    later = [r for r, m in journal.sent_requests if m.operator == "mutate" and m.strategy == "r1"]
    assert later and all(ADVICE in r.messages[0]["content"] for r in later)
    assert number(later[0].request_id) > number(rewrites[0][0].request_id)
    # A rewrite is not a kernel: it credits no arm.
    asked = {r.request_id for r, _ in rewrites}
    kernels = [u for r, u in journal.replies if r.request_id not in asked]
    recorded = {u.candidate_key for u in kernels}
    owed = [key for key in emitter._children if key in recorded]  # not ready ones never taken
    assert pulls(emitter) == len(kernels) - len(owed)


def test_a_rejected_rewrite_is_counted_and_adds_nothing():
    journal = MemoryJournal()
    code = "Unroll the loop like this:\n```python\nfor i in range(4):\n    pass\n```\nThen mask."
    port = ScriptedLlm([answering(code, "Be fast.")] * 60)
    loop, emitter, _, _ = build(
        port,
        journal=journal,
        budget=16,
        strategies=StrategyPool(BUILTIN[:1]),
        rewrite_every=4,
    )
    loop.run()
    assert emitter.failures["rewrite_code"] == 1 and emitter.failures["rewrite_too_short"] >= 1
    assert [s.id for s in emitter.strategies.all] == ["tiling"]
    assert {arm[2] for arm in emitter.bandit.arms} == {"tiling"}
    reasons = [u.reason for r, u in journal.replies if u.reason]
    assert reasons[:2] == ["rewrite_code", "rewrite_too_short"]
    rewrites = [r.request_id for r, m in journal.sent_requests if m.operator == REWRITE]
    assert len(rewrites) == sum(emitter.failures.values()) >= 2
    assert emitter.gave_up is None  # rejected rewrites are not a kernel failure streak


# --- giving up ----------------------------------------------------------------------------------


def test_a_model_that_never_follows_the_format_is_given_up_on_and_the_run_goes_on():
    journal = MemoryJournal()
    port = ScriptedLlm(["I would rather not write code today."] * 100)
    loop, emitter, dispatcher, store = build(
        port, journal=journal, budget=20, extra=[params_family()], max_failures_in_a_row=5
    )
    summary = loop.run()
    assert summary.stopped_reason == STOP_BUDGET and summary.evaluations == 20
    assert re.match(
        r"[56] replies in a row gave no candidate \(the last: malformed\)", emitter.gave_up
    )
    assert emitter.exhausted and not emitter.waiting
    # Asked no more once it gave up: only the requests then in flight came back after.
    assert 5 <= len(port.requests) <= 5 + emitter.max_in_flight - 1
    assert emitter.failures == {"malformed": len(port.requests)} and not journal.unsent_ids
    assert len(journal.replies) == len(port.requests)
    assert emitter.ask(4) == [] and len(port.requests) == len(journal.sent_requests)
    assert not any(s.emitter == "llm" for s in store.specs.values())
    assert journal.state["gave_up"] == emitter.gave_up


def test_a_candidate_between_failures_resets_the_count():
    bad = "I would rather not write code today."
    port = ScriptedLlm([bad, bad, faster_diff] * 8)
    loop, emitter, _, _ = build(port, budget=10, max_failures_in_a_row=3)
    loop.run()
    assert emitter.gave_up is None and emitter.failures["malformed"] >= 4


# --- waiting ------------------------------------------------------------------------------------


class SlowLlm(ScriptedLlm):
    """Each reply comes back only at the ``delay``-th poll after its submit."""

    def __init__(self, replies, delay: int, **kw) -> None:
        super().__init__(replies, **kw)
        self.delay = delay
        self.polls = 0
        self._held: list[list] = []

    def poll(self, timeout_s: float = 0):
        self.polls += 1
        assert self.polls < 500, "the loop never stopped"
        self._held += [[reply, self.delay] for reply in super().poll()]
        for held in self._held:
            held[1] -= 1
        out = [reply for reply, left in self._held if left <= 0]
        self._held = [h for h in self._held if h[1] > 0]
        return out

    @property
    def in_flight(self) -> int:
        return len(self._held) + len(self._done)


class Ticking:
    """A clock that jumps 10 s at each reading: every idle iteration is past the timeout."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 10.0
        return self.now


class NeverWaits(LlmEmitter):
    @property
    def waiting(self) -> bool:
        return False


@pytest.mark.parametrize("emitter_cls", [LlmEmitter, NeverWaits])
def test_the_loop_is_not_stalled_while_a_reply_is_on_its_way(emitter_cls):
    port = SlowLlm([faster_diff], delay=6)  # one request: the next is refused
    loop, emitter, dispatcher, store = build(
        port,
        budget=10,
        extra=[Waiting()],  # never exhausted: only a stall ends this run
        emitter_cls=emitter_cls,
        loop_kw={"idle_timeout_s": 5.0, "clock": Ticking()},
    )
    summary = loop.run()
    assert summary.stopped_reason == STOP_STALLED
    llm = [cid for cid, s in store.specs.items() if s.emitter == "llm"]
    if emitter_cls is LlmEmitter:
        # Six idle iterations past the timeout went by with the reply on its way; the run
        # stalled only once the child was evaluated and nothing was waiting any more.
        assert port.polls >= 6 and len(llm) == 1 and summary.evaluations == 2
        assert emitter.exhausted and not emitter.waiting
    else:
        assert llm == [] and summary.evaluations == 1  # what the waiting check prevents


def test_waiting_is_true_exactly_while_a_request_is_in_flight():
    port = SlowLlm([faster_diff] * 3, delay=2)
    emitter = LlmEmitter(
        port,
        TASK,
        [("m1", 1.0)],
        [],
        lambda: [Elite(1, SEED, {}, 0.47, 0, (0.0,))],
        operators=("mutate",),
        max_in_flight=1,
    )
    assert not emitter.waiting
    for _ in range(2):
        assert emitter.ask(1) == [] and emitter.waiting  # the reply is on its way
    # Back: the child is handed over, and then its place is free: the next request goes.
    assert len(emitter.ask(1)) == 1 and emitter.waiting
    assert port.polls == 3 and len(port.requests) == 2
    assert emitter.ask(1) == [] and emitter.waiting and len(port.requests) == 2
    while len(port.requests) < 3 or emitter.waiting:
        emitter.ask(1)
    emitter.ask(1)  # the script is over: refused
    assert port.refused and not emitter.waiting and emitter.exhausted


# --- the evaluator's messages -------------------------------------------------------------------


def test_an_outcome_carries_the_evaluators_messages_cut_to_twenty():
    result = fake_result({}, 1.0, verdict="INCORRECT")
    result["messages"] = [f"mismatch {i}" for i in range(30)] + [7]
    outcome = outcome_from_result(5, result)
    assert outcome.messages == tuple(f"mismatch {i}" for i in range(20))
    assert outcome_from_result(5, {**result, "messages": None}).messages == ()
    assert outcome_from_result(5, {**result, "messages": [3, "x"]}).messages == ("3", "x")


def test_a_repair_prompt_shows_what_the_evaluator_said():
    port = ScriptedLlm([faster_diff])
    dims = parse_dims(CPU_DIMS)
    emitter = LlmEmitter(port, TASK, [("m1", 1.0)], dims, list, operators=("repair",))
    result = fake_result({}, 1.0, verdict="RUNTIME_ERROR")
    result["messages"] = ["IndexError: index 4096 is out of bounds for axis 0"]
    spec = CandidateSpec("FAIL = 1\n" + SEED, emitter="llm")
    emitter.tell(spec, outcome_from_result(9, result), Decision(REJECTED, 0, (0.0, 0.0)))
    assert emitter.ask(1) == []
    prompt = port.requests[0].messages[-1]["content"]
    assert "failed with verdict RUNTIME_ERROR" in prompt
    assert "IndexError: index 4096 is out of bounds for axis 0" in prompt
    assert "FAIL = 1" in prompt

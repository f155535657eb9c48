"""LlmEmitter in the steady-state loop over a scripted model: children, failures, caps, state."""

from __future__ import annotations

import json
import re

from evolution.candidate import CandidateSpec
from evolution.emitters import LlmEmitter, SeedEmitter, archive_elites
from evolution.emitters.llm import DUPLICATE, Elite
from evolution.fakes import MemoryJournal, MemoryStore, ScriptedLlm
from evolution.llm.port import LlmPort, LlmRequest
from evolution.loop import STOP_BUDGET, STOP_EXHAUSTED
from tests.evolution.test_loop import make_loop, params_family

TASK = "import torch\n\nclass Model(torch.nn.Module):\n    pass\n"
SEED = "MS = 0.5\nTAG = 'seed'\n\n\nclass ModelNew:\n    pass\n"
_CODE = re.compile(r"```python\n(.*?)\n```", re.S)
_MS = re.compile(r"^MS = ([0-9.]+)$", re.M)


def base_of(request: LlmRequest) -> str:
    """The diff base shown in the prompt: the code block after the task's."""
    blocks = _CODE.findall(request.messages[-1]["content"])
    return blocks[1] if len(blocks) > 1 else SEED


def _factor(request: LlmRequest) -> float:
    """A speed-up that differs from request to request, as a model's replies do."""
    return 0.9 - 0.01 * int(request.request_id.rsplit("-", 1)[1])


def faster_diff(request: LlmRequest) -> str:
    """A SEARCH/REPLACE block making the parent faster (the fake evaluator reads MS)."""
    found = _MS.search(base_of(request))
    if found is None:  # another family's elite: rewrite it as the seed
        return "```python\n" + SEED.replace("0.5", f"{0.5 * _factor(request):.6f}") + "```\n"
    line = found.group(0)
    ms = float(line.split(" = ")[1]) * _factor(request)
    return f"Sure.\n<<<<<<< SEARCH\n{line}\n=======\nMS = {ms:.6f}\n>>>>>>> REPLACE\n"


def faster_rewrite(request: LlmRequest) -> str:
    """The parent rewritten whole, faster, in a fenced block."""
    base = base_of(request)
    ms = float(_MS.search(base).group(1)) * _factor(request)
    return "```python\n" + _MS.sub(f"MS = {ms:.6f}", base) + "\n```\n"


def loop_with(port: LlmPort, *, budget=12, operators=("mutate",), extra=(), **kw):
    store = MemoryStore()
    holder: dict[str, LlmEmitter] = {}

    def llm(archive):
        holder["llm"] = LlmEmitter(
            port,
            TASK,
            [("m1", 1.0), ("m2", 0.5)],
            archive.dims,
            archive_elites(archive, store.specs.get),
            {"gpu": "fake"},
            seed=3,
            max_in_flight=2,
            operators=operators,
            **kw,
        )
        return holder["llm"]

    seeds = SeedEmitter([CandidateSpec(SEED, label="seed")])
    loop, archive, dispatcher, store = make_loop(
        [seeds, llm, *extra], budget=budget, store=store, poll_timeout_s=0.001
    )
    return loop, holder["llm"], dispatcher, store


def test_llm_children_are_evaluated_with_their_label_and_parents():
    port = ScriptedLlm([faster_diff, faster_rewrite] * 10)
    loop, emitter, dispatcher, store = loop_with(port, budget=12)
    summary = loop.run()
    assert summary.stopped_reason == STOP_BUDGET and summary.evaluations == 12
    children = [store.specs[j.candidate_id] for j in dispatcher.submitted]
    llm = [s for s in children if s.emitter == "llm"]
    assert len(llm) == 11
    assert {s.label for s in llm} <= {"llm:m1/mutate", "llm:m2/mutate"}
    assert all(len(s.parent_ids) == 1 and s.parent_ids[0] in store.specs for s in llm)
    assert summary.best.speedup > 0.8 / 0.5  # children beat the seed
    assert not emitter.failures
    credited = [emitter.bandit.stats(a) for a in emitter.bandit.arms]
    assert sum(s.pulls for s in credited) >= 5 and sum(s.improvement for s in credited) > 0
    assert emitter.children and all(c.correct for c in emitter.children)


def test_malformed_and_unappliable_replies_are_counted_and_never_dispatched():
    bad = [
        "I would rather not write code today.",
        "<<<<<<< SEARCH\nNOT IN THE PARENT = 1\n=======\nBROKEN = 2\n>>>>>>> REPLACE\n",
        "<<<<<<< SEARCH\nMS = 0.5\n=======\nOPEN = 3\n",
    ]
    port = ScriptedLlm([*bad, faster_diff, faster_diff])
    journal = MemoryJournal()
    loop, emitter, dispatcher, store = loop_with(port, budget=10, journal=journal)
    summary = loop.run()
    assert summary.stopped_reason == STOP_EXHAUSTED
    assert emitter.failures == {"malformed": 2, "no_match": 1}
    failed = [(r, u) for r, u in journal.replies if u.reason]
    assert [u.reason for _, u in failed] == ["malformed", "no_match", "malformed"]
    assert all(r.prompt_tokens == 1000 and r.model in ("m1", "m2") for r, _ in failed)
    assert [u.candidate_key is not None for _, u in journal.replies].count(True) == 2
    assert len(journal.sent_requests) == len(journal.replies) + len(journal.unsent_ids)
    sources = {j.source for j in dispatcher.submitted}
    assert not any(w in s for s in sources for w in ("BROKEN", "OPEN"))
    assert len(sources) == 3  # the seed and its two children (a tie is re-measured)
    assert emitter.exhausted and port.refused >= 1


def test_a_child_equal_to_its_parent_or_an_earlier_child_is_not_dispatched_again():
    same_as_parent = "```python\n# a comment only\n" + SEED + "```\n"
    port = ScriptedLlm([same_as_parent, faster_diff])
    loop, emitter, dispatcher, store = loop_with(port, budget=10)
    loop.run()
    assert emitter.failures == {DUPLICATE: 1}
    keys = [store.specs[j.candidate_id].key for j in dispatcher.submitted]
    assert len(keys) == len(set(keys)) == 2

    twice = "<<<<<<< SEARCH\nMS = 0.5\n=======\nMS = 0.3\n>>>>>>> REPLACE\n"
    port = ScriptedLlm([twice, twice])
    loop, emitter, dispatcher, store = loop_with(port, budget=10)
    loop.run()
    assert emitter.failures == {DUPLICATE: 1}
    assert sum("MS = 0.3" in j.source for j in dispatcher.submitted) == 1


def test_a_port_that_refuses_exhausts_the_emitter_and_the_run_goes_on():
    port = ScriptedLlm([faster_diff] * 50, max_requests=3)
    loop, emitter, dispatcher, store = loop_with(port, budget=20, extra=[params_family()])
    summary = loop.run()
    assert summary.stopped_reason == STOP_BUDGET and summary.evaluations == 20
    assert len(port.requests) == 3 and port.refused >= 1
    assert emitter.exhausted and emitter.requests == 3
    ids = {j.candidate_id for j in dispatcher.submitted}
    emitters = [store.specs[cid].emitter for cid in ids]
    assert emitters.count("llm") == 3 and emitters.count("params") >= 10


def model(request: LlmRequest) -> str:
    """A scripted model: fixes what it is asked to repair, breaks every third kernel."""
    prompt = request.messages[-1]["content"]
    if "failed with verdict RUNTIME_ERROR" in prompt:
        return "<<<<<<< SEARCH\nFAIL = 1\n=======\nFIXED = 1\n>>>>>>> REPLACE\n"
    if "## Target cell" in prompt and "## Starting point" not in prompt:
        return faster_rewrite(request)  # nothing to diff against: a whole file
    if int(request.request_id.rsplit("-", 1)[1]) % 3 == 0:
        # Whatever the parent (the seed's family or another's elite): its file, broken.
        return "```python\n" + base_of(request).rstrip("\n") + "\nFAIL = 1\n```\n"
    return faster_diff(request)


def test_every_operator_is_used_and_state_round_trips_to_the_same_choices():
    operators = ("mutate", "crossover", "repair", "target")
    port = ScriptedLlm([model] * 60)
    loop, emitter, dispatcher, store = loop_with(
        port, budget=40, operators=operators, extra=[params_family()]
    )
    loop.run()
    llm = [(cid, s) for cid, s in store.specs.items() if s.emitter == "llm"]
    assert {s.label.split("/")[1] for _, s in llm} == set(operators)
    failed = {cid for cid, s in llm if "FAIL = 1" in s.source}
    repairs = [s for _, s in llm if s.label.endswith("/repair")]
    assert repairs and all(s.parent_ids[0] in failed and "FIXED" in s.source for s in repairs)
    assert all(len(s.parent_ids) == 2 for _, s in llm if s.label.endswith("/crossover"))

    state = json.loads(json.dumps(emitter.state()))
    _, twin, _, _ = loop_with(ScriptedLlm([]), operators=operators)
    twin.restore(state)
    assert twin.requests == emitter.requests and twin.failures == emitter.failures
    first = [emitter.bandit.choose() for _ in range(8)]
    assert first == [twin.bandit.choose() for _ in range(8)]
    assert emitter._rng.random() == twin._rng.random()


def test_an_emitter_with_nothing_it_can_do_is_exhausted_not_waiting():
    port = ScriptedLlm([faster_diff])
    emitter = LlmEmitter(port, TASK, [("m1", 1.0)], [], list, operators=("mutate",))
    assert emitter.ask(4) == [] and emitter.exhausted and emitter.requests == 0


class RefusesOnce(ScriptedLlm):
    """Refuses the second request once (as a cap holding the first one's worst case would)."""

    tried = False

    def submit(self, request):
        if len(self.requests) == 1 and not self.tried:
            self.tried = True
            self.refused += 1
            return False
        return super().submit(request)


def test_a_refusal_while_requests_are_in_flight_is_retried_once_a_reply_is_back():
    elite = Elite(1, SEED, {}, 0.47, 0, (0.0,))
    port = RefusesOnce([faster_diff] * 5)
    emitter = LlmEmitter(
        port, TASK, [("m1", 1.0)], [], lambda: [elite], operators=("mutate",), max_in_flight=2
    )
    assert emitter.ask(4) == [] and port.refused == 1 and not emitter.exhausted
    children = emitter.ask(4)
    assert len(children) == 1 and children[0].parent_ids == (1,)
    # The child taken, both places are free again: the retry and one more are sent.
    assert emitter.requests == 3 and port.in_flight == 2 and not emitter.exhausted

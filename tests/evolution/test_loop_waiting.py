"""SearchLoop while an emitter waits on the outside (a model's reply): where the loop waits."""

from __future__ import annotations

from evolution.emitters import Emitter, SeedEmitter
from evolution.fakes import FakeDispatcher
from evolution.loop import STOP_EXHAUSTED, WAITING_POLL_S
from tests.evolution.test_loop import make_loop, seed


class Later(Emitter):
    """Waiting for ``rounds`` of the loop, then proposes one candidate and is done.

    With ``can_wait`` its :meth:`wait` counts as a wait (the loop then polls without waiting);
    without, it is the default :meth:`Emitter.wait`, which cannot.
    """

    def __init__(self, rounds: int, can_wait: bool) -> None:
        self.rounds, self.can_wait = rounds, can_wait
        self.waits: list[float] = []
        self.done = False

    @property
    def name(self) -> str:
        return "later"

    @property
    def waiting(self) -> bool:
        return not self.done and self.rounds > 0

    @property
    def exhausted(self) -> bool:
        return self.done

    def wait(self, timeout_s: float) -> bool:
        if not self.can_wait:
            return super().wait(timeout_s)
        self.waits.append(timeout_s)
        return True

    def ask(self, n: int) -> list:
        if self.done:
            return []
        self.rounds -= 1
        if self.rounds > 0:
            return []
        self.done = True
        return [seed(0.3, tag="later")]


class Polls(FakeDispatcher):
    """Records the timeout of every poll, and how many jobs were in flight at it."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.timeouts: list[tuple[float, int]] = []

    def poll(self, timeout_s: float):
        self.timeouts.append((timeout_s, self.outstanding))
        return super().poll(timeout_s)


def _run(emitter: Later, seeds=()) -> tuple:
    loop, _, dispatcher, _ = make_loop([emitter], budget=5, poll_timeout_s=0.2)
    polls = Polls(dispatcher.evaluate, dispatcher.capacity)
    loop.dispatcher = polls
    if seeds:
        loop.emitters.insert(0, SeedEmitter(list(seeds)))
    summary = loop.run()
    return summary, polls


def test_with_nothing_in_flight_the_loop_waits_in_the_waiting_emitter():
    emitter = Later(rounds=4, can_wait=True)
    summary, polls = _run(emitter)
    assert summary.stopped_reason == STOP_EXHAUSTED and summary.evaluations == 1
    assert emitter.waits == [0.2, 0.2, 0.2]  # each round it had nothing, the full timeout
    idle = [t for t, in_flight in polls.timeouts if in_flight == 0][:3]
    assert idle == [0.0, 0.0, 0.0]  # the dispatcher is only looked at meanwhile


def test_an_emitter_that_cannot_wait_leaves_the_wait_to_the_dispatcher():
    emitter = Later(rounds=3, can_wait=False)
    summary, polls = _run(emitter)
    assert summary.evaluations == 1
    assert [t for t, _ in polls.timeouts][:2] == [0.2, 0.2]


def test_with_jobs_in_flight_the_dispatcher_is_polled_in_short_slices():
    emitter = Later(rounds=3, can_wait=True)
    summary, polls = _run(emitter, seeds=[seed(0.5, tag="a")])
    assert summary.evaluations == 2
    busy = [t for t, in_flight in polls.timeouts if in_flight > 0]
    assert busy and busy[0] == min(0.2, WAITING_POLL_S)

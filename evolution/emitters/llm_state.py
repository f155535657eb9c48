"""The LLM emitter's saved state: what :meth:`LlmState.state` writes and :meth:`LlmState.restore`
reads back, as the mixin of :class:`~evolution.emitters.llm.LlmEmitter` (whose attributes these
are; see its module notes on the journal).

The state is JSON-ready: the bandit, the strategy pool, the emitter's RNG, the request ids used
and requests sent, the failure counts, the credits owed to children not told yet, the repairs
waiting and done, the newest evaluated children (what scores the strategies), the rewrite
schedule, the failure streak and why the emitter gave up. :data:`STATE_VERSION` changes with
its shape; another version is refused with :class:`~evolution.llm.errors.StateError`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

from evolution.llm.bandit import Arm, Bandit
from evolution.llm.errors import StateError
from evolution.llm.strategies import ChildOutcome, StrategyPool

STATE_VERSION = 3
READABLE_VERSIONS = (2, 3)
"""Version 2 kept Mersenne Twister states (still read: see
:meth:`evolution.llm.draws.Draws.restore`)."""
MAX_STORED_CHILDREN = 256
"""Evaluated children kept (the newest) to score the strategies; the state is written with
every request and reply, so it stays small."""


@dataclasses.dataclass(frozen=True)
class Owed:
    """The credit a child's arm gets once its outcome is told: ``baseline`` is its parent's
    objective (None: no parent), ``tokens`` what its request spent."""

    arm: Arm
    baseline: float | None
    tokens: int


class LlmState:
    """:meth:`state` and :meth:`restore` of the LLM emitter (a mixin: the attributes are the
    emitter's)."""

    _children: dict[str, Owed]
    _rng: Any
    _ids: int
    _requests: int
    _streak: int
    _repairs: Any
    bandit: Bandit
    strategies: StrategyPool
    failures: collections.Counter[str]
    children: list[ChildOutcome]
    children_seen: int
    rewrites: Any
    gave_up: str | None

    def state(self) -> dict[str, Any]:
        """The emitter's choices as a JSON-ready dict (see :meth:`restore`)."""
        return {
            "version": STATE_VERSION,
            "bandit": self.bandit.to_json(),
            "strategies": self.strategies.to_json(),
            "rng": self._rng.to_json(),
            "ids": self._ids,
            "requests": self._requests,
            "failures": dict(self.failures),
            "owed": [[key, list(c.arm), c.baseline, c.tokens] for key, c in self._children.items()],
            "repairs": self._repairs.to_json(),
            "children": [
                [c.strategy_id, c.verdict, c.objective, list(c.messages)]
                for c in self.children[-MAX_STORED_CHILDREN:]
            ],
            "children_seen": self.children_seen,
            "next_rewrite": self.rewrites.next_at,
            "streak": self._streak,
            "gave_up": self.gave_up,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`; call before the loop re-tells the stored outcomes.

        Raises :class:`~evolution.llm.errors.StateError` for another version or a bad shape.
        """
        if state.get("version") not in READABLE_VERSIONS:
            got = state.get("version")
            raise StateError(f"LLM emitter state version {got!r} is not {STATE_VERSION}")
        try:
            self.bandit = Bandit.from_json(state["bandit"])
            self.strategies = StrategyPool.from_json(state["strategies"])
            self._rng.restore(state["rng"])
            self._ids = int(state["ids"])
            self._requests = int(state["requests"])
            self.failures = collections.Counter(state["failures"])
            self._children = {
                str(key): Owed(tuple(arm), baseline, int(tokens))  # type: ignore[arg-type]
                for key, arm, baseline, tokens in state["owed"]
            }
            self._repairs.restore(state["repairs"]["waiting"], state["repairs"]["done"])
            self.children = [
                ChildOutcome(str(sid), str(verdict), objective, tuple(messages))
                for sid, verdict, objective, messages in state["children"]
            ]
            self.children_seen = int(state["children_seen"])
            self.rewrites.next_at = int(state["next_rewrite"])
            self._streak = int(state["streak"])
            self.gave_up = state["gave_up"]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"LLM emitter state cannot be restored: {exc}") from exc

"""Seeds: the user's starting candidates, each proposed once."""

from __future__ import annotations

from collections.abc import Iterable

from evolution.candidate import CandidateSpec, Outcome
from evolution.emitters.base import Emitter
from evolution.grid import Decision


class SeedEmitter(Emitter):
    """Proposes each seed candidate once, in order.

    Parameters
    ----------
    specs:
        The seeds (``emitter="seed"``). Seeds with equal keys are proposed once.
    """

    def __init__(self, specs: Iterable[CandidateSpec]) -> None:
        self._queue: dict[str, CandidateSpec] = {}
        for spec in specs:
            self._queue.setdefault(spec.key, spec)
        self._all = set(self._queue)

    @property
    def name(self) -> str:
        """``seed``."""
        return "seed"

    def ask(self, n: int) -> list[CandidateSpec]:
        """The next ``n`` seeds not proposed yet."""
        out = []
        for key in list(self._queue)[: max(n, 0)]:
            out.append(self._queue.pop(key))
        return out

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:
        """Marks the seed as done (matters on resume)."""
        self._queue.pop(spec.key, None)

    def adopt(self, spec: CandidateSpec) -> None:
        """Marks the seed as proposed (resume)."""
        self._queue.pop(spec.key, None)

    def owns(self, spec: CandidateSpec) -> bool:
        """A ``seed`` spec whose key is one of these seeds."""
        return spec.emitter == "seed" and spec.key in self._all

    @property
    def exhausted(self) -> bool:
        """True once every seed was proposed."""
        return not self._queue

    @property
    def remaining(self) -> int:
        """Seeds not proposed yet."""
        return len(self._queue)

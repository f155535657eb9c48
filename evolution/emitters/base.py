"""The emitter extension point: something that proposes candidates and learns from outcomes."""

from __future__ import annotations

import abc

from evolution.candidate import CandidateSpec, Outcome
from evolution.grid import Decision


class Emitter(abc.ABC):
    """Base class of the search's candidate generators.

    The loop asks an emitter for candidates whenever dispatch capacity frees up (steady state,
    no generations) and tells it every outcome of a candidate it proposed, in arrival order.
    A new kind of emitter is one new module with one subclass.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Short name for logs and progress (``seed``, ``params:softmax``...)."""

    @abc.abstractmethod
    def ask(self, n: int) -> list[CandidateSpec]:
        """Up to ``n`` new candidates; fewer, or ``[]`` when it has nothing right now."""

    def tell(self, spec: CandidateSpec, outcome: Outcome, decision: Decision) -> None:  # noqa: B027
        """Learn the outcome of ``spec`` (a candidate this emitter proposed).

        Called once per evaluation in arrival order; a re-measured tie is told twice (the tie,
        then the merged outcome and its final decision). Also called on resume with the stored
        outcomes of earlier sessions. Default: ignore.
        """

    @property
    def exhausted(self) -> bool:
        """True when the emitter will never propose anything again."""
        return False

    @property
    def waiting(self) -> bool:
        """True while the emitter waits on something outside (a model's reply) that may give a
        candidate with nothing in flight: the loop does not call the search stalled meanwhile."""
        return False

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for what the emitter is ``waiting`` on (the loop calls it
        with nothing in flight); False when it cannot wait (the default: the loop waits in
        the dispatcher's poll instead)."""
        del timeout_s
        return False

    def owns(self, spec: CandidateSpec) -> bool:
        """Whether ``spec`` (e.g. read back from the store on resume) came from this emitter."""
        return spec.emitter == self.name

    def adopt(self, spec: CandidateSpec) -> None:  # noqa: B027
        """``spec`` was proposed by this emitter in an earlier session and is being evaluated
        again (resume): do not propose it again. Default: ignore."""


#: The emitters to tell one candidate's outcome, each with the spec it proposed (None: nobody
#: to tell, as for a re-measure the loop asked for itself).
Waiters = list[tuple[Emitter | None, CandidateSpec]]

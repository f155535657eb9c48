"""The verdicts an evaluation can end with (docs/architecture.md, "Contracts")."""

from __future__ import annotations

import enum


class Verdict(enum.StrEnum):
    """Outcome of evaluating one candidate. Only ``OK`` may enter an archive."""

    OK = "OK"
    STATIC_REJECT = "STATIC_REJECT"
    COMPILE_ERROR = "COMPILE_ERROR"
    LOAD_ERROR = "LOAD_ERROR"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    CUDA_FATAL = "CUDA_FATAL"
    TIMEOUT = "TIMEOUT"
    INCORRECT = "INCORRECT"
    INPUT_MUTATED = "INPUT_MUTATED"
    OOB_WRITE = "OOB_WRITE"
    NONDETERMINISTIC = "NONDETERMINISTIC"
    ASYNC_WORK = "ASYNC_WORK"
    BASELINE_WRAP = "BASELINE_WRAP"
    IMPOSSIBLE = "IMPOSSIBLE"
    QUARANTINE = "QUARANTINE"

    @property
    def correct(self) -> bool:
        """Whether a candidate with this verdict computed the right answer.

        ``ASYNC_WORK`` and ``QUARANTINE`` candidates were correct, but their timing is
        either rescored or not yet trusted; ``IMPOSSIBLE`` ones were correct but claimed a
        time below the physical floor.
        """
        return self in _CORRECT


_CORRECT = {Verdict.OK, Verdict.ASYNC_WORK, Verdict.QUARANTINE, Verdict.IMPOSSIBLE}

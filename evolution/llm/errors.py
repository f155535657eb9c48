"""The LLM core's typed errors: a reply that cannot become a candidate, a stored state that
cannot be read back, a strategy rewrite that is refused.

A leaf module: it imports only :mod:`kernelmap_errors`, so every module of the package (and the
emitter and adapters that use them) may import it.
"""

from __future__ import annotations

from kernelmap_errors import KernelmapError


class LLMError(KernelmapError):
    """Base class of the errors of :mod:`evolution.llm`."""


class EditError(LLMError):
    """A model reply that does not give a candidate source.

    Attributes
    ----------
    reason:
        The short machine reason (one of :data:`evolution.llm.edits.FAILURES`), for counts by
        reason in reports and for the stored proposal.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(LLMError, ValueError):
    """A stored bandit or strategy state that cannot be restored (wrong version or shape)."""


class StrategyRejected(LLMError):
    """A rewritten prompt strategy that fails validation; ``reason`` says which check."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

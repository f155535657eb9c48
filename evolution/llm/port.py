"""The port to a language model: what the LLM emitter submits, what comes back, who answers.

The search core never waits for a model: an adapter (``services/llm/``'s ``LlmPool``, or the
in-memory :class:`~evolution.fakes.ScriptedLlm` of the tests) takes an :class:`LlmRequest` with
:meth:`LlmPort.submit` (False: refused, a cap would be exceeded) and hands back finished
:class:`LlmReply` objects from :meth:`LlmPort.poll`, a success or a typed :class:`Failure`.
These definitions live here, in the core, so the adapter imports them and no import points up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class Failure(enum.StrEnum):
    """Why a request gave no usable text."""

    TIMEOUT = "timeout"  # no complete reply within timeout_s (or the endpoint's 408)
    RATE_LIMITED = "rate_limited"  # 429 after every retry
    SERVER_ERROR = "server_error"  # 5xx after every retry
    CONNECTION = "connection"  # the endpoint could not be reached
    BAD_RESPONSE = "bad_response"  # 200 but not a readable chat completion
    TOO_LARGE = "too_large"  # text longer than the adapter keeps (cut, kept for the record)
    REFUSED = "refused"  # the endpoint refused the request (4xx: too long a prompt, policy...)
    AUTH = "auth"  # 401/403: a wrong or missing key
    BUDGET = "budget"  # for callers: a submit was refused because a cap would be exceeded
    CANCELLED = "cancelled"  # the pool was closed before the request was sent


@dataclass(frozen=True)
class LlmRequest:
    """One chat completion to ask for.

    ``messages`` are OpenAI chat messages (``{"role": ..., "content": ...}``); ``request_id`` is
    the caller's, echoed in the reply. ``prompt_tokens_estimate`` overrides the adapter's
    generous estimate of the prompt's size (what the token and cost caps reserve).
    """

    request_id: str
    model: str
    messages: list[dict[str, str]]
    max_tokens: int = 4096
    temperature: float = 0.8
    prompt_tokens_estimate: int | None = None


@dataclass(frozen=True)
class LlmReply:
    """What came of one :class:`LlmRequest`.

    ``text`` is the model's answer when ``failure`` is None; with ``too_large`` it holds the cut
    text, for the record only; otherwise None. Tokens are as the endpoint reported them (0 when
    it did not); ``cost`` is what the adapter charged, None for a model without a price.
    """

    request_id: str
    model: str
    text: str | None
    failure: Failure | None = None
    message: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cost: float | None = None

    @property
    def ok(self) -> bool:
        """True when the reply holds the model's whole answer."""
        return self.failure is None

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@runtime_checkable
class LlmPort(Protocol):
    """An asynchronous chat-completion service (``LlmPool``, ``ScriptedLlm``)."""

    def submit(self, request: LlmRequest) -> bool:
        """Queue ``request``; False (nothing sent) when a cap would be exceeded."""
        ...

    def poll(self, timeout_s: float = 0) -> list[LlmReply]:
        """The replies finished since the last poll, waiting up to ``timeout_s`` (0: never)."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests submitted whose reply has not been polled yet."""
        ...

    def spent(self) -> Any:
        """What the service spent so far (requests, failures, tokens, cost), for reports."""
        ...

"""The port to a language model: what the LLM emitter submits, what comes back, who answers.

The search core never waits for a model: an adapter (``services/llm/``'s ``LlmPool``, or the
in-memory :class:`~evolution.fakes.ScriptedLlm` of the tests) takes an :class:`LlmRequest` with
:meth:`LlmPort.submit` (False: refused, a cap would be exceeded) and hands back finished
:class:`LlmReply` objects from :meth:`LlmPort.poll`, a success or a typed :class:`Failure`.
The emitter writes what it asks and what it gets to an :class:`LlmJournal` (the database's
``archive.llm_log.LlmLog``, or nothing in memory): each request before it is submitted, each
reply when it comes back, each time with the emitter's state, so a run killed at any moment
resumes with the state of its last recorded request or reply and never sends a request twice.
These definitions live here, in the core, so the adapter imports them and no import points up.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
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


#: Prompt tokens are not known before the endpoint counts them; reserving one token per two
#: UTF-8 bytes over-estimates every tokenizer on code and prose (they average three to four),
#: so the token and cost caps hold. The surplus is released when the reply settles.
BYTES_PER_TOKEN_ESTIMATE = 2.0


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A generous estimate of the tokens of a chat prompt (see :data:`BYTES_PER_TOKEN_ESTIMATE`)."""
    size = sum(len(str(m.get("content", "")).encode()) + 8 for m in messages)
    return math.ceil(size / BYTES_PER_TOKEN_ESTIMATE) + 8


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

    @property
    def reserved_tokens(self) -> int:
        """What the caps hold for this request until it settles: the prompt estimate plus
        ``max_tokens``."""
        estimate = self.prompt_tokens_estimate or estimate_prompt_tokens(self.messages)
        return estimate + self.max_tokens


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


#: The operator of a request asking a model to rewrite a prompt strategy (meta-prompt evolution).
REWRITE = "rewrite"


@dataclass(frozen=True)
class RequestMeta:
    """Why a request was sent: its operator (``mutate``, ``crossover``, ``repair``, ``target``
    or :data:`REWRITE`), the prompt strategy it used (for a rewrite: the strategy rewritten),
    the candidates its prompt was built on, and the tokens the caps held for it (prompt estimate
    plus ``max_tokens``: what a request lost in flight is counted as having spent)."""

    operator: str
    strategy: str
    parent_ids: tuple[int, ...] = ()
    reserved_tokens: int = 0


@dataclass(frozen=True)
class ReplyUse:
    """What became of a reply: the child's :attr:`CandidateSpec.key` (a candidate proposed to
    the loop), a new strategy's id (a rewrite taken), or a failure ``reason`` (edit failed,
    duplicate, request failed, rewrite rejected) with its ``message``."""

    candidate_key: str | None = None
    strategy_id: str | None = None
    reason: str | None = None
    message: str = ""


@runtime_checkable
class LlmJournal(Protocol):
    """Where the LLM emitter records its requests, replies and state (see the module notes).

    ``state`` is the emitter's JSON-ready state (``LlmEmitter.state()``) after the event.
    """

    def sent(
        self,
        request: LlmRequest,
        meta: RequestMeta,
        state: Mapping[str, Any],
        replies: Sequence[tuple[LlmReply, ReplyUse]] = (),
    ) -> None:
        """Record ``request`` (prompt included) just before it is submitted, with ``replies``
        (as :meth:`replied` would, before the request) in the same write."""
        ...

    def unsent(self, request_id: str, state: Mapping[str, Any]) -> None:
        """The port refused the request just recorded (a cap): it was never sent."""
        ...

    def replied(self, reply: LlmReply, use: ReplyUse, state: Mapping[str, Any]) -> None:
        """Record ``reply`` (text, tokens, latency, attempts, cost, failure) and its use."""
        ...

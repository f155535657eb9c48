"""llm: the adapter between LLM search and an OpenAI-compatible endpoint (vLLM, Ollama, OpenAI...).

The LLM emitter (in ``evolution/``, pure) asks this adapter for chat completions through an
asynchronous port: :meth:`LlmPool.submit` an :class:`LlmRequest`, later :meth:`LlmPool.poll` for
:class:`LlmReply` objects; the steady-state loop never waits on a model.

Modules
-------
``config``
    The ``KERNELMAP_LLM_*`` settings parsed and checked: :class:`LlmEndpoint`,
    :class:`ModelWeight` (``name[:weight],...``), :class:`Price` (per million tokens),
    :class:`LlmConfigError`.
``client``
    :class:`LlmPool`, the thread pool of requests through the official ``openai`` client, with
    timeouts, retries and at most ``concurrency`` in flight; :class:`LlmRequest`,
    :class:`LlmReply` and :class:`Failure`, the reasons a request gave no text.
``budget``
    :class:`Caps` and :class:`Budget`: hard caps on requests, tokens and cost, holding each
    request's worst case while it is in flight; :class:`Spent`, the counters.
``retry``
    Backoff with jitter, ``Retry-After`` (seconds or HTTP date), which statuses are retried.

The API key never leaves :class:`LlmPool`'s client: it is in no log, reply, repr or message.
Importing this package does not import ``openai`` (the pool does, when it is made).
"""

from services.llm.budget import Budget, Caps, Spent
from services.llm.client import MAX_REPLY_CHARS, Failure, LlmPool, LlmReply, LlmRequest
from services.llm.config import LlmConfigError, LlmEndpoint, ModelWeight, Price

__all__ = [
    "MAX_REPLY_CHARS",
    "Budget",
    "Caps",
    "Failure",
    "LlmConfigError",
    "LlmEndpoint",
    "LlmPool",
    "LlmReply",
    "LlmRequest",
    "ModelWeight",
    "Price",
    "Spent",
]

"""The HTTP adapter of LLM search: a pool of chat-completion requests to an OpenAI-compatible API.

The search loop is steady-state and must never wait for a model, so the port is asynchronous:
the emitter :meth:`LlmPool.submit`\\ s an :class:`LlmRequest` (refused, with False, when a cap
would be exceeded) and later :meth:`LlmPool.poll`\\ s for finished :class:`LlmReply`\\ s, each a
plain dataclass whether it succeeded or failed (``failure`` says why). Requests run on at most
``concurrency`` threads through the official ``openai`` client (``max_retries=0``: the retries,
their backoff and ``Retry-After`` are ours, see :mod:`services.llm.retry`); spending is held
against hard caps from submit to reply (:mod:`services.llm.budget`).

The API key is read only to build the client; it is in no log record, reply, repr or exception
message this module makes (messages from the endpoint are scrubbed of it too).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from evolution.llm.port import Failure, LlmReply, LlmRequest
from services.llm.budget import Budget, Caps, Reservation, Spent, estimate_prompt_tokens
from services.llm.config import LlmEndpoint
from services.llm.retry import BASE_S, RETRY_STATUSES, parse_retry_after, wait_before_retry

log = logging.getLogger(__name__)

#: The longest reply text kept; a longer one is cut here and failed as ``too_large``.
MAX_REPLY_CHARS = 256 * 1024
#: Bytes of body read at most (JSON escaping may take up to 6 bytes a character, plus framing).
_MAX_BODY_BYTES = 6 * MAX_REPLY_CHARS + 64 * 1024
#: Longest failure message kept (endpoints may echo whole prompts in their errors).
_MAX_MESSAGE = 500
#: The header that carries the request's id (the same on each retry of it).
REQUEST_HEADER = "X-Kernelmap-Request"
#: Stands in for the key of an endpoint that needs none (Ollama, llama.cpp).
_NO_KEY = "no-key"


@dataclass
class _Outcome:
    text: str | None = None
    failure: Failure | None = None
    message: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_after: float | None = None
    retry: bool = False


class LlmPool:
    """At most ``endpoint.concurrency`` chat completions in flight, under hard caps.

    Parameters
    ----------
    endpoint:
        Where to send requests, with what key, timeout, retries and concurrency.
    caps:
        The most the pool may spend; requests in flight count with their worst case.
    backoff_base_s:
        First retry wait (doubled each retry, jittered); tests make it short.
    rng:
        The jitter's random source.
    """

    def __init__(
        self,
        endpoint: LlmEndpoint,
        caps: Caps | None = None,
        *,
        backoff_base_s: float = BASE_S,
        rng: random.Random | None = None,
    ) -> None:
        import openai  # here, not at import: loading it costs a second every command would pay

        self._openai = openai
        self.endpoint = endpoint
        self._secret = endpoint.api_key.get_secret_value() if endpoint.api_key else ""
        self._client = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=self._secret or _NO_KEY,
            timeout=endpoint.timeout_s,
            max_retries=0,
        )
        self._budget = Budget(caps or Caps(), dict(endpoint.prices))
        self._backoff_base_s = backoff_base_s
        self._rng = rng or random.Random()
        # Daemon threads, not a ThreadPoolExecutor (whose threads the interpreter joins at exit):
        # a command that is done must not wait out a request nobody awaits any more.
        self._todo: queue.Queue[tuple[LlmRequest, Reservation] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._done: queue.Queue[LlmReply] = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"LlmPool(base_url={self.endpoint.base_url!r}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        """Requests submitted whose reply is not ready yet (queued or being sent)."""
        with self._lock:
            return self._in_flight

    def submit(self, request: LlmRequest) -> bool:
        """Queue ``request``; False (nothing sent) when a cap would be exceeded.

        Raises
        ------
        services.llm.config.LlmConfigError
            A cost cap is set and the request's model has no price.
        RuntimeError
            The pool is closed.
        """
        if self._closing.is_set():
            raise RuntimeError("the LLM pool is closed")
        estimate = request.prompt_tokens_estimate or estimate_prompt_tokens(request.messages)
        held = self._budget.reserve(request.model, estimate, request.max_tokens)
        if held is None:
            log.info("llm request %s refused: a cap would be exceeded", request.request_id)
            return False
        with self._lock:
            self._in_flight += 1
            if len(self._threads) < min(self.endpoint.concurrency, self._in_flight):
                thread = threading.Thread(
                    target=self._serve, name=f"llm-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        # Closed between the check above and here: the request comes back cancelled.
        self._todo.put((request, held))
        return True

    def _serve(self) -> None:
        """One worker thread: requests in order until the pool closes."""
        while True:
            item = self._todo.get()
            if item is None:
                return
            self._run(*item)

    def poll(self, timeout_s: float = 0.0) -> list[LlmReply]:
        """The replies finished since the last poll; waits up to ``timeout_s`` for the first one
        (0: never waits)."""
        replies: list[LlmReply] = []
        try:
            if timeout_s > 0:
                replies.append(self._done.get(timeout=timeout_s))
            while True:
                replies.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return replies

    def spent(self) -> Spent:
        """Requests, failures by reason, tokens and cost so far, and what is in flight."""
        return self._budget.spent()

    def close(self, wait: bool = True) -> None:
        """Stop: requests not yet sent come back ``cancelled``, retry waits end; with ``wait``,
        returns once the requests being sent have finished (at most ``timeout_s``)."""
        self._closing.set()
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._todo.put(None)  # after the queued requests, which come back cancelled
        if wait:
            for thread in threads:
                thread.join(self.endpoint.timeout_s + 5)
            self._client.close()

    def __enter__(self) -> LlmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, on a pool thread --------------------------------------------------------

    def _run(self, request: LlmRequest, held: Reservation) -> None:
        start = time.monotonic()
        attempts = 0
        out = _Outcome(failure=Failure.CANCELLED, message="the pool was closed")
        try:
            while not self._closing.is_set():
                attempts += 1
                out = self._attempt(request)
                if not out.retry or attempts > self.endpoint.retries:
                    break
                wait = wait_before_retry(attempts, out.retry_after, self._backoff_base_s, self._rng)
                if wait is None:
                    out.message += f" (Retry-After {out.retry_after:.0f} s is too long to wait)"
                    break
                log.info(
                    "llm request %s: %s, retry %d in %.2f s",
                    request.request_id,
                    out.failure,
                    attempts,
                    wait,
                )
                if self._closing.wait(wait):
                    break
        except Exception:  # a bug here must still give the caller its reply and free the cap
            log.exception("llm request %s failed unexpectedly", request.request_id)
            out = _Outcome(failure=Failure.BAD_RESPONSE, message="internal error (see the log)")
        charged = (out.prompt_tokens, out.completion_tokens)
        if out.failure in (Failure.TIMEOUT, Failure.TOO_LARGE) and not any(charged):
            # Usage unknown, yet the endpoint may have billed it: charge the worst case held.
            charged = (held.tokens - request.max_tokens, request.max_tokens)
        cost = self._budget.settle(
            held,
            model=request.model,
            prompt_tokens=charged[0],
            completion_tokens=charged[1],
            attempts=attempts,
            failure=out.failure.value if out.failure else None,
        )
        reply = LlmReply(
            request_id=request.request_id,
            model=request.model,
            text=out.text,
            failure=out.failure,
            message=self._scrub(out.message),
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            latency_s=time.monotonic() - start,
            attempts=attempts,
            cost=cost,
        )
        if reply.failure:
            log.warning(
                "llm request %s to %s failed (%s) after %d attempt(s): %s",
                request.request_id,
                request.model,
                reply.failure,
                attempts,
                reply.message,
            )
        with self._lock:
            self._in_flight -= 1
        self._done.put(reply)

    def _attempt(self, request: LlmRequest) -> _Outcome:
        """One HTTP exchange; never raises for anything the endpoint or the network does."""
        openai = self._openai
        try:
            with self._client.chat.completions.with_streaming_response.create(
                model=request.model,
                messages=request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                # The caller's id: an endpoint's logs (and the tests) can tell a retry of a
                # request from a new one.
                extra_headers={REQUEST_HEADER: request.request_id},
            ) as response:
                attempt_end = time.monotonic() + self.endpoint.timeout_s
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_BODY_BYTES:
                        return _too_large_body(len(body))
                    if time.monotonic() > attempt_end:  # a trickle defeats the read timeout
                        return _Outcome(
                            failure=Failure.TIMEOUT,
                            message=f"the reply took longer than {self.endpoint.timeout_s} s",
                        )
                return _parse_completion(bytes(body))
        except openai.APITimeoutError:
            # Not retried: the endpoint may still be generating (and billing) the first answer.
            return _Outcome(
                failure=Failure.TIMEOUT, message=f"no reply within {self.endpoint.timeout_s} s"
            )
        except openai.APIConnectionError as exc:
            return _Outcome(failure=Failure.CONNECTION, message=_first_line(exc), retry=True)
        except openai.APIStatusError as exc:
            return _status_outcome(exc.status_code, exc.response.headers, _first_line(exc))

    def _scrub(self, text: str) -> str:
        """``text`` without the key, cut to a readable length."""
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text[:_MAX_MESSAGE]


def _status_outcome(status: int, headers: Any, message: str) -> _Outcome:
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        failure = Failure.RATE_LIMITED
    elif status == 408:
        failure = Failure.TIMEOUT
    elif status >= 500:
        failure = Failure.SERVER_ERROR
    elif status in (401, 403):
        failure = Failure.AUTH
    else:
        failure = Failure.REFUSED
    return _Outcome(
        failure=failure,
        message=f"HTTP {status}: {message}",
        retry=status in RETRY_STATUSES,
        retry_after=retry_after if status in (429, 503) else None,
    )


def _parse_completion(body: bytes) -> _Outcome:
    """The text and usage of a chat completion's JSON body."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return _Outcome(
            failure=Failure.BAD_RESPONSE,
            message=f"not a chat completion ({type(exc).__name__}: {exc}); body starts"
            f" {body[:120]!r}",
        )
    usage = data.get("usage") or {}
    prompt, completion = (
        _tokens(usage.get("prompt_tokens")),
        _tokens(usage.get("completion_tokens")),
    )
    if len(text) > MAX_REPLY_CHARS:
        return _Outcome(
            text=text[:MAX_REPLY_CHARS],
            failure=Failure.TOO_LARGE,
            message=f"the reply is {len(text)} characters, over the {MAX_REPLY_CHARS} kept",
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
    return _Outcome(text=text, prompt_tokens=prompt, completion_tokens=completion)


def _too_large_body(size: int) -> _Outcome:
    # Usage is unknown (it ends the body): the pool charges the request's reservation.
    return _Outcome(
        failure=Failure.TOO_LARGE,
        message=f"the reply's body passed {size} bytes; stopped reading",
    )


def _tokens(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]

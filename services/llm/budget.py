"""Hard caps on what one pool may spend (requests, tokens, cost), counting requests in flight.

A request *reserves* its worst case when it is submitted (one request, its prompt estimate plus
``max_tokens``, their cost) and *settles* what it really used when its reply comes back; a submit
whose reservation would take the spent-plus-reserved total over a cap is refused. So the caps
hold however many requests are in flight (an endpoint that ignores ``max_tokens`` can overshoot
by what it overspent; every later submit is then refused). The counters are plain numbers
behind one lock, so the module needs no HTTP and is tested alone.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from evolution.llm.port import BYTES_PER_TOKEN_ESTIMATE as BYTES_PER_TOKEN_ESTIMATE
from evolution.llm.port import estimate_prompt_tokens as estimate_prompt_tokens
from services.llm.config import LlmConfigError, Price


@dataclass(frozen=True)
class Caps:
    """The most one pool may spend; None: no cap. ``max_tokens`` counts prompt plus completion."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None


@dataclass(frozen=True)
class Reservation:
    """What one request holds against the caps until it settles."""

    tokens: int
    cost: float


@dataclass(frozen=True)
class Spent:
    """What a pool has spent so far (settled replies) and holds in flight (reservations).

    Tokens are those the endpoint reported, except for requests whose usage is unknown but may
    have been billed (timeouts, oversized bodies): those count their whole reservation. ``cost``
    is None unless every model that used tokens has a price.
    """

    requests: int
    attempts: int
    failures: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    in_flight: int
    refused: int

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class Budget:
    """Thread-safe counters of one pool checked against its :class:`Caps`.

    Parameters
    ----------
    caps:
        The caps; a cost cap needs a price for every model that is asked (else
        :meth:`reserve` raises :class:`LlmConfigError`).
    prices:
        Price per model name; cost is reported only when every settled model had one.
    """

    def __init__(self, caps: Caps, prices: dict[str, Price] | None = None) -> None:
        self.caps = caps
        self._prices = dict(prices or {})
        self._lock = threading.Lock()
        self._requests = 0
        self._attempts = 0
        self._failures: Counter[str] = Counter()
        self._prompt = 0
        self._completion = 0
        self._cost = 0.0
        self._unpriced = False
        self._held_requests = 0
        self._held_tokens = 0
        self._held_cost = 0.0
        self._refused = 0

    def reserve(self, model: str, prompt_tokens: int, max_tokens: int) -> Reservation | None:
        """Hold the worst case of one request, or None (counted as refused) if a cap would be
        exceeded.

        Raises
        ------
        LlmConfigError
            A cost cap is set and ``model`` has no price.
        """
        price = self._prices.get(model)
        if self.caps.max_cost is not None and price is None:
            raise LlmConfigError(
                f"a cost cap is set but model {model!r} has no price; add it to"
                ' KERNELMAP_LLM_PRICES ({"model": [input_per_mtok, output_per_mtok]})'
            )
        tokens = prompt_tokens + max_tokens
        cost = price.cost(prompt_tokens, max_tokens) if price else 0.0
        caps = self.caps
        with self._lock:
            over = (
                (
                    caps.max_requests is not None
                    and self._requests + self._held_requests + 1 > caps.max_requests
                )
                or (
                    caps.max_tokens is not None
                    and self._prompt + self._completion + self._held_tokens + tokens
                    > caps.max_tokens
                )
                or (
                    caps.max_cost is not None
                    and self._cost + self._held_cost + cost > caps.max_cost
                )
            )
            if over:
                self._refused += 1
                return None
            self._held_requests += 1
            self._held_tokens += tokens
            self._held_cost += cost
            return Reservation(tokens, cost)

    def settle(
        self,
        held: Reservation,
        *,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        attempts: int,
        failure: str | None,
    ) -> float | None:
        """Release ``held`` and count what the request really used (a request of no attempt,
        cancelled before sending, is not counted); return its cost (None without a price)."""
        price = self._prices.get(model)
        cost = price.cost(prompt_tokens, completion_tokens) if price else None
        with self._lock:
            self._held_requests -= 1
            self._held_tokens -= held.tokens
            self._held_cost -= held.cost
            self._requests += 1 if attempts else 0  # one cancelled before sending cost nothing
            self._attempts += attempts
            self._prompt += prompt_tokens
            self._completion += completion_tokens
            if cost is None:
                self._unpriced = self._unpriced or bool(prompt_tokens or completion_tokens)
            else:
                self._cost += cost
            if failure is not None:
                self._failures[failure] += 1
        return cost

    def spent(self) -> Spent:
        """The counters now (a copy)."""
        with self._lock:
            return Spent(
                requests=self._requests,
                attempts=self._attempts,
                failures=dict(self._failures),
                prompt_tokens=self._prompt,
                completion_tokens=self._completion,
                cost=None if self._unpriced or not self._prices else self._cost,
                in_flight=self._held_requests,
                refused=self._refused,
            )

"""The pure parts of the adapter: retry waits and ``Retry-After``, and the caps' accounting."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.llm.budget import Budget, Caps, estimate_prompt_tokens
from services.llm.config import LlmConfigError, Price
from services.llm.retry import MAX_WAIT_S, backoff_s, parse_retry_after, wait_before_retry


def test_retry_after_in_seconds_or_as_an_http_date():
    now = datetime(2026, 12, 3, 11, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=10), usegmt=True), now) == 10
    assert parse_retry_after(format_datetime(now - timedelta(seconds=10), usegmt=True), now) == 0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_doubles_with_jitter_and_is_capped():
    rng = random.Random(0)
    for attempt in range(1, 12):
        wait = backoff_s(attempt, 0.5, rng)
        full = min(MAX_WAIT_S, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= wait < full


def test_retry_after_is_a_floor_and_too_long_a_wait_is_not_taken():
    assert wait_before_retry(1, 2.0, 0.01) >= 2.0
    assert wait_before_retry(1, MAX_WAIT_S + 1, 0.01) is None
    assert wait_before_retry(1, None, 0.01) < 0.01


def test_prompt_estimate_is_generous():
    messages = [{"role": "user", "content": "def f(x):\n    return x * 2\n" * 100}]
    # about 3.5 characters a token in practice; the estimate must be well above that
    assert estimate_prompt_tokens(messages) > len(messages[0]["content"]) / 3


def test_reservations_count_against_the_caps_until_settled():
    budget = Budget(Caps(max_requests=3, max_tokens=1000))
    first = budget.reserve("m", 100, 300)
    second = budget.reserve("m", 100, 300)
    assert first and second
    assert budget.reserve("m", 100, 300) is None  # 1200 tokens would be held
    assert budget.spent().in_flight == 2 and budget.spent().refused == 1
    budget.settle(
        first, model="m", prompt_tokens=50, completion_tokens=50, attempts=1, failure=None
    )
    third = budget.reserve("m", 100, 300)  # 100 spent + 400 held + 400 fits
    assert third
    assert budget.reserve("m", 1, 1) is None  # three requests: the request cap
    budget.settle(
        second, model="m", prompt_tokens=0, completion_tokens=0, attempts=2, failure="timeout"
    )
    spent = budget.spent()
    assert (spent.requests, spent.attempts, spent.tokens) == (2, 3, 100)
    assert spent.failures == {"timeout": 1} and spent.cost is None


def test_cost_cap_needs_prices_and_holds_the_worst_case():
    budget = Budget(Caps(max_cost=1.0), {"m": Price(1e6 / 1000, 0)})  # 1 per 1000 tokens
    with pytest.raises(LlmConfigError, match="no price"):
        budget.reserve("unpriced", 10, 10)
    held = budget.reserve("m", 600, 0)
    assert held and budget.reserve("m", 600, 0) is None
    cost = budget.settle(
        held, model="m", prompt_tokens=300, completion_tokens=0, attempts=1, failure=None
    )
    assert cost == pytest.approx(0.3) and budget.spent().cost == pytest.approx(0.3)

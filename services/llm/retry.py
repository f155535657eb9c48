"""When to try a request again and how long to wait first: backoff, jitter, ``Retry-After``.

Pure: status codes and header values in, seconds out (the random source is a parameter).
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime

#: Statuses worth another attempt: the endpoint said "later" (408, 429) or failed on its side.
#: Every other 4xx is our request's fault and would fail the same way again.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: First backoff and the most one wait may last; a ``Retry-After`` longer than
#: :data:`MAX_WAIT_S` is not waited for (the attempt fails as it is, the thread is freed).
BASE_S = 0.5
MAX_WAIT_S = 60.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date), or None
    when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_s(attempt: int, base_s: float = BASE_S, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (1, 2, ...): ``base_s * 2**(attempt-1)``, capped
    at :data:`MAX_WAIT_S`, scaled by a jitter in [0.5, 1) so that clients do not retry in step."""
    rng = rng or random
    return min(MAX_WAIT_S, base_s * 2 ** (attempt - 1)) * (0.5 + rng.random() / 2)


def wait_before_retry(
    attempt: int,
    retry_after: float | None,
    base_s: float = BASE_S,
    rng: random.Random | None = None,
) -> float | None:
    """The wait before retry number ``attempt``: at least ``retry_after`` when the endpoint gave
    one; None when it asks for longer than :data:`MAX_WAIT_S` (do not retry)."""
    if retry_after is not None and retry_after > MAX_WAIT_S:
        return None
    return max(backoff_s(attempt, base_s, rng), retry_after or 0.0)

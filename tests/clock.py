"""A wall clock the tests move by hand, for the run leases (their ``clock`` argument)."""

from __future__ import annotations

import datetime as dt

#: Where every moved clock starts.
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    """A clock the test moves: call it for the time, ``advance(seconds)`` to move it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

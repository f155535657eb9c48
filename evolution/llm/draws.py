"""A random generator whose whole state is one 64-bit integer, for states saved with each event.

The LLM emitter and its bandit write their state to the database with every request and reply
(so a resumed run continues exactly). :class:`random.Random`'s Mersenne Twister state is 625
integers, about 7 KB of JSON each, half of what the emitter wrote every time; :class:`Draws`
keeps SplitMix64's one word instead (Steele, Lea and Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014: a Weyl sequence through a 64-bit finaliser). It is a
:class:`random.Random` subclass that supplies ``random`` and ``getrandbits``, as the standard
library documents for other generators, so ``choice``, ``sample`` and ``randrange`` work as
usual. Not for anything secret.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

NAME = "splitmix64"
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


class Draws(random.Random):
    """SplitMix64 behind the :class:`random.Random` interface; the state is JSON-ready
    (:meth:`to_json`, :meth:`restore`)."""

    _word: int

    def seed(self, a: Any = None, version: int = 2) -> None:  # noqa: ARG002 (Random's signature)
        """Start from ``a``: an int is taken modulo 2**64, anything else by its text's sha256."""
        if isinstance(a, int):
            self._word = a & _MASK
        else:
            digest = hashlib.sha256(str(a).encode()).digest()
            self._word = int.from_bytes(digest[:8], "big")
        self.gauss_next = None

    def _next(self) -> int:
        self._word = z = (self._word + _GAMMA) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (self._next() >> 11) * (1.0 / (1 << 53))

    def getrandbits(self, k: int) -> int:
        """An int of ``k`` random bits."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        out, have = 0, 0
        while have < k:
            out = (out << 64) | self._next()
            have += 64
        return out >> (have - k)

    def getstate(self) -> tuple[str, int, float | None]:
        """``(NAME, word, gauss_next)``."""
        return NAME, self._word, self.gauss_next

    def setstate(self, state: Any) -> None:
        """Continue from :meth:`getstate`; ValueError for another generator's state."""
        name, word, gauss = state
        if name != NAME or not isinstance(word, int) or not 0 <= word <= _MASK:
            raise ValueError(f"not a {NAME} state: {str(state)[:80]}")
        self._word, self.gauss_next = word, gauss

    def to_json(self) -> list[Any]:
        """The state as ``[NAME, hex word, gauss_next]`` (hex: JSON readers differ on 64-bit
        integers)."""
        return [NAME, format(self._word, "016x"), self.gauss_next]

    def restore(self, data: Any) -> None:
        """Continue from :meth:`to_json`; ValueError or TypeError for a bad shape.

        A Mersenne Twister state as the states before this generator saved it (``[3, [625
        integers], gauss]``) is read too: the draws go on from a seed taken from it (the same
        every time, though not the stream the old generator would have drawn).
        """
        name, word, gauss = data
        if isinstance(word, list) and len(word) == 625:
            self.seed(repr((name, word)))
            return
        self.setstate((name, int(word, 16), None if gauss is None else float(gauss)))

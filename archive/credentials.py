"""Bearer secrets (API keys, remote worker tokens): making one, and keeping only its hash.

A secret is a prefix naming its kind (``km_`` an API key, ``kmw_`` a worker token) followed by
43 URL-safe characters (``secrets.token_urlsafe(32)``, 256 bits). Only the hex sha256 of the
whole secret, prefix included, is stored, with its first :data:`SHOWN_PREFIX_LEN` characters in
clear to tell secrets apart in listings, so a leaked database reveals no usable secret. A
presented secret is checked with :func:`well_formed` before it is hashed, looked up by its hash
(an index lookup, no secret-dependent comparison loop), and the found hash compared again with
:func:`same_hash` (constant time).

A leaf module: the archive (worker tokens) and the service (API keys) both use it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TypeGuard

#: Random bytes in a secret (43 URL-safe characters after its prefix).
SECRET_BYTES = 32
#: Leading characters of a secret stored in clear, to tell secrets apart in listings.
SHOWN_PREFIX_LEN = 8
#: Longer presented secrets are refused before hashing (a secret is 46 or 47 characters).
MAX_SECRET_LEN = 128


def new_secret(prefix: str) -> str:
    """A fresh random secret: ``prefix`` followed by 43 URL-safe characters."""
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The hex sha256 of the whole secret (UTF-8), as stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    """The leading characters of ``secret`` that are stored (and shown) in clear."""
    return secret[:SHOWN_PREFIX_LEN]


def well_formed(secret: str | None, prefix: str) -> TypeGuard[str]:
    """Whether a presented ``secret`` is worth hashing: non-empty, of its kind (``prefix``), and
    at most :data:`MAX_SECRET_LEN` characters long."""
    return bool(secret) and secret.startswith(prefix) and len(secret) <= MAX_SECRET_LEN


def same_hash(stored: str, digest: str) -> bool:
    """Whether a stored hash and a presented secret's hash are equal (in constant time)."""
    return hmac.compare_digest(stored, digest)

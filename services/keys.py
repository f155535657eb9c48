"""API keys: making them, checking them, revoking them.

A key is ``km_`` followed by 43 URL-safe characters (256 bits), made, hashed and checked by
:mod:`archive.credentials` (the one scheme of API keys and worker tokens): only its sha256 is
stored, so a leaked database reveals no usable key. Like :mod:`archive.repository`, these
functions flush but never commit: the caller owns the transaction.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from archive import credentials, repository
from archive.models import USER_ROLES, ApiKey, User
from kernelmap_errors import KernelmapError

KEY_PREFIX = "km_"
#: How many leading characters of a key are stored in clear, to tell keys apart in listings.
SHOWN_PREFIX_LEN = credentials.SHOWN_PREFIX_LEN
#: Longer bearer tokens are refused before hashing (a key is 46 characters).
MAX_KEY_LEN = credentials.MAX_SECRET_LEN


class KeyRequestError(KernelmapError):
    """A key cannot be made as asked (unknown role, empty name)."""


def hash_key(key: str) -> str:
    """The hex sha256 of a key, as stored (:func:`archive.credentials.hash_secret`)."""
    return credentials.hash_secret(key)


def new_key() -> str:
    """A fresh random key, ``km_<43 url-safe characters>``."""
    return credentials.new_secret(KEY_PREFIX)


def create_key(session: Session, role: str, name: str) -> tuple[User, str]:
    """Make a new user with ``role`` and one key for them.

    Parameters
    ----------
    role:
        ``admin``, ``user`` or ``worker`` (see :data:`archive.models.USER_ROLES`).
    name:
        Names both the user and the key (who or what the key is for).

    Returns
    -------
    (User, str)
        The new user and the plaintext key: the only time it exists outside the client.
    """
    if role not in USER_ROLES:
        raise KeyRequestError(f"unknown role {role!r}: use one of {', '.join(USER_ROLES)}")
    name = name.strip()
    if not name:
        raise KeyRequestError("a key needs a name saying who or what it is for")
    user = repository.add_user(session, name, role)
    key = new_key()
    repository.add_api_key(session, user.id, credentials.shown_prefix(key), hash_key(key), name)
    return user, key


def valid_key(session: Session, key: str | None) -> ApiKey | None:
    """The stored row of a key; None for a missing, malformed, unknown or revoked key."""
    if not credentials.well_formed(key, KEY_PREFIX):
        return None
    digest = hash_key(key)
    row = repository.api_key_by_hash(session, digest)
    if row is None or row.revoked_at is not None:
        return None
    if not credentials.same_hash(row.key_hash, digest):
        return None
    return row


def authenticate(session: Session, key: str | None) -> User | None:
    """The user a key belongs to; None for a missing, malformed, unknown or revoked key."""
    row = valid_key(session, key)
    return None if row is None else session.get(User, row.user_id)


def ensure_admin(session: Session) -> str | None:
    """On a database without users, make the first admin and return their key; else None.

    ``kernelmap serve`` prints that key once. Two processes starting on the same empty
    database at once could each make an admin; both keys are valid.
    """
    if repository.count_users(session) > 0:
        return None
    _, key = create_key(session, "admin", "admin")
    return key


def revoke(session: Session, key_id: int) -> ApiKey:
    """Revoke key ``key_id`` (raises :class:`~archive.errors.NotFoundError` if unknown)."""
    return repository.revoke_api_key(session, key_id)

"""Users and their API keys: plain query functions taking a :class:`~sqlalchemy.orm.Session`.

A user has a role (one of :data:`~archive.models.USER_ROLES`) and any number of keys; a key is
stored by its hash (made by :mod:`archive.credentials`; the key itself is never stored). Like
:mod:`archive.repository`, which re-exports these functions, they flush but never commit.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive.errors import NotFoundError
from archive.models import USER_ROLES, ApiKey, User, utcnow


def add_user(session: Session, name: str, role: str) -> User:
    """Create a user with ``role`` (one of :data:`~archive.models.USER_ROLES`)."""
    if role not in USER_ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {USER_ROLES}")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, user_id: int) -> User:
    """The user ``user_id``; raises :class:`~archive.errors.NotFoundError`."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError("user", user_id)
    return user


def count_users(session: Session) -> int:
    """How many users there are (0 on a fresh database)."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(User)) or 0)


def add_api_key(session: Session, user_id: int, prefix: str, key_hash: str, name: str) -> ApiKey:
    """Store a key of ``user_id`` by its hash (the caller hashes; the key is never stored)."""
    key = ApiKey(user_id=user_id, prefix=prefix, key_hash=key_hash, name=name)
    session.add(key)
    session.flush()
    return key


def api_key_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    """The key with this sha256, revoked or not."""
    return session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == key_hash)).first()


def get_api_key(session: Session, key_id: int) -> ApiKey:
    """The key ``key_id``; raises :class:`~archive.errors.NotFoundError`."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError("API key", key_id, "GET /api/v1/keys lists the keys")
    return key


def list_api_keys(session: Session, limit: int = 50, offset: int = 0) -> list[tuple[ApiKey, User]]:
    """Keys with their users, oldest first."""
    stmt = (
        sa.select(ApiKey, User)
        .join(User, User.id == ApiKey.user_id)
        .order_by(ApiKey.id)
        .limit(limit)
        .offset(offset)
    )
    return [(k, u) for k, u in session.execute(stmt)]


def count_api_keys(session: Session) -> int:
    """How many keys :func:`list_api_keys` pages through."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) or 0)


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    """Mark the key revoked (it stops authenticating); revoking again keeps the first time."""
    key = get_api_key(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key

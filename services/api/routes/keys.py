"""``/keys`` (admin): make API keys (shown once), list them by prefix, revoke them."""

from __future__ import annotations

from fastapi import APIRouter

from archive import repository
from archive.models import ApiKey, User
from services import keys
from services.api.deps import AdminUser, PageDep, PathId, SessionDep
from services.api.schemas import KeyCreate, KeyCreated, KeyOut, Page

router = APIRouter(prefix="/keys", tags=["keys"])


def _out(key: ApiKey, user: User) -> dict:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "role": user.role,
        "user_id": user.id,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, _admin: AdminUser) -> KeyCreated:
    """Make a new user with ``role`` and a key for them; the key is shown only here."""
    user, plaintext = keys.create_key(session, body.role, body.name)
    session.commit()
    row = repository.api_key_by_hash(session, keys.hash_key(plaintext))
    assert row is not None
    return KeyCreated(key=plaintext, **_out(row, user))


@router.get("", response_model=Page[KeyOut])
def list_keys(session: SessionDep, _admin: AdminUser, page: PageDep) -> Page[KeyOut]:
    """Every key, oldest first, by prefix (keys and hashes are never shown)."""
    rows = repository.list_api_keys(session, limit=page.limit, offset=page.offset)
    return Page[KeyOut](
        items=[KeyOut(**_out(k, u)) for k, u in rows],
        total=repository.count_api_keys(session),
        limit=page.limit,
        offset=page.offset,
    )


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: PathId, session: SessionDep, _admin: AdminUser) -> KeyOut:
    """Revoke a key: it stops authenticating at once."""
    key = keys.revoke(session, key_id)
    session.commit()
    return KeyOut(**_out(key, repository.get_user(session, key.user_id)))

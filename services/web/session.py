"""Signed session cookies and CSRF tokens of the dashboard (pure: no request, no database).

A session is ``base64url(json) + "." + base64url(hmac_sha256(secret, json))``: the key's id,
its user's id, an expiry (unix seconds) and the CSRF token of every form of that session. The
cookie carries no key and no secret; the key is looked up again on every request, so revoking
it ends its sessions at once. A login form's token is bound the same way to a random nonce kept
in a short-lived cookie (there is no session yet to bind it to).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

#: The session cookie's name.
SESSION_COOKIE = "km_session"
#: The login form's nonce cookie.
LOGIN_COOKIE = "km_login"
#: How long a login form stays valid (seconds).
LOGIN_TTL_S = 15 * 60
#: Where the generated secret is kept in the data directory.
SECRET_FILE = "session.key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclasses.dataclass(frozen=True)
class Session:
    """A signed-in session: the API key it was opened with, its user, expiry, CSRF token."""

    key_id: int
    user_id: int
    expires_at: int
    csrf: str


class SessionCodec:
    """Signs and checks sessions and login tokens with one secret."""

    def __init__(self, secret: bytes, ttl_s: int, clock=time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = int(ttl_s)
        self._clock = clock

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def issue(self, key_id: int, user_id: int) -> tuple[str, Session]:
        """A new session's cookie value and the session."""
        session = Session(
            key_id=int(key_id),
            user_id=int(user_id),
            expires_at=int(self._clock()) + self.ttl_s,
            csrf=secrets.token_urlsafe(32),
        )
        payload = json.dumps(dataclasses.asdict(session), separators=(",", ":")).encode()
        return f"{_b64(payload)}.{self._sign(payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie value; None when absent, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 4096:
            return None
        body, sig = cookie.split(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(sig, self._sign(payload)):
                return None
            fields = json.loads(payload)
            session = Session(
                key_id=int(fields["key_id"]),
                user_id=int(fields["user_id"]),
                expires_at=int(fields["expires_at"]),
                csrf=str(fields["csrf"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > self._clock() else None

    def login_token(self, nonce: str) -> str:
        """The CSRF token of a login form whose nonce cookie is ``nonce``."""
        return self._sign(f"login:{nonce}:{int(self._clock()) // LOGIN_TTL_S}".encode())

    def login_token_ok(self, nonce: str | None, token: str | None) -> bool:
        """Whether a login form's token matches its nonce (this or the previous period)."""
        if not nonce or not token:
            return False
        period = int(self._clock()) // LOGIN_TTL_S
        return any(
            hmac.compare_digest(token, self._sign(f"login:{nonce}:{p}".encode()))
            for p in (period, period - 1)
        )


def csrf_ok(session: Session, token: str | None) -> bool:
    """Whether a form's CSRF token is its session's."""
    return bool(token) and hmac.compare_digest(session.csrf, token)


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The signing secret: the configured one, else the data directory's (made once, 0600)."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this service made it first
        time.sleep(0.1)
        return path.read_bytes().strip()
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return secret

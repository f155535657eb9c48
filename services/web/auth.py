"""Signing in to the dashboard with an API key, the session every page needs, CSRF checks.

``GET /login`` shows the form; ``POST /login`` (form field ``api_key``) opens a session (a
signed cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` on HTTPS, expiring after
``Settings.session_ttl_s``) and redirects to ``/runs`` (or the page that sent the user here);
``POST /logout`` ends it. Worker keys cannot sign in. :data:`WebUser` is the signed-in admin or
user of a page: without a valid session the page redirects to ``/login``. Every state-changing
form carries the session's CSRF token (:func:`check_csrf`).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from archive.models import ApiKey, User
from services import keys
from services.api.deps import ConfigDep
from services.web.session import (
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    SESSION_COOKIE,
    Session,
    SessionCodec,
    csrf_ok,
    load_secret,
)
from services.web.templating import render

router = APIRouter(include_in_schema=False)

HUMAN_ROLES = ("admin", "user")


class LoginRequired(Exception):
    """A page was asked for without a valid session: redirect to ``/login``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfRefused(Exception):
    """A state-changing form came without its session's CSRF token (403)."""


@dataclasses.dataclass(frozen=True)
class WebContext:
    """The signed-in user of a request and their session (``request.state.web``)."""

    user: User
    session: Session


def codec(request: Request) -> SessionCodec:
    """The app's :class:`~services.web.session.SessionCodec`, made at its first use (the
    generated secret, if any, is written then, not when the app is built)."""
    state = request.app.state
    if state.web_codec is None:
        settings = state.api.settings
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        state.web_codec = SessionCodec(
            load_secret(secret, settings.data_dir), settings.session_ttl_s
        )
    return state.web_codec


def _secure(request: Request, setting: str) -> bool:
    return setting == "always" or (setting == "auto" and request.url.scheme == "https")


def safe_next(path: str | None) -> str:
    """A redirect target that stays on this site (a local absolute path), else ``/runs``."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/runs"
    return path


def web_user(request: Request, config: ConfigDep) -> User:
    """The signed-in admin or user; :class:`LoginRequired` without a valid session.

    The session's key is looked up on every request: a revoked key's sessions end at once.
    The user comes back detached, its fields loaded.
    """
    session = codec(request).read(request.cookies.get(SESSION_COOKIE))
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if session is None:
        raise LoginRequired(nxt)
    with config.session_factory() as db:
        key = db.get(ApiKey, session.key_id)
        user = db.get(User, session.user_id)
        if (
            key is None
            or key.revoked_at is not None
            or user is None
            or key.user_id != user.id
            or user.role not in HUMAN_ROLES
        ):
            raise LoginRequired(nxt)
        db.expunge(user)
    request.state.web = WebContext(user=user, session=session)
    return user


WebUser = Annotated[User, Depends(web_user)]


def check_csrf(request: Request, token: str | None) -> None:
    """Refuse (403) a form without the session's CSRF token; call in every POST page."""
    web: WebContext | None = getattr(request.state, "web", None)
    if web is None or not csrf_ok(web.session, token):
        raise CsrfRefused()


def login_redirect(exc: LoginRequired) -> RedirectResponse:
    """Where a page without a session sends the browser."""
    return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)


def _login_page(request: Request, next_path: str, error: str | None, status: int) -> Response:
    # One nonce per browser (kept while valid): a second sign-in tab does not void the first.
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status_code=status,
        title="Sign in",
        next_path=safe_next(next_path),
        login_token=codec(request).login_token(nonce),
        error=error,
    )
    config = request.app.state.api
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_TTL_S * 2,
        httponly=True,
        samesite="strict",
        secure=_secure(request, config.settings.secure_cookies),
        path="/login",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    """The sign-in form."""
    return _login_page(request, next or "/runs", None, 200)


@router.post("/login")
def login(
    request: Request,
    config: ConfigDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    login_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/runs",
) -> Response:
    """Open a session for an admin or user key; the form again with the reason otherwise."""
    if not codec(request).login_token_ok(request.cookies.get(LOGIN_COOKIE), login_token):
        return _login_page(
            request, next, "the sign-in form expired or came from elsewhere: try again", 403
        )
    key = api_key.strip()
    with config.session_factory() as db:
        row = keys.valid_key(db, key)
        user = None if row is None else db.get(User, row.user_id)
        if row is None or user is None:
            return _login_page(request, next, "unknown or revoked API key", 401)
        if user.role not in HUMAN_ROLES:
            return _login_page(
                request, next, "a worker key cannot sign in: use an admin or user key", 403
            )
        cookie, _ = codec(request).issue(row.id, user.id)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=config.settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=_secure(request, config.settings.secure_cookies),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(
    request: Request, user: WebUser, csrf_token: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    """End the session."""
    check_csrf(request, csrf_token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def home(user: WebUser) -> Response:
    """The dashboard's front page is the runs list."""
    return RedirectResponse("/runs", status_code=303)

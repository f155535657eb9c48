"""The dashboard's response headers: a strict Content-Security-Policy with a per-request nonce.

Every page response (everything outside the API, its docs and the metrics) gets
``default-src 'none'``: scripts and styles only from this origin (and an inline script only
with the request's nonce), images from this origin or ``data:``, requests only back to this
origin, forms only posting here, never framed (``frame-ancestors 'none'``). The nonce is put in
``request.state.csp_nonce`` for the templates.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths that keep their own headers (JSON API, Swagger UI and ReDoc's inline scripts, metrics).
EXEMPT_PREFIXES = ("/api/", "/docs", "/redoc", "/static/docs", "/metrics", "/healthz")


def policy(nonce: str) -> str:
    """The Content-Security-Policy of a page rendered with ``nonce``."""
    return (
        "default-src 'none'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self'; "
        "img-src 'self' data:; "
        "connect-src 'self'; "
        "form-action 'self'; "
        "base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class PageHeaders:
    """ASGI middleware adding the CSP and the other browser-facing headers to pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        static = scope["path"].startswith("/static/")
        scope.setdefault("state", {})["csp_nonce"] = nonce

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", policy(nonce).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not static:  # pages show private data: never kept by a shared cache
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

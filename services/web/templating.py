"""Rendering the dashboard's pages: one Jinja2 environment, autoescaping everything.

Every value a template shows is escaped (candidate source, task and run names, messages are
untrusted text); markup built in Python (charts, highlighted source, diffs) is built from
escaped parts and passed as :class:`markupsafe.Markup`. Each page gets the request's CSP nonce
(``nonce``), the signed-in user (``user``) and the session's CSRF token (``csrf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

TEMPLATES = Path(__file__).parent / "templates"
#: Where the dashboard's own scripts and styles are served.
STATIC_URL = "/static/web"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["q"] = lambda v: quote(str(v), safe="")  # a value inside a URL


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


_env.filters["ratio"] = _ratio
_env.filters["pct"] = _pct


def environment() -> jinja2.Environment:
    """The environment (for the HTML report, which renders the same templates to a file)."""
    return _env


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered for ``request`` with ``context``."""
    web = getattr(request.state, "web", None)
    page = _env.get_template(template).render(
        nonce=getattr(request.state, "csp_nonce", ""),
        user=getattr(web, "user", None),
        csrf=getattr(getattr(web, "session", None), "csrf", ""),
        static=STATIC_URL,
        **context,
    )
    return HTMLResponse(page, status_code=status_code)

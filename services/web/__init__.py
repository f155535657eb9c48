"""services.web: the dashboard, served by the API's FastAPI app at ``/`` (the API stays under
``/api/v1``): sign-in with an API key, the runs, their maps, candidates, lineage, the fleet.

Server-rendered pages (Jinja2, autoescaped), a little plain JavaScript of our own for live
updates, SVG charts made on the server; nothing loaded from another origin.

Modules
-------
``session``
    Signed session cookies and CSRF tokens (pure).
``security``
    The Content-Security-Policy (with a per-request nonce) and the other page headers.
``templating``
    The Jinja2 environment and ``render`` (nonce, user and CSRF token in every page).
``auth``
    ``/login``, ``/logout``, the ``WebUser`` dependency (no session: redirect to ``/login``),
    CSRF checks.
``charts``
    The SVG heatmap and curves, shared with the ``kernelmap run`` HTML report.
``highlight``
    Source highlighted by Pygments (CSS classes, no inline styles) and line diffs (difflib).
``timing_view``
    An evaluation's timing series and the geometry of its raw-samples plot.
``pages``
    One router per page family (runs, candidates, workers), mounted by :func:`install`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from services.web.auth import CsrfRefused, LoginRequired, login_redirect
from services.web.security import PageHeaders
from services.web.templating import STATIC_URL, render

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app`` (built by :func:`services.api.app.create_app`)."""
    from services.web import auth
    from services.web.pages import page_router

    app.state.web_codec = None  # made at the first page: building an app writes no file
    app.include_router(auth.router)
    app.include_router(page_router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="web-static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired):
        return login_redirect(exc)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused):
        return render(
            request,
            "error.html",
            status_code=403,
            title="Form refused",
            message="this form has no valid CSRF token (it expired or came from another"
            " site): reload the page and try again",
        )

    app.add_middleware(PageHeaders)

"""What the dashboard's pages share: the page for an id the user may not see (404, like the
API: another user's id looks exactly like an unknown one)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from services.web.templating import render


def not_found(request: Request, what: str, ident: int) -> HTMLResponse:
    """The 404 page for ``what`` ``ident`` (unknown, or not the user's)."""
    return render(
        request,
        "error.html",
        status_code=404,
        title="Not found",
        message=f"no {what} with id {ident} among yours",
    )

"""``/healthz``: liveness for load balancers and container health checks (no key needed)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import ConfigDep

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    responses={503: {"description": "The database does not answer"}},
)
def healthz(config: ConfigDep) -> JSONResponse:
    """200 ``{"status": "ok"}`` when the database answers, else 503 with what failed."""
    try:
        with config.session_factory() as session:
            session.execute(sa.text("SELECT 1"))
    except Exception as e:  # the check's whole point: report, never raise
        body = {"status": "unavailable", "detail": f"database: {type(e).__name__}"}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})

"""The FastAPI application: every route under ``/api/v1``, OpenAPI at ``/docs``."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import errors
from services.api.deps import MAX_TASK_BYTES, VALIDATE_TIMEOUT_S, ApiConfig
from services.api.routes import api_router, health
from services.api.routes.metrics import router as metrics_router
from services.config import Settings

API_PREFIX = "/api/v1"
#: Room for the multipart framing and the ``name`` field around the file itself.
MULTIPART_SLACK_BYTES = 64 * 1024


class UploadLimit:
    """Refuse a task upload whose declared size is over the limit, before reading its body.

    The route checks the bytes it actually reads as well (a chunked upload declares no size).
    """

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes + MULTIPART_SLACK_BYTES:
                detail = f"the upload is over {self.max_bytes} bytes"
                response = JSONResponse({"detail": detail, "field": "file"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    session_factory: sessionmaker[Session],
    settings: Settings,
    start_run: Callable[[int], None] | None = None,
    *,
    max_task_bytes: int = MAX_TASK_BYTES,
    validate_timeout_s: float = VALIDATE_TIMEOUT_S,
) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    session_factory:
        Sessions on a database at the code's schema head (see :func:`archive.ensure_schema`).
    settings:
        The service's settings.
    start_run:
        Called with a new run's id once it is stored (the controller's hand-off); None leaves
        runs ``queued``.
    max_task_bytes:
        Largest task file accepted (413 over it).
    validate_timeout_s:
        Bound on validating an uploaded task in its child process.
    """
    app = FastAPI(
        title="kernelmap",
        summary="MAP-Elites search for fast GPU kernels",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.api = ApiConfig(
        session_factory=session_factory,
        settings=settings,
        start_run=start_run,
        max_task_bytes=max_task_bytes,
        validate_timeout_s=validate_timeout_s,
    )
    errors.install(app)
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics_router)  # /metrics, where Prometheus looks by default
    app.add_middleware(UploadLimit, path=f"{API_PREFIX}/tasks", max_bytes=max_task_bytes)
    return app

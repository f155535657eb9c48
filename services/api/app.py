"""The FastAPI application: every route under ``/api/v1``, its schema ``/api/v1/openapi.json``.

At the root: ``/healthz``, ``/metrics``, and the interactive documentation (``/docs``, Swagger
UI; ``/redoc``, ReDoc) whose scripts and styles are served from the package
(``services/api/static/``, mounted at :data:`DOCS_ASSETS`), so they work without internet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from services import web
from services.api import errors
from services.api.deps import MAX_TASK_BYTES, VALIDATE_TIMEOUT_S, ApiConfig
from services.api.routes import api_router, health
from services.api.routes.metrics import router as metrics_router
from services.config import Settings

API_PREFIX = "/api/v1"
#: Where the documentation pages' own scripts and styles are served (from :data:`STATIC_DIR`).
DOCS_ASSETS = "/static/docs"
#: Swagger UI (npm ``swagger-ui-dist``) and ReDoc (npm ``redoc``), vendored with their licences;
#: versions and how to update them in ``README.md`` there.
STATIC_DIR = Path(__file__).parent / "static"
#: Room for the multipart framing and the ``name`` field around the file itself.
MULTIPART_SLACK_BYTES = 64 * 1024


class UploadLimit:
    """Refuse a task upload whose declared size is over the limit, before reading its body.

    The route checks the bytes it actually reads as well (a chunked upload declares no size);
    both answer :func:`~services.api.errors.task_file_too_large`.
    """

    def __init__(self, app: ASGIApp, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes + MULTIPART_SLACK_BYTES:
                response = errors.error_response(errors.task_file_too_large(self.max_bytes))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with assets from the package.

    FastAPI's own pages load their scripts from a CDN and are blank without internet; these
    load the same tools from :data:`DOCS_ASSETS`. Neither page is part of the OpenAPI schema.
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=STATIC_DIR), name="docs-assets")

    def prefix(request: Request) -> str:
        # Behind a proxy that mounts the app under a path, every URL carries it.
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )


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
        docs_url=None,  # add_docs serves /docs and /redoc without a CDN
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
    add_docs(app)
    web.install(app)  # the dashboard at / (pages, sign-in, its static files)
    app.add_middleware(UploadLimit, path=f"{API_PREFIX}/tasks", max_bytes=max_task_bytes)
    return app

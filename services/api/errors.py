"""Errors a client can cause, and how every :class:`KernelmapError` becomes a JSON response.

The body is always ``{"detail": "<what was wrong and how to fix it>", ...}``; some errors add
fields (``line`` for an invalid task, ``field`` for the request field at fault).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from archive.errors import NotFoundError
from evaluator_worker.errors import KernelmapError, TaskError
from services.seeds import SeedError


class ApiError(KernelmapError):
    """A request the API refuses; ``status_code`` is its HTTP status, ``extra`` more fields."""

    status_code = 400

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.extra = {k: v for k, v in extra.items() if v is not None}


class Forbidden(ApiError):
    """The caller's role may not do this (403)."""

    status_code = 403


class NotFound(ApiError):
    """Nothing the caller may see has this id (404); another user's id is not found either."""

    status_code = 404


class PayloadTooLarge(ApiError):
    """An upload over the size limit (413)."""

    status_code = 413


class Unprocessable(ApiError):
    """Well-formed but unusable input: a file that is not UTF-8, a bad seed (422)."""

    status_code = 422


class InvalidTask(Unprocessable):
    """The uploaded task failed validation; ``line`` is where, when known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        where = f" (line {line})" if line else ""
        super().__init__(f"invalid task{where}: {reason}", line=line, field="file")


def status_of(exc: KernelmapError) -> int:
    """The HTTP status for a user-caused error."""
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, TaskError | SeedError):
        return 422
    return 400


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate a client sent cannot break the encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


async def _kernelmap_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KernelmapError)
    body: dict[str, Any] = {"detail": str(exc)}
    body.update(getattr(exc, "extra", {}))
    return AsciiJSONResponse(body, status_code=status_of(exc))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Each error names its field (loc) and the problem; the input is not echoed back (it may be
    # a whole seed file, or text that is not valid Unicode).
    errors = []
    for err in exc.errors():
        out = {k: err[k] for k in ("loc", "msg", "type") if k in err}
        if err.get("ctx"):
            out["ctx"] = {
                k: str(v) if isinstance(v, Exception) else v for k, v in err["ctx"].items()
            }
        errors.append(out)
    return AsciiJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def install(app: FastAPI) -> None:
    """Register the handlers: any :class:`KernelmapError` becomes ``{"detail": ...}`` with a
    4xx status; request validation errors list ``loc``/``msg`` per field without the input."""
    app.add_exception_handler(KernelmapError, _kernelmap_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

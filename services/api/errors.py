"""Errors a client can cause, and how every :class:`KernelmapError` becomes a JSON response.

The body is always ``{"detail": "<what was wrong and how to fix it>", ...}``; some errors add
fields (``line`` for an invalid task, ``field`` for the request field at fault). Errors are
4xx, except :class:`SandboxUnavailable` (503): the server, not the client, is at fault.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from archive.errors import NotFoundError
from evaluator_worker.errors import TaskError
from kernelmap_errors import KernelmapError
from services.runs.seeds import SeedError


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


class Conflict(ApiError):
    """The request does not apply to the resource in its current state (409)."""

    status_code = 409


class PayloadTooLarge(ApiError):
    """An upload over the size limit (413)."""

    status_code = 413


def task_file_too_large(max_bytes: int) -> PayloadTooLarge:
    """The one 413 for a task file over ``max_bytes``: the same body whether the declared size
    said so (:class:`services.api.app.UploadLimit`, before the body is read) or the bytes the
    route read (a chunked upload declares no size)."""
    return PayloadTooLarge(
        f"the task file is over {max_bytes} bytes: a task needs only the reference model and"
        " its input generators",
        field="file",
    )


class Unprocessable(ApiError):
    """Well-formed but unusable input: a file that is not UTF-8, a bad seed (422)."""

    status_code = 422


class InvalidTask(Unprocessable):
    """The uploaded task failed validation; ``line`` is where, when known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        where = f" (line {line})" if line else ""
        super().__init__(f"invalid task{where}: {reason}", line=line, field="file")


class SandboxUnavailable(ApiError):
    """The server cannot run a submitted task's code safely: its sandbox cannot be set up on
    this host (503). Not the client's fault; the server's log says what the host lacks."""

    status_code = 503


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


def error_response(exc: KernelmapError) -> JSONResponse:
    """The response for a user-caused error: ``{"detail": ..., **extra}`` with its status.

    Also what a middleware sends when it refuses a request before any route runs, so both
    answer alike.
    """
    body: dict[str, Any] = {"detail": str(exc)}
    body.update(getattr(exc, "extra", {}))
    return AsciiJSONResponse(body, status_code=status_of(exc))


async def _kernelmap_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KernelmapError)
    return error_response(exc)


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


class ErrorBody(BaseModel):
    """What every refused request gets (other than a field-by-field validation error)."""

    detail: str = Field(description="What was wrong and how to fix it")
    field: str | None = Field(default=None, description="The request field at fault")
    line: int | None = Field(default=None, description="Line of the uploaded file at fault")


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
#: Why each documented error status happens (the OpenAPI response descriptions).
_WHY = {
    400: "The request body could not be parsed",
    401: "Missing, unknown or revoked API key",
    403: "The key's role may not do this",
    404: "Nothing you may see has this id",
    409: "The action does not apply to the resource in its current state",
    413: "The upload is over the size limit",
}


_VALIDATION_REF = {"$ref": "#/components/schemas/HTTPValidationError"}
# FastAPI's own definitions, for a schema where no route declared a body or a parameter.
_VALIDATION_ITEM_SCHEMA = {
    "title": "ValidationError",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
        "ctx": {"type": "object"},
    },
}
_VALIDATION_SCHEMA = {
    "title": "HTTPValidationError",
    "type": "object",
    "properties": {
        "detail": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}
    },
}


def _error_response(status: int) -> dict[str, Any]:
    return {"description": _WHY[status], "content": {"application/json": {"schema": _ERROR_REF}}}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses the handlers produce to every operation of an OpenAPI schema.

    An operation that needs a key may answer 401 and 403; one with path parameters or a body
    404 (ids it refers to); one with a body 400 (unparsable) and, for an upload, 413; one with
    parameters or a body 422, which is either FastAPI's field-by-field list or an
    :class:`ErrorBody` (a seed that is not a candidate, a file that is not UTF-8). Responses a
    route documents itself are kept.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            body = operation.get("requestBody")
            has_path_ids = any(p.get("in") == "path" for p in operation.get("parameters", []))
            statuses = []
            if operation.get("security"):
                statuses += [401, 403]
            if has_path_ids or body:
                statuses.append(404)
            if body:
                statuses.append(400)
                if "multipart/form-data" in body.get("content", {}):
                    statuses.append(413)
            for status in statuses:
                responses.setdefault(str(status), _error_response(status))
            if (body or operation.get("parameters")) and "422" not in responses:
                # A body read by a dependency (to bound its size) is validated all the same.
                responses["422"] = {
                    "description": "Validation Error",
                    "content": {"application/json": {"schema": _VALIDATION_REF}},
                }
                components.setdefault("HTTPValidationError", _VALIDATION_SCHEMA)
                components.setdefault("ValidationError", _VALIDATION_ITEM_SCHEMA)
            invalid = responses.get("422", {}).get("content", {}).get("application/json")
            if invalid and "anyOf" not in invalid["schema"]:
                invalid["schema"] = {"anyOf": [invalid["schema"], _ERROR_REF]}
    return schema


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 400:
        return await http_exception_handler(request, exc)
    # The routes raise no 400 themselves: this is FastAPI or Starlette failing to parse the
    # body (JSON that is not UTF-8, multipart without a boundary...).
    detail = (
        f"the request body could not be parsed ({exc.detail}): send JSON in UTF-8, or"
        " multipart/form-data with a boundary for an upload, as the operation documents"
    )
    return AsciiJSONResponse({"detail": detail, "field": "body"}, status_code=400)


def install(app: FastAPI) -> None:
    """Register the handlers: any :class:`KernelmapError` becomes ``{"detail": ...}`` with a
    4xx status; request validation errors list ``loc``/``msg`` per field without the input; a
    body that cannot be parsed is 400 with ``field: "body"``.
    The OpenAPI schema documents those errors on every operation (see :func:`document_errors`).
    """
    app.add_exception_handler(KernelmapError, _kernelmap_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI builds the schema once, on first use: every router is included by then.
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

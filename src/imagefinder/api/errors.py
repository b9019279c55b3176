"""Every error the API answers is JSON {"detail": "<a sentence>"}: no lists of dicts, no stack traces, no paths."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorBody

log = logging.getLogger(__name__)

INTERNAL = "internal server error; the server log has the details"
# the error answers documented in the OpenAPI schema of the routes that can give them
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        404: "no such image", 413: "upload or image too large", 415: "not a supported image type",
        422: "invalid request, unreadable image or URL that cannot be fetched",
    }.items()
}

# ... and of the routes that change the index (see access.py)
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, **{
    code: {"model": ErrorBody, "description": text} for code, text in {
        401: "this change needs the API token (Authorization: Bearer ...)",
        403: "change refused: read-only server, cross-site request, or from another machine without a token",
    }.items()
}}


def validation_message(exc: ValidationError | RequestValidationError) -> str:
    """pydantic's list of errors as one sentence: where (path/query parameter, field) and what."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body",)]
        where = {"path": "path parameter", "query": "query parameter", "header": "header"}.get(loc[0]) if loc else None
        if where:
            loc = loc[1:]
        name = ".".join(loc)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where + ' ' if where else ''}{name + ': ' if name else ''}{msg}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    # the request's path is not echoed: it is the client's own text (and may be crafted)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint for {request.method} (see /docs for the endpoints)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on this endpoint (see /docs)"
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_message(exc)}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    # the server closes the connection after an unhandled error: say so, or a keep-alive
    # client sends its next request down a connection that is being torn down
    return JSONResponse({"detail": INTERNAL}, status_code=500, headers={"Connection": "close"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)

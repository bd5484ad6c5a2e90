"""Errors as ``application/problem+json`` (RFC 9457), with the CLI's one-line messages as ``detail``.

Why the same text as the CLI: a CI log or a chat bot shows ``detail`` to the person who has to act, and the
message already names the place and the fix (spec errors keep their FILE:LINE:COL lines). A ``UserError`` is a 400
unless the handler raised a ``Problem`` with a more precise status (404 unknown, 409 conflict). Internal errors
answer 500 with a fixed text: an exception's message may carry paths or secrets, so it goes to the server log only.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from releasegate.errors import UserError

MEDIA = "application/problem+json"
log = logging.getLogger("releasegate.server")


class Problem(Exception):
    """An answer other than success: ``status``, a short ``slug`` (the ``type``'s last part) and the detail."""

    def __init__(self, status: int, slug: str, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.errors = status, slug, detail, errors


TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content",
          500: "Internal Server Error"}


def response(status: int, slug: str, detail: str, errors: list[str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"type": f"urn:releasegate:problem:{slug}", "title": TITLES.get(status, "Error"),
                               "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


def install(app: FastAPI) -> None:
    """Every error the app can answer, as problem+json."""

    async def problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return response(exc.status, exc.slug, exc.detail, exc.errors)

    async def user_error(_: Request, exc: Exception) -> JSONResponse:
        lines = str(exc).splitlines() or [type(exc).__name__]
        return response(400, "invalid", lines[0], lines[1:] or None)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return response(exc.status_code, "http", str(exc.detail))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return response(422, "invalid-request", "the request does not match the API (docs/openapi.json)", errors)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__,
                  exc_info=exc)
        return response(500, "internal", "internal error; the server log has the details")

    app.add_exception_handler(Problem, problem)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)


__all__ = ["MEDIA", "Problem", "install", "response"]

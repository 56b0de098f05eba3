"""Errors as OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`), never a stack trace.

OpenAI clients read `error.message` and raise the class matching the status (401 AuthenticationError,
404 NotFoundError, 429 RateLimitError...), so a user of the official client sees our message as is.
Unexpected exceptions are logged with their traceback on the server and answered with a short
message naming the exception class only.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, KnowledgeBaseError, QueryError, RagtuneError, WriterBusyError
from .limits import Overloaded, TooLarge

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error", 415: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error the client caused or must know about, with its HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, *, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_ragtune(exc: RagtuneError) -> APIError:
    """Map ragtune's typed errors to statuses: bad input is 400, a busy writer 409, a broken KB 500."""
    if isinstance(exc, (QueryError, ConfigError)):
        return APIError(400, str(exc), code="invalid_value")
    if isinstance(exc, WriterBusyError):
        return APIError(409, f"{exc}; retry when the other writer is done", code="kb_busy")
    if isinstance(exc, KnowledgeBaseError):
        return APIError(500, str(exc), code="kb_error")
    return APIError(400, str(exc))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "the request is invalid", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({detail}); send a JSON object with Content-Type: application/json", None
    loc = list(first.get("loc", ()))
    location = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)]
    param = ".".join(location) or None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return "the body must be a JSON object; send one with Content-Type: application/json", None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI-style JSON error."""

    @app.exception_handler(APIError)
    async def _api(_request: Request, exc: APIError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_request: Request, exc: Overloaded):
        return error_response(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooLarge)
    async def _too_large(_request: Request, exc: TooLarge):
        return error_response(413, str(exc), code="request_too_large")

    @app.exception_handler(RagtuneError)
    async def _ragtune(_request: Request, exc: RagtuneError):
        api = from_ragtune(exc)
        return error_response(api.status, api.message, code=api.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405:
            message = "this endpoint does not accept that method"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details",
                              code="internal_error")

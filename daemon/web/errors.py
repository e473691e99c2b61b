"""Every HTTP error as ``{"error":{"code","message"}}`` (design §5), whatever raised it."""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart, Response, jsonify, request
from quart_schema import RequestSchemaValidationError
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import BadRequest, HTTPException

from ..errors import (
    AgentdError,
    BadArguments,
    Conflict,
    Forbidden,
    InvalidTransition,
    NotFound,
    PermanentError,
    RateLimited,
)
from ..thirdparty.quart_body import received_whole
from . import json_input

log = logging.getLogger(__name__)

# Status for an HTTP error raised by Quart/werkzeug, with our stable code for it.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}

# A use case's error class -> status and code (None: the error's own code).
_USE_CASE_ERRORS: list[tuple[type[AgentdError], int, str | None]] = [
    (NotFound, 404, "not_found"),
    (InvalidTransition, 409, "conflict"),
    (Conflict, 409, None),
    (PermanentError, 422, None),
    (BadArguments, 422, "invalid_request"),
]


class ApiError(Exception):
    """An error the API answers with as is: status, stable code, a message the user can act on."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error_body(code, message))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def answer_for(exc: AgentdError) -> tuple[int, str, str, dict[str, str]]:
    """Status, code, message and headers answering a use case's error."""
    if isinstance(exc, Forbidden):
        return 404, "not_found", "not found", {}  # never a 403 for a task: it would confirm it exists
    if isinstance(exc, RateLimited):
        return 429, exc.code, exc.message, {"Retry-After": str(exc.retry_after)}
    for kind, status, code in _USE_CASE_ERRORS:
        if isinstance(exc, kind):
            return status, code or exc.code, exc.message, {}
    return 500, exc.code, exc.message, {}


def _describe_validation(exc: RequestSchemaValidationError) -> str:
    cause = exc.validation_error
    errors = getattr(cause, "errors", None)
    if callable(errors):
        parts = []
        for error in errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ())) or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return "; ".join(parts)
    if isinstance(cause, TypeError):
        return "the body must be a JSON object (Content-Type: application/json)"
    return str(cause) or "invalid request"


class JSONBodyRequest(TrioRequest):
    """Quart-Trio's request, where every unreadable JSON body is a 400, never a crash.

    Quart turns only a ``ValueError`` from the JSON parser into a 400: a body that is not
    UTF-8 fails before the parser, and one nested deeper than the parser's recursion limit
    raises ``RecursionError`` from it. The parser is ``json_input.loads``: NaN, infinities and
    numbers beyond a float are refused (the app's provider), with a message saying so.
    """

    def on_json_loading_failed(self, error: Exception) -> Any:
        if isinstance(error, json_input.NonFiniteNumber):
            raise ApiError(400, "bad_request", f"malformed request: {error}")
        return super().on_json_loading_failed(error)

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        except (UnicodeDecodeError, RecursionError) as exc:
            if silent:
                return None
            return self.on_json_loading_failed(exc)


def _body_left_unread() -> bool:
    """The request declared a body that the app did not receive to its end.

    Hypercorn stops reading a connection while a request's body waits unread, so a response
    that leaves one behind on a kept-alive connection stalls the client's next request there.
    """
    declared = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
        "Transfer-Encoding", ""
    ).lower()
    if not declared:
        return False
    return not received_whole(request.body)


def register_error_handlers(app: Quart) -> None:
    app.request_class = JSONBodyRequest
    app.json = json_input.StrictJSONProvider(app)  # request bodies: finite numbers only

    @app.after_request
    async def close_if_body_unread(response: Response) -> Response:
        # As for a 413: this connection cannot carry another request.
        if _body_left_unread():
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return _response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(RequestSchemaValidationError)
    async def validation_error(exc: RequestSchemaValidationError) -> Response:
        return _response(422, "invalid_request", _describe_validation(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        headers = {}
        if status == 413:
            message = "request body too large"
            # The body was not read: this connection cannot carry another request.
            headers["Connection"] = "close"
        elif status == 400 and message == BadRequest.description:
            message = "malformed request: the body is not valid JSON"
        return _response(status, code, message, headers)

    @app.errorhandler(AgentdError)
    async def agentd_error(exc: AgentdError) -> Response:
        status, code, message, headers = answer_for(exc)
        if status >= 500:
            log.warning("API error %s: %s", exc.code, exc.message)
        return _response(status, code, message, headers)

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        log.error("unhandled error in the API", exc_info=exc)
        return _response(500, "internal", "internal error")

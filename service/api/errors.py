"""HTTP edges: the error envelope, and the middleware that guarantees it (never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import web

from service.errors import AuditqError
from service.redaction import redact_sensitive_in_string

logger = logging.getLogger(__name__)

# Settings.redact_extra_keys, for error bodies (set by create_app; http.py sits below state.py).
REDACT_EXTRA_KEYS = web.AppKey("redact_extra_keys", frozenset)

# aiohttp's own HTTP errors, mapped to our codes.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "dependency_unavailable",
}


class ApiError(AuditqError):
    """An error to answer with the JSON envelope (and, beside it, `extra` fields)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: Mapping[str, Any] | None = None,
        redact: bool = True,  # False only for a fixed message that quotes nothing it was sent
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.redact = redact


def error_response(
    status: int,
    code: str,
    message: str,
    extra: Mapping[str, Any] | None = None,
    *,
    extra_keys: frozenset[str] = frozenset(),
    redact: bool = True,
) -> web.Response:
    """The envelope: {"error": {"code", "message"}}; the message is redacted, as it may quote
    a bad parameter's value."""
    if redact:
        message = redact_sensitive_in_string(message, extra_keys)
    body = {**(extra or {}), "error": {"code": code, "message": message}}
    return web.json_response(body, status=status)


def bad_parameter(name: str, problem: str) -> ApiError:
    """A 400 that names the parameter."""
    return ApiError(400, "invalid_parameter", f"parameter `{name}` {problem}")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DEPENDENCY_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a pooled connection whose server process was terminated
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with the envelope; a dependency down is 503, a bug is a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        keys = request.app.get(REDACT_EXTRA_KEYS, frozenset())
        return error_response(
            exc.status, exc.code, exc.message, exc.extra, extra_keys=keys, redact=exc.redact
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keys = request.app.get(REDACT_EXTRA_KEYS, frozenset())
        code = _CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason, extra_keys=keys)
        if "Allow" in exc.headers:  # a 405 names the methods the path offers (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except _DEPENDENCY_ERRORS as exc:
        logger.warning(
            "dependency unavailable on %s %s: %s", request.method, request.path, type(exc).__name__
        )
        return error_response(
            503, "dependency_unavailable", "a dependency (Redis or PostgreSQL) is not answering"
        )
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", "internal error; the server log has the details"
        )

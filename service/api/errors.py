"""HTTP edges: the error envelope, and the middleware that guarantees it (never a traceback)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
import redis.exceptions
from aiohttp import web

from service.redaction import redact_sensitive_in_string

logger = logging.getLogger(__name__)

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


class ApiError(Exception):
    """An error to answer with the JSON envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    """The envelope: {"error": {"code", "message"}}; the message is redacted, as it may quote
    a bad parameter's value."""
    message = redact_sensitive_in_string(message)
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def bad_parameter(name: str, problem: str) -> ApiError:
    """A 400 that names the parameter."""
    return ApiError(400, "invalid_parameter", f"parameter `{name}` {problem}")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DEPENDENCY_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
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
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, _CODES.get(exc.status, "http_error"), exc.reason)
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

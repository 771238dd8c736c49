"""JSON at the edge: request bodies (content type, size, typed decoding naming the bad field)
and JSON responses."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service.api.errors import ApiError
from service.api.inputs import convert

T = TypeVar("T")

JSON_TYPES = ("application/json",)


async def read_body(request: web.Request, *, optional: bool = False) -> bytes | None:
    """The raw JSON body: 415 unless it is JSON, 413 past the app's size limit (aiohttp's)."""
    body = await request.read()  # raises 413 beyond client_max_size
    if not body.strip():
        if optional:
            return None
        raise ApiError(400, "invalid_body", "send a JSON body")
    if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send Content-Type: application/json, not {request.content_type or 'none'}",
        )
    return body


def decode(body: bytes, kind: type[T]) -> T:
    """Decode `body` as `kind`, or raise a 400 whose message names the bad field."""
    return convert(any_json(body), kind)


async def read_json(request: web.Request, kind: type[T], *, default: T | None = None) -> T:
    """Read and decode a JSON body as `kind`; an empty body gives `default` when there is one."""
    if default is None:
        return decode(await read_body(request) or b"", kind)  # never empty: a 400 before
    body = await read_body(request, optional=True)
    return default if body is None else decode(body, kind)


_any_json = msgspec.json.Decoder()


def any_json(body: bytes) -> Any:
    """Decode any JSON value, or raise a 400."""
    try:
        return _any_json.decode(body)
    except msgspec.DecodeError as exc:
        raise _invalid_json(str(exc)) from None
    except RecursionError:
        raise _too_deep() from None
    except UnicodeDecodeError:  # msgspec's answer to a string that is not UTF-8
        raise _not_utf8() from None


def _invalid_json(problem: str) -> ApiError:
    return ApiError(400, "invalid_json", f"parameter `body` is not valid JSON: {problem}")


def _not_utf8() -> ApiError:
    return _invalid_json("it is not UTF-8")


def _too_deep() -> ApiError:
    """msgspec raises RecursionError for hostile nesting: a bad body, not a server error."""
    return _invalid_json("it nests too deeply")


_encoder = msgspec.json.Encoder()


def json_response(value: object, *, status: int = 200) -> web.Response:
    """`value` (Structs, dicts, datetimes, UUIDs) as a JSON response."""
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")

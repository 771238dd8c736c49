"""Who calls the API: the Bearer token checked in constant time, and what its role may do."""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.errors import ApiError
from service.store.tokens import Role, find_active_token, hash_token


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    token_id: int
    name: str
    role: Role


async def authenticate(conn: asyncpg.Connection, header: str | None) -> Principal:
    """Return the principal for an `Authorization: Bearer …` header, or raise 401."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    digest = hash_token(token.strip())
    row = await find_active_token(conn, digest)
    # The lookup is by hash; compare again in constant time so no timing tells a near miss.
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return Principal(row["id"], row["name"], row["role"])


def allowed(role: Role, method: str, path: str) -> bool:
    """Tell whether `role` may call `method path`."""
    if role == "admin":
        return True
    if path == "/api/v1/events":
        return role == "ingest"
    return role == "reader" and method in ("GET", "HEAD")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED_PREFIXES = ("/api/v1/admin/", "/api/v1/events")
PRINCIPAL_KEY = web.RequestKey("auditq.principal", Principal)


def auth_middleware(pool_key: web.AppKey[asyncpg.Pool]) -> Middleware:
    """Check the token of every admin and ingest route; 401 unknown, 403 wrong role."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not (path.startswith(PROTECTED_PREFIXES[0]) or path == PROTECTED_PREFIXES[1]):
            return await handler(request)
        async with request.app[pool_key].acquire() as conn:
            principal = await authenticate(conn, request.headers.get("Authorization"))
        if not allowed(principal.role, request.method, path):
            raise ApiError(
                403, "forbidden", f"a {principal.role} token cannot {request.method} {path}"
            )
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return middleware


def request_principal(request: web.Request) -> Principal:
    """The authenticated caller of this request."""
    principal: Principal = request[PRINCIPAL_KEY]
    return principal

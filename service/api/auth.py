"""API tokens: made once, stored hashed, checked in constant time, with roles."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Literal

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.errors import ApiError

Role = Literal["reader", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("reader", "admin", "ingest")
TOKEN_PREFIX = "aq_"

INSERT_TOKEN = "INSERT INTO api_token (name, role, token_hash) VALUES ($1, $2, $3) RETURNING id"
FIND_TOKEN = """
SELECT id, name, role, token_hash FROM api_token WHERE token_hash = $1 AND revoked_at IS NULL
"""
LIST_TOKENS = """
SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_token ORDER BY id
"""
REVOKE_TOKEN = """
UPDATE api_token SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id
"""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    token_id: int
    name: str
    role: Role


def hash_token(token: str) -> bytes:
    """SHA-256 of a token: tokens are 256-bit random, so no salt or slow hash is needed."""
    return hashlib.sha256(token.encode()).digest()


async def create_token(conn: asyncpg.Connection, *, name: str, role: Role) -> str:
    """Make a token, store its hash, and return the token (shown once)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        await conn.fetchval(INSERT_TOKEN, name, role, hash_token(token))
    except asyncpg.UniqueViolationError:
        raise ValueError(f"an active token named {name!r} exists; revoke it first") from None
    return token


async def revoke_token(conn: asyncpg.Connection, name: str) -> bool:
    """Revoke the active token named `name`; False when there is none."""
    return await conn.fetchval(REVOKE_TOKEN, name) is not None


async def list_tokens(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every token ever made (no secrets: only hashes are stored)."""
    rows: list[asyncpg.Record] = await conn.fetch(LIST_TOKENS)
    return rows


async def authenticate(conn: asyncpg.Connection, header: str | None) -> Principal:
    """Return the principal for an `Authorization: Bearer …` header, or raise 401."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    digest = hash_token(token.strip())
    row = await conn.fetchrow(FIND_TOKEN, digest)
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

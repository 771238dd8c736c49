"""Who calls the API: the Bearer token checked in constant time, and what its role may do.

Verified tokens are kept for a few seconds, so HTTP ingest keeps accepting while PostgreSQL
is away (the timings are service/queue/revocations.py's): a token is checked again in PostgreSQL
once its check is `RECHECK_AFTER_S` old, so a revocation takes effect within that on every
replica. When PostgreSQL does not answer, a token verified within `TRUST_OFFLINE_S` still works
unless Redis announces it revoked.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from service.api.errors import ApiError
from service.queue import revocations
from service.store.db import Conn
from service.store.tokens import Role, find_active_token, hash_token, touch_token

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 1.0  # seconds for a token lookup, waiting on the pool included
DOWN_PAUSE_S = 1.0  # seconds requests skip PostgreSQL after a lookup found it not answering
MAX_KEPT = 10_000  # tokens kept; the least recently verified go first
TOUCH_EVERY_S = 60.0  # seconds between writes of a token's last_used_at from one replica
# An unknown token is answered 401 from memory for this long: a flood of one bad token does not
# reach PostgreSQL each time. Short, as a token made on another replica works here after it.
UNKNOWN_TTL_S = 2.0  # seconds
MAX_UNKNOWN = 10_000  # unknown tokens kept; the oldest go first
# What a token may hold: visible ASCII (ours are "aq_" and URL-safe base64). Anything else
# (a byte that is not UTF-8, a control character) is no token, and hashing must not choke.
_TOKEN = re.compile(r"[\x21-\x7e]{1,512}")
# PostgreSQL away: stopped, restarting, crashed, unreachable, out of connections, or slow.
_DB_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    # 55000 at connect: the database does not accept connections now (ALLOW_CONNECTIONS off).
    asyncpg.ObjectNotInPrerequisiteStateError,
)


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    token_id: int
    name: str
    role: Role


def bearer_digest(header: str | None) -> bytes:
    """The hash of the token of an `Authorization: Bearer …` header, or raise 401."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # Not redacted: the hint names no credential, only the header's form.
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", redact=False)
    if not _TOKEN.fullmatch(token):
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return hash_token(token)


async def _principal(conn: Conn, digest: bytes) -> Principal | None:
    row = await find_active_token(conn, digest)
    # The lookup is by hash; compare again in constant time so no timing tells a near miss.
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
        return None
    return Principal(row["id"], row["name"], row["role"])


async def authenticate(conn: asyncpg.Connection, header: str | None) -> Principal:
    """Return the principal for an `Authorization: Bearer …` header, or raise 401."""
    principal = await _principal(conn, bearer_digest(header))
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return principal


class TokenCheck:
    """Verify tokens against PostgreSQL, riding out its outages on recent verifications."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self._pool = pool
        self._redis = redis
        self._verified: collections.OrderedDict[bytes, tuple[Principal, float]] = (
            collections.OrderedDict()
        )
        self._touched: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._unknown: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._skip_db_until = 0.0  # monotonic; PostgreSQL did not answer a moment ago
        self._offline_since: float | None = None

    async def principal(self, header: str | None) -> Principal:
        """The caller of a request with this Authorization header; 401, or 503 if unknowable."""
        digest = bearer_digest(header)
        now = time.monotonic()
        kept = self._verified.get(digest)
        if kept is not None and now - kept[1] < revocations.RECHECK_AFTER_S:
            return kept[0]
        unknown_since = self._unknown.get(digest)
        if unknown_since is not None and now - unknown_since < UNKNOWN_TTL_S:
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        if now >= self._skip_db_until:
            try:
                principal = await self._look_up(digest)
            except _DB_DOWN as exc:
                self._went_offline(now, exc)
            else:
                self._back_online()
                return self._keep(digest, principal, now)
        return await self._offline(digest, kept, now)

    async def _look_up(self, digest: bytes) -> Principal | None:
        async with self._pool.acquire(timeout=LOOKUP_TIMEOUT_S) as conn:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                principal = await _principal(conn, digest)
            if principal is not None:
                await self._touch(conn, principal.token_id)
            return principal

    async def _touch(self, conn: Conn, token_id: int) -> None:
        """Write the token's last_used_at, at most every TOUCH_EVERY_S; never fail the call."""
        now = time.monotonic()
        last = self._touched.get(token_id)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        self._touched[token_id] = now
        self._touched.move_to_end(token_id)
        while len(self._touched) > MAX_KEPT:
            self._touched.popitem(last=False)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                await touch_token(conn, token_id)
        except (*_DB_DOWN, asyncpg.PostgresError) as exc:
            logger.debug("last_used_at of token %d not written: %s", token_id, type(exc).__name__)

    def forget(self, digest: bytes) -> None:
        """Drop what is kept of a token (it was just revoked, or made, here)."""
        self._verified.pop(digest, None)
        self._unknown.pop(digest, None)

    def _keep(self, digest: bytes, principal: Principal | None, now: float) -> Principal:
        self._verified.pop(digest, None)
        if principal is None:
            self._unknown.pop(digest, None)
            self._unknown[digest] = now
            while len(self._unknown) > MAX_UNKNOWN:
                self._unknown.popitem(last=False)
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        self._unknown.pop(digest, None)
        self._verified[digest] = (principal, now)
        while len(self._verified) > MAX_KEPT:
            self._verified.popitem(last=False)
        return principal

    async def _offline(
        self, digest: bytes, kept: tuple[Principal, float] | None, now: float
    ) -> Principal:
        """PostgreSQL does not answer: trust a recent verification that Redis did not revoke."""
        if kept is None or now - kept[1] > revocations.TRUST_OFFLINE_S:
            raise ApiError(
                503, "dependency_unavailable", "PostgreSQL is not answering: cannot check the token"
            )
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                revoked = await revocations.is_revoked(self._redis, digest)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ApiError(
                503, "dependency_unavailable", "neither PostgreSQL nor Redis can check the token"
            ) from exc
        if revoked:
            self._verified.pop(digest, None)
            raise ApiError(401, "unauthorized", "unknown or revoked token")
        return kept[0]

    def _went_offline(self, now: float, exc: BaseException) -> None:
        self._skip_db_until = now + DOWN_PAUSE_S
        if self._offline_since is None:
            self._offline_since = now
            logger.warning(
                "PostgreSQL does not answer token lookups (%s); tokens verified in the last "
                "%.0f s keep working unless revoked in Redis",
                type(exc).__name__,
                revocations.TRUST_OFFLINE_S,
            )

    def _back_online(self) -> None:
        if self._offline_since is not None:
            logger.warning(
                "PostgreSQL answers token lookups again after %.1f s",
                time.monotonic() - self._offline_since,
            )
            self._offline_since = None


SUBJECTS_PREFIX = "/api/v1/admin/subjects/"


def allowed(role: Role, method: str, path: str) -> bool:
    """Tell whether `role` may call `method path`."""
    if role == "admin":
        return True
    if path == "/api/v1/events":
        return role == "ingest"
    if path.startswith(SUBJECTS_PREFIX) and path.endswith("/anonymisation"):
        return False  # an id's pseudonym: re-identification by enumeration, admins only
    if path.rstrip("/") == SUBJECTS_PREFIX.rstrip("/"):
        return False  # who was erased when: admins only
    return role == "reader" and method in ("GET", "HEAD")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED_PREFIXES = ("/api/v1/admin/", "/api/v1/events")
PRINCIPAL_KEY = web.RequestKey("auditq.principal", Principal)
TOKEN_CHECK = web.AppKey("token_check", TokenCheck)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token of every admin and ingest route; 401 unknown, 403 wrong role."""
    path = request.path
    if not (path.startswith(PROTECTED_PREFIXES[0]) or path == PROTECTED_PREFIXES[1]):
        return await handler(request)
    principal = await request.app[TOKEN_CHECK].principal(request.headers.get("Authorization"))
    if not allowed(principal.role, request.method, path):
        article = "an" if principal.role[0] in "aeiou" else "a"
        raise ApiError(
            403, "forbidden", f"{article} {principal.role} token cannot {request.method} {path}"
        )
    request[PRINCIPAL_KEY] = principal
    return await handler(request)


def request_principal(request: web.Request) -> Principal:
    """The authenticated caller of this request."""
    principal: Principal = request[PRINCIPAL_KEY]
    return principal

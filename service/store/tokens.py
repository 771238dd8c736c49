"""API tokens in the store: made once, kept as a hash, found by hash, revoked by name."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Literal

import asyncpg

from service.own_events import by_json
from service.store.db import Conn

Role = Literal["reader", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("reader", "admin", "ingest")
TOKEN_PREFIX = "aq_"

# Definer functions (schema.sql, "Least privilege"): each stores the change together with its
# audit event (token.created / token.revoked), in one transaction; $n of who asked.
INSERT_TOKEN = "SELECT auditq_create_token($1, $2, $3, $4::text::jsonb)"
FIND_TOKEN = """
SELECT id, name, role, token_hash FROM api_token WHERE token_hash = $1 AND revoked_at IS NULL
"""
LIST_TOKENS = """
SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_token ORDER BY id
"""
REVOKE_TOKEN = "SELECT auditq_revoke_token($1, $2::text::jsonb)"


def hash_token(token: str) -> bytes:
    """SHA-256 of a token: tokens are 256-bit random, so no salt or slow hash is needed."""
    return hashlib.sha256(token.encode()).digest()


async def create_token(
    conn: Conn, *, name: str, role: Role, by: dict[str, Any] | None = None
) -> str:
    """Make a token, store its hash with its token.created event (`by` who asked: actor,
    request, source), and return the token (shown once)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        await conn.fetchval(INSERT_TOKEN, name, role, hash_token(token), by_json(by))
    except asyncpg.UniqueViolationError:
        raise ValueError(f"an active token named {name!r} exists; revoke it first") from None
    return token


async def revoke_token(conn: Conn, name: str, *, by: dict[str, Any] | None = None) -> bytes | None:
    """Revoke the active token named `name` with its token.revoked event; return its hash,
    or None when there is none."""
    digest: bytes | None = await conn.fetchval(REVOKE_TOKEN, name, by_json(by))
    return None if digest is None else bytes(digest)


async def list_tokens(conn: Conn) -> list[asyncpg.Record]:
    """Every token ever made (no secrets: only hashes are stored)."""
    rows: list[asyncpg.Record] = await conn.fetch(LIST_TOKENS)
    return rows


async def find_active_token(conn: Conn, digest: bytes) -> asyncpg.Record | None:
    """The active token whose hash is `digest` (id, name, role, token_hash), or None."""
    row: asyncpg.Record | None = await conn.fetchrow(FIND_TOKEN, digest)
    return row


# At most once a minute per token, whatever the number of API replicas: a write per request
# would cost more than the request.
TOUCH_TOKEN = """
UPDATE api_token SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""


async def touch_token(conn: Conn, token_id: int) -> None:
    """Record that the token `token_id` was used (unless it was in the last minute)."""
    await conn.execute(TOUCH_TOKEN, token_id)


IS_ACTIVE = "SELECT true FROM api_token WHERE id = $1 AND revoked_at IS NULL"


async def is_active(conn: Conn, token_id: int) -> bool:
    """Whether the token `token_id` still works (it was not revoked)."""
    return bool(await conn.fetchval(IS_ACTIVE, token_id))

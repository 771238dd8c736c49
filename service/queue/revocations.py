"""Revoked tokens announced in Redis, so an API cut off from PostgreSQL still refuses them."""

from __future__ import annotations

from redis.asyncio import Redis

# An API trusts a token it verified for this long before asking PostgreSQL again: a
# revocation takes effect within it on every replica.
RECHECK_AFTER_S = 5.0  # seconds
# While PostgreSQL does not answer, an API keeps accepting a token it verified at most this
# long ago, unless Redis says it was revoked since.
TRUST_OFFLINE_S = 300.0  # seconds
# A mark outlives every verification an API may still be trusting.
MARK_TTL_S = int(TRUST_OFFLINE_S * 12)  # seconds


def revoked_key(digest: bytes) -> str:
    """The mark of one revoked token, by its hash (the token itself is never in Redis)."""
    return f"auditq:revoked-token:{digest.hex()}"


async def announce(redis: Redis, digest: bytes) -> None:
    """Mark the token with hash `digest` as revoked, for every API replica."""
    await redis.set(revoked_key(digest), 1, ex=MARK_TTL_S)


async def is_revoked(redis: Redis, digest: bytes) -> bool:
    """Tell whether the token with hash `digest` was announced revoked."""
    return bool(await redis.exists(revoked_key(digest)))

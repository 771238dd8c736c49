"""SQL of erasure: erased subjects (by pseudonym), and the one function that erases one."""

from __future__ import annotations

from typing import Any

import msgspec

from service.store.db import Conn

ERASED = "SELECT pseudonym FROM erased_subject"
STATE = """
SELECT state, pseudonym, rows, dead_letters FROM erased_subject WHERE pseudonym = $1
"""
# Past and running erasures, newest first: pseudonyms only (the store never holds the ids).
LIST = """
SELECT pseudonym, state, requested_at, finished_at, rows, dead_letters
FROM erased_subject ORDER BY requested_at DESC, pseudonym LIMIT $1
"""
# Definer functions (schema.sql, "Erasure through one function"): the caller names the subject
# and its pseudonym; the store finds its rows and values, and records every step itself.
REGISTER = "SELECT auditq_register_erasure($1)"
ERASE_STEP = """
SELECT changed, done, action_id
FROM auditq_erase_subject($1, $2, $3, $4, $5::text::jsonb, $6, $7::text[])
"""
# The values of the subject as its rows hold them (names, emails, client addresses): what
# the caller clears from Redis (the store finds them itself).
SUBJECT_VALUES = """
SELECT v FROM (
    SELECT v FROM audit_log a, unnest(ARRAY[a.actor_name, a.actor_email, host(a.ip)]) AS v
    WHERE a.actor_id = $1
    UNION
    SELECT entity_name FROM audit_log WHERE entity_id = $1 AND entity_type = ANY($2::text[])
) s WHERE v IS NOT NULL AND v <> ''
"""
# The subject's values to clear from other people's later events: every value but client
# addresses and those too common to clear everywhere (the store's rule).
UNCOMMON = "SELECT v FROM unnest($1::text[]) AS v WHERE NOT auditq_erase_value_is_common(v)"
# Keyed digests of those values (service/mentions.py), for the workers; and what they load.
# A value found in someone else's later event becomes `[erased]`, the id too: never the
# pseudonym, which would tell whoever chose that text the pseudonym of the id.
REGISTER_MENTIONS = "SELECT auditq_register_mentions($1, $2, $3, $4, $5, $6)"
MENTIONS = """
SELECT digest, anchor, words, NULL::text AS replacement, person_only FROM erased_mention
"""
# One erasure per subject at a time, across every API replica and CLI (a session lock).
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('auditq.erasure:' || $1, 0))"
LOCK = "SELECT pg_advisory_lock(hashtextextended('auditq.erasure:' || $1, 0))"
UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('auditq.erasure:' || $1, 0))"


async def erased(conn: Conn) -> frozenset[str]:
    """The pseudonyms of every erased subject."""
    return frozenset(r["pseudonym"] for r in await conn.fetch(ERASED))


async def mentions(
    conn: Conn,
) -> list[tuple[bytes, bytes, int, str | None, bool]]:
    """Every erased subject's value digests: (digest, anchor, words, replacement, whether
    only a field naming a person is cleared of it)."""
    return [
        (
            bytes(r["digest"]),
            bytes(r["anchor"]),
            int(r["words"]),
            r["replacement"],
            bool(r["person_only"]),
        )
        for r in await conn.fetch(MENTIONS)
    ]


async def erase_step(
    conn: Conn,
    *,
    subject_id: str,
    pseudonym: str,
    reason: str | None,
    dead_letters: int,
    by: dict[str, Any],
    limit: int,
    entity_types: list[str] | None = None,
) -> tuple[int, bool, int | None]:
    """One step (its own transaction): rows changed, whether the erasure is done, its action.

    `entity_types`: the configured subject types; the store narrows them to its policy's."""
    row = await conn.fetchrow(
        ERASE_STEP,
        subject_id,
        pseudonym,
        reason,
        dead_letters,
        msgspec.json.encode(by).decode(),
        limit,
        entity_types,
    )
    assert row is not None
    return int(row["changed"]), bool(row["done"]), row["action_id"]

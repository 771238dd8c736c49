"""SQL of erasure: the pseudonym key, the list of erased subjects, the anonymisation batches."""

from __future__ import annotations

from service.store.db import Conn

SUBJECT_KEY = "SELECT secret FROM subject_key"
ERASED = "SELECT pseudonym FROM erased_subject"
STATE = """
SELECT state, pseudonym, rows, dead_letters FROM erased_subject WHERE pseudonym = $1
"""
# Asked (again): running until this run ends; the counts add up over runs.
REGISTER = """
INSERT INTO erased_subject (pseudonym, state) VALUES ($1, 'running')
ON CONFLICT (pseudonym) DO UPDATE SET state = 'running', finished_at = NULL
"""
ADD_COUNTS = """
UPDATE erased_subject SET rows = rows + $2, dead_letters = dead_letters + $3 WHERE pseudonym = $1
"""
FINISH = "UPDATE erased_subject SET state = 'done', finished_at = now() WHERE pseudonym = $1"
# The values of the subject as they appear in its rows (names, emails, client addresses).
SUBJECT_VALUES = """
SELECT v FROM (
    SELECT v FROM audit_log a, unnest(ARRAY[a.actor_name, a.actor_email, host(a.ip)]) AS v
    WHERE a.actor_id = $1
    UNION
    SELECT entity_name FROM audit_log WHERE entity_id = $1 AND entity_type = ANY($2::text[])
) s WHERE v IS NOT NULL AND v <> ''
"""
ANONYMISE_ROWS = (
    "SELECT changed, last_seq, action_id FROM auditq_anonymise_rows($1, $2, $3, $4, $5, $6, $7)"
)
# One erasure per subject at a time, across every API replica and CLI (a session lock).
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('auditq.erasure:' || $1, 0))"
LOCK = "SELECT pg_advisory_lock(hashtextextended('auditq.erasure:' || $1, 0))"
UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('auditq.erasure:' || $1, 0))"


async def subject_key(conn: Conn) -> bytes:
    """The key of the pseudonyms (made by schema.sql)."""
    key = await conn.fetchval(SUBJECT_KEY)
    if key is None:
        raise LookupError("no subject key: apply schema.sql (auditq migrate)")
    return bytes(key)


async def erased(conn: Conn) -> frozenset[str]:
    """The pseudonyms of every erased subject."""
    return frozenset(r["pseudonym"] for r in await conn.fetch(ERASED))


async def anonymise_rows(
    conn: Conn,
    *,
    subject_id: str,
    pseudonym: str,
    entity_types: list[str],
    values: list[str],
    mentions: bool,
    after: int,
    limit: int,
) -> tuple[int, int, int | None]:
    """One batch (its own transaction): rows changed, last seq looked at, its store action."""
    row = await conn.fetchrow(
        ANONYMISE_ROWS, subject_id, pseudonym, entity_types, values, mentions, after, limit
    )
    assert row is not None
    return int(row["changed"]), int(row["last_seq"] or after), row["action_id"]

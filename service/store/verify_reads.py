"""What the verifications read (`auditq verify`; docs/integrity.md is the specification):
the canonical records of rows and actions as PostgreSQL sends them, the checkpoints, the
transparency log's batches, checkpoints and erasures, and what retention removed."""

from __future__ import annotations

import re

import asyncpg

from service.integrity.canonical import ROW_COLUMNS
from service.store.db import Conn
from service.store.leaves import LEAF_COLUMNS_TEXT_TIMES, rows_by_seq_ranges

# The canonical records (service/integrity/canonical.py): a row, over `audit_log a`.
ROW_RECORD = "ROW(" + ", ".join(f"a.{c}" for c in ROW_COLUMNS) + ")"
# An admin action: its columns and the digests of the rows it replaced (erasure), over
# `store_action s`.
ACTION_RECORD = """ROW(s.id, s.at, s.action, s.actor, s.detail, s.seqs::text,
    (SELECT string_agg(int8send(r.seq) || r.old_digest || r.new_digest, ''::bytea
                       ORDER BY r.seq)
     FROM row_replacement r WHERE r.action_id = s.id))"""

# What retention records (schema.sql): a whole partition dropped, old default-partition rows.
RETENTION_ACTIONS = frozenset({"partition.dropped", "retention.rows_deleted"})
# One range of an int8 range or multirange as PostgreSQL prints it: [lo,hi).
_RANGE = re.compile(r"[\[(](-?\d+),(-?\d+)[\])]")
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


def int8_ranges(text: str | None) -> list[tuple[int, int]]:
    """The (lo, hi) bounds of an int8 (multi)range's text, hi excluded."""
    return [(int(lo), int(hi)) for lo, hi in _RANGE.findall(text or "")]


# The checkpoints (`auditq verify`): those sealed in the window, and any whose seq span
# overlaps theirs (late commits).
CHECKPOINTS = """
WITH w AS (
    SELECT n, seq_min, seq_max FROM seal_checkpoint
    WHERE ($1::timestamptz IS NULL OR sealed_at >= $1)
      AND ($2::timestamptz IS NULL OR sealed_at < $2)
), span AS (SELECT min(seq_min) AS lo, max(seq_max) AS hi FROM w)
SELECT c.n, c.sealed_at, c.prev_hash, c.row_count, c.seq_min, c.seq_max, c.action_count,
       c.key_id, c.signature, sha256(c.rows) AS rows_hash, octet_length(c.rows) AS rows_bytes,
       c.actions
FROM seal_checkpoint c, span
WHERE c.n IN (SELECT n FROM w) OR (c.seq_max >= span.lo AND c.seq_min <= span.hi)
ORDER BY c.n
"""
STORED_HASH = "SELECT hash FROM seal_checkpoint WHERE n = $1"
OTHER_ACTION_ENTRIES = """
SELECT n, actions FROM seal_checkpoint WHERE action_count > 0 AND NOT (n = ANY($1::bigint[]))
"""
CHECKPOINT_ROWS = "SELECT rows FROM seal_checkpoint WHERE n = $1"
ROWS = f"""
SELECT record_send({ROW_RECORD}) FROM audit_log a
WHERE ($1::bigint IS NULL OR a.seq >= $1) AND ($2::bigint IS NULL OR a.seq <= $2)
ORDER BY a.seq
"""
# The same rows streamed (binary COPY of the record itself: the same bytes), so the server
# produces the next rows while the verifier hashes these.
ROWS_COPY = f"""
SELECT {ROW_RECORD} FROM audit_log a
WHERE ($1::bigint IS NULL OR a.seq >= $1) AND ($2::bigint IS NULL OR a.seq <= $2)
ORDER BY a.seq
"""
ACTIONS = f"""
SELECT s.id, s.at, s.action, s.detail, s.seqs::text AS seqs, record_send({ACTION_RECORD}) AS rec
FROM store_action s ORDER BY s.id
"""
REPLACEMENTS = """
SELECT seq, action_id, old_digest, new_digest FROM row_replacement
WHERE ($1::bigint IS NULL OR seq >= $1) AND ($2::bigint IS NULL OR seq <= $2)
ORDER BY seq, action_id
"""


# The log's rows by ranges of seq (as the sealer's NEW_ROWS), their times as text (in a
# session of DateStyle ISO: service/store/leaves.py).
ROWS_TEXT_TIMES = rows_by_seq_ranges(LEAF_COLUMNS_TEXT_TIMES)


# Since migration 0007 new rows go only into the transparency log: the v1 pass reads the
# rows up to where the log begins (or the last v1 checkpoint, whichever is later), and
# leaves the rows in the log, or queued for it, to the log's verification.
LOG_START = """
SELECT lower(row_seqs) FROM tlog_batch WHERE NOT isempty(row_seqs) ORDER BY first LIMIT 1
"""
IN_LOG = "SELECT coalesce(range_agg(r), '{}')::text FROM tlog_batch b, unnest(b.row_seqs) r"
ACTIONS_IN_LOG = (
    "SELECT coalesce(range_agg(r), '{}')::text FROM tlog_batch b, unnest(b.action_ids) r"
)
ACTIONS_QUEUED = """
SELECT coalesce(range_agg(r), '{}')::text FROM seal_pending p, unnest(p.seqs) r
WHERE p.kind = 'action'
"""
QUEUED = """
SELECT coalesce(range_agg(r), '{}')::text FROM seal_pending p, unnest(p.seqs) r
WHERE p.kind = 'row'
"""


async def export_snapshot(conn: Conn) -> str:
    """Export this transaction's snapshot, for a second connection to read the same rows."""
    snapshot: str = await conn.fetchval("SELECT pg_export_snapshot()")
    if not _SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    return snapshot


async def set_snapshot(conn: Conn, snapshot: str) -> None:
    """Read, in this transaction, what the exporting one reads."""
    if not _SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    # SET TRANSACTION takes no parameters; the id was checked above.
    await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


# The transparency log (its verification, and the erasures a receipt shows).
BATCHES = """
SELECT first, size, row_seqs::text AS row_seqs, action_ids::text AS action_ids, hashes
FROM tlog_batch ORDER BY first
"""
LOG_CHECKPOINTS = "SELECT size, note FROM tlog_checkpoint ORDER BY size"
RETAINED = """
SELECT id, seqs::text AS seqs FROM store_action
WHERE action = ANY($1::text[]) AND seqs IS NOT NULL
"""
PENDING = """
SELECT coalesce(range_agg(r), '{}')::text FROM seal_pending p, unnest(p.seqs) r
WHERE kind = 'row'
"""
# Rows of seq >= $1 neither logged ($2) nor queued ($3): read by the index over the gaps
# between those ranges only (a filter on every row after the log began cost about 1 µs of
# PostgreSQL's CPU a row). A range's last seq is upper - 1 (int8 ranges are [lo, hi)); the
# last gap has no upper bound.
UNLOGGED = """
SELECT a.id FROM unnest(
    int8multirange(int8range($1, NULL)) - $2::text::int8multirange - $3::text::int8multirange
) AS r
CROSS JOIN LATERAL (
    SELECT id, seq FROM audit_log
    WHERE seq >= lower(r) AND seq <= coalesce(upper(r) - 1, 9223372036854775807)
    ORDER BY seq
) a
ORDER BY a.seq LIMIT 1000
"""
# Rows and actions queued longer than the seal interval + grace: the sealer is not sealing.
STALE = """
SELECT p.kind, coalesce(sum(upper(r) - lower(r)), 0) AS n, min(p.queued_at) AS since
FROM seal_pending p, unnest(p.seqs) r
WHERE p.queued_at < now() - make_interval(secs => $1)
GROUP BY p.kind ORDER BY p.kind DESC
"""
ROW_ID = "SELECT id FROM audit_log WHERE seq = $1"
LOGGED_SEQS = "SELECT coalesce(range_agg(r), '{}')::text FROM tlog_batch b, unnest(b.row_seqs) r"
ERASURES = "SELECT leaf_index, before, after FROM tlog_erasure ORDER BY action_leaf, leaf_index"
ERASURE_ROWS = """
SELECT leaf_index, before, after FROM tlog_erasure WHERE action_leaf = $1 ORDER BY leaf_index
"""


async def erasure_rows(conn: Conn, action_leaf_index: int) -> list[asyncpg.Record]:
    """The rows one erasure changed: leaf index, leaf hash before and after."""
    records: list[asyncpg.Record] = await conn.fetch(ERASURE_ROWS, action_leaf_index)
    return records

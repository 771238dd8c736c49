"""Destinations in PostgreSQL: their rows, secrets, positions and health, and the rows to send.

A position is (xid, seq) over `delivery_log` (schema.sql, "Destinations"): the rows of every
entry before it were acknowledged by the receiver.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypedDict, Unpack

import asyncpg
import msgspec

from service.own_events import by_json
from service.store.db import Conn
from service.store.items import Filters, where_of

KINDS = ("webhook", "syslog", "splunk-hec", "elasticsearch")
FORMATS = ("json", "ocsf", "cef")
FAILING_AFTER = 3  # consecutive failed attempts that make a destination `failing`
LOCK_CLASS = 0x64657374  # "dest": the advisory lock class of destination runners

SELECT_DESTINATION = """
SELECT d.id, d.name, d.kind, d.url, d.format, d.filter, d.filter_json, d.options, d.paused,
       d.created_at, d.created_by, d.updated_at,
       s.pos_xid::text AS pos_xid, s.pos_seq, s.delivered_total, s.failed_attempts_total,
       s.consecutive_failures, s.last_delivered_at, s.last_error, s.last_error_at
FROM destination d JOIN destination_state s ON s.destination_id = d.id
"""
SELECT_ALL = SELECT_DESTINATION + "ORDER BY d.name"
SELECT_BY_NAME = SELECT_DESTINATION + "WHERE d.name = $1"
SELECT_BY_ID = SELECT_DESTINATION + "WHERE d.id = $1"
SELECT_IDS = "SELECT id FROM destination ORDER BY id"
SELECT_SECRET = "SELECT secret FROM destination_secret WHERE destination_id = $1"

# Changes go through the definer functions of schema.sql (3.6), each storing its
# destination.* event in the same transaction; `by` is who asked (actor, request, source).
ADD_DESTINATION = """
SELECT auditq_add_destination($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb)
"""
UPDATE_DESTINATION = """
SELECT auditq_update_destination($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb)
"""
SET_PAUSED = "SELECT auditq_set_destination_paused($1, $2, $3::text::jsonb)"
REMOVE_DESTINATION = "SELECT auditq_remove_destination($1, $2::text::jsonb)"
BACKFILL = "SELECT auditq_backfill_destination($1, $2, $3::text::jsonb)"

# A new destination starts at the oldest transaction still running: every row committed
# from then on is sent (and perhaps a few committed just before; at least once).
CURRENT_START = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, -1::bigint"
# Backfill from T: just before the first entry stored at or after T (xid order is near
# stored order; an entry a little older that sorts after it is sent too: at least once).
START_AT = """
SELECT (min(xid)::text), -1::bigint FROM delivery_log WHERE stored_at >= $1
"""
# The owner's only (tests): the runtime roles move a position through the runner's ADVANCE
# or a recorded backfill.
MOVE_POSITION = """
UPDATE destination_state SET pos_xid = $2::text::xid8, pos_seq = $3 WHERE destination_id = $1
"""

# The next window of entries after a position, below every transaction still running.
SELECT_WINDOW = """
SELECT xid::text AS xid, seq_lo, seq_hi, n
FROM delivery_log
WHERE xid >= $1::text::xid8 AND (xid, seq_hi) > ($1::text::xid8, $2)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, seq_lo
LIMIT $3
"""
# The rows of the entries in (position, end], in (xid, seq) order, each marked whether the
# destination's filter wants it. $1..$5: from xid, from seq, to xid, to seq, limit; the
# filter's parameters follow.
# The rows of the entries in (position, end], in (xid, seq) order, each marked whether the
# destination's filter wants it; the JSON columns as their text (the runner sends them as is).
# $1..$5: from xid, from seq, to xid, to seq, limit; the filter's parameters follow.
SELECT_ROWS = """
SELECT d.xid::text AS xid, a.*
FROM delivery_log d
CROSS JOIN LATERAL (
    SELECT seq, ({filter}) AS wanted, id, ts, received_at, action, category, severity, outcome,
           actor_id, actor_type, actor_name, actor_email, entity_type, entity_id, entity_name,
           tenant, request_id, host(ip) AS ip, user_agent, method, path, status, duration_ms,
           changes::text AS changes, metadata::text AS metadata,
           presentation::text AS presentation, source, received_via
    FROM audit_log
    WHERE seq BETWEEN d.seq_lo AND d.seq_hi
      AND (d.seqs IS NULL OR seq <@ d.seqs)
      AND (d.xid > $1::text::xid8 OR seq > $2)
      AND (d.xid < $3::text::xid8 OR seq <= $4)
) a
WHERE d.xid >= $1::text::xid8 AND (d.xid, d.seq_hi) > ($1::text::xid8, $2)
  AND d.xid <= $3::text::xid8 AND (d.xid, d.seq_lo) <= ($3::text::xid8, $4)
ORDER BY d.xid, a.seq
LIMIT $5
"""
JSON_COLUMNS = ("changes", "metadata", "presentation")  # read as their JSON text
# Acknowledged: move from the position read to the new one (none moved it meanwhile).
ADVANCE = """
UPDATE destination_state
SET pos_xid = $4::text::xid8, pos_seq = $5,
    delivered_total = delivered_total + $6,
    last_delivered_at = CASE WHEN $6 > 0 THEN now() ELSE last_delivered_at END,
    consecutive_failures = 0
WHERE destination_id = $1 AND pos_xid = $2::text::xid8 AND pos_seq = $3
"""
RECORD_FAILURE = """
UPDATE destination_state
SET failed_attempts_total = failed_attempts_total + 1,
    consecutive_failures = consecutive_failures + 1,
    last_error = $2, last_error_at = now()
WHERE destination_id = $1
RETURNING consecutive_failures
"""
# Lag: the rows after the position (a partly sent entry counts whole) and the oldest one's age.
SELECT_LAG = """
SELECT coalesce(sum(l.n), 0)::bigint AS lag_events,
       coalesce(extract(epoch FROM now() - min(l.stored_at)), 0)::float8 AS lag_s
FROM delivery_log l
WHERE l.xid >= $1::text::xid8 AND (l.xid, l.seq_hi) > ($1::text::xid8, $2)
"""
PRUNE = "SELECT public.auditq_prune_delivery_log($1)"
TRY_LOCK = "SELECT pg_catalog.pg_try_advisory_lock($1::int4, $2::int4)"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a destination stands: every row up to (xid, seq) is acknowledged."""

    xid: str  # xid8 as text (asyncpg has no codec for it)
    seq: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Destination:
    """A destination as stored, with its position and counters (never its secret)."""

    id: int
    name: str
    kind: str
    url: str
    format: str
    filter: str
    filter_json: dict[str, Any]
    options: dict[str, Any]
    paused: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    position: Position
    delivered_total: int
    failed_attempts_total: int
    consecutive_failures: int
    last_delivered_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None

    @property
    def state(self) -> str:
        """`paused`, `failing` (after FAILING_AFTER failed attempts in a row) or `active`."""
        if self.paused:
            return "paused"
        if self.consecutive_failures >= FAILING_AFTER:
            return "failing"
        return "active"


def _destination(row: asyncpg.Record) -> Destination:
    return Destination(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        url=row["url"],
        format=row["format"],
        filter=row["filter"],
        filter_json=row["filter_json"],
        options=row["options"],
        paused=row["paused"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        updated_at=row["updated_at"],
        position=Position(row["pos_xid"], row["pos_seq"]),
        delivered_total=row["delivered_total"],
        failed_attempts_total=row["failed_attempts_total"],
        consecutive_failures=row["consecutive_failures"],
        last_delivered_at=row["last_delivered_at"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
    )


async def list_destinations(conn: Conn) -> list[Destination]:
    """Every destination, by name."""
    return [_destination(row) for row in await conn.fetch(SELECT_ALL)]


async def destination_ids(conn: Conn) -> list[int]:
    """The ids of every destination."""
    return [row["id"] for row in await conn.fetch(SELECT_IDS)]


async def get_destination(conn: Conn, name: str) -> Destination | None:
    """The destination of that name, or None."""
    row = await conn.fetchrow(SELECT_BY_NAME, name)
    return None if row is None else _destination(row)


async def get_destination_by_id(conn: Conn, ident: int) -> Destination | None:
    """The destination of that id, or None (removed)."""
    row = await conn.fetchrow(SELECT_BY_ID, ident)
    return None if row is None else _destination(row)


async def read_secret(conn: Conn, ident: int) -> str | None:
    """The destination's secret, to sign or authenticate a delivery; never to show."""
    secret: str | None = await conn.fetchval(SELECT_SECRET, ident)
    return secret


async def start_position(conn: Conn, since: datetime | None) -> Position:
    """Where a destination starts: now, or just before the rows stored since `since`."""
    if since is not None:
        row = await conn.fetchrow(START_AT, since)
        if row is not None and row[0] is not None:
            return Position(row[0], row[1])
    row = await conn.fetchrow(CURRENT_START)
    assert row is not None
    return Position(row[0], row[1])


class NewDestination(TypedDict):
    """A destination to add, as `add_destination` takes it."""

    name: str
    kind: str
    url: str
    format: str
    filter: str
    filter_json: dict[str, Any]
    options: dict[str, Any]
    secret: str | None
    since: datetime | None
    created_by: str


async def add_destination(
    conn: Conn, *, by: dict[str, Any] | None = None, **new: Unpack[NewDestination]
) -> int | None:
    """Store a new destination with its destination.created event (None, and no event, when
    the name is taken); it starts now or at `since`."""
    ident: int | None = await conn.fetchval(
        ADD_DESTINATION,
        new["name"],
        new["kind"],
        new["url"],
        new["format"],
        new["filter"],
        new["filter_json"],
        new["options"],
        new["secret"],
        new["since"],
        new["created_by"],
        by_json(by),
    )
    return ident


async def update_destination(
    conn: Conn,
    current: Destination,
    *,
    secret: str | None,
    clear_secret: bool,
    changed: list[str],
    by: dict[str, Any] | None = None,
) -> bool:
    """Store `current`'s new settings (and a new secret, or none) with the event of the
    change: destination.paused or .resumed when `changed` is only `paused`, else
    destination.updated. False when it is gone."""
    done: bool = await conn.fetchval(
        UPDATE_DESTINATION,
        current.id,
        current.url,
        current.format,
        current.filter,
        current.filter_json,
        current.options,
        current.paused,
        secret,
        clear_secret,
        changed,
        by_json(by),
    )
    return done


async def remove_destination(conn: Conn, name: str, *, by: dict[str, Any] | None = None) -> bool:
    """Remove a destination, its secret and position, with its destination.removed event;
    False when there is none of that name."""
    done: bool = await conn.fetchval(REMOVE_DESTINATION, name, by_json(by))
    return done


async def set_paused(
    conn: Conn, name: str, paused: bool, *, by: dict[str, Any] | None = None
) -> bool:
    """Pause or resume, with its destination.paused or .resumed event; False when there is
    no destination of that name."""
    done: bool = await conn.fetchval(SET_PAUSED, name, paused, by_json(by))
    return done


async def backfill(
    conn: Conn, ident: int, since: datetime, *, by: dict[str, Any] | None = None
) -> Position | None:
    """Send again every row stored since `since`: move the position back to before them,
    with its destination.backfilled event. None when the destination is gone."""
    xid: str | None = await conn.fetchval(BACKFILL, ident, since, by_json(by))
    return None if xid is None else Position(xid, -1)


async def lag(conn: Conn, position: Position) -> tuple[int, float]:
    """The rows stored after `position`, and how long the oldest of them has waited (s)."""
    row = await conn.fetchrow(SELECT_LAG, position.xid, position.seq)
    assert row is not None
    return int(row["lag_events"]), float(row["lag_s"])


async def next_rows(
    conn: Conn,
    position: Position,
    filters: Filters,
    *,
    max_rows: int,
) -> tuple[list[asyncpg.Record], Position]:
    """The rows after `position`, in (xid, seq) order, and the position after them.

    Rows the filter does not want come back with `wanted` false: they are passed over, not
    sent; the JSON columns come back as their JSON text. At most about `max_rows` rows
    (entries are read whole unless one alone is larger).
    """
    # An entry holds one row at least: max_rows entries always hold max_rows rows.
    window = await conn.fetch(SELECT_WINDOW, position.xid, position.seq, max_rows)
    if not window:
        return [], position
    total, last = 0, window[-1]
    for entry in window:
        total += entry["n"]
        last = entry
        if total >= max_rows:
            break
    end = Position(last["xid"], last["seq_hi"])
    base = [position.xid, position.seq, end.xid, end.seq, max_rows]
    where = where_of(filters, args=base)
    rows = await conn.fetch(SELECT_ROWS.format(filter=where.condition()), *where.args)
    if len(rows) >= max_rows:  # one large entry: stop at the last row read
        end = Position(rows[-1]["xid"], rows[-1]["seq"])
    return list(rows), end


async def advance(conn: Conn, ident: int, old: Position, new: Position, *, delivered: int) -> bool:
    """Record an acknowledged batch; False when the position was moved meanwhile (backfill)."""
    status: str = await conn.execute(ADVANCE, ident, old.xid, old.seq, new.xid, new.seq, delivered)
    return status.endswith(" 1")


async def record_failure(conn: Conn, ident: int, error: str) -> int:
    """Count a failed attempt with its (redacted) error; the failures in a row so far."""
    count: int | None = await conn.fetchval(RECORD_FAILURE, ident, error[:1000])
    return count or 0


async def prune(conn: Conn, *, limit: int = 100_000) -> int:
    """Remove delivery log entries every destination passed whose rows are gone (schema.sql,
    auditq_prune_delivery_log); how many went."""
    pruned: int = await conn.fetchval(PRUNE, limit)
    return pruned


async def try_lock(conn: Conn, ident: int) -> bool:
    """Take the session lock that makes this connection the destination's one runner."""
    return bool(await conn.fetchval(TRY_LOCK, LOCK_CLASS, ident))


class StoredFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A destination's filter as stored (validated by the API or CLI when it was set)."""

    action: str | list[str] | None = None
    action_prefix: str | None = None
    category: str | None = None
    severity: str | list[str] | None = None
    outcome: str | None = None
    actor_id: str | list[str] | None = None
    entity_type: str | list[str] | None = None
    entity_id: str | None = None
    tenant: str | list[str] | None = None
    request_id: str | None = None
    ip: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None


def stored_filter(data: dict[str, Any]) -> StoredFilter:
    """A stored filter, read back."""
    return msgspec.convert(data, StoredFilter, strict=False)

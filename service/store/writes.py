"""The worker's writes: many events in one idempotent INSERT (from arrays or from the job's
JSON text), under the advisory lock that orders id probes against keyed writes.

The hottest statement auditq runs: one call a batch, never a layer a row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from service.events import AuditEvent
from service.queue.live import live_entry_of_ranges

_INSERT_INTO = """
INSERT INTO audit_log (
    id, ts, action, category, severity, outcome,
    actor_id, actor_type, actor_name, actor_email,
    entity_type, entity_id, entity_name, tenant,
    request_id, ip, user_agent, method, path, status, duration_ms,
    changes, metadata, presentation, source, received_via)
"""
# One statement for the whole batch: arrays in, unnest; redelivered events are skipped.
_INSERT_FROM_ARRAYS = (
    _INSERT_INTO
    + """SELECT id, ts, action, category, severity, outcome,
       actor_id, actor_type, actor_name, actor_email,
       entity_type, entity_id, entity_name, tenant,
       request_id, ip::inet, user_agent, method, path, status, duration_ms,
       changes::jsonb, metadata::jsonb, presentation::jsonb, source, $26::text
FROM unnest(
    $1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[],
    $11::text[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::int[], $21::float8[],
    $22::text[], $23::text[], $24::text[], $25::text[])
    AS u(id, ts, action, category, severity, outcome,
         actor_id, actor_type, actor_name, actor_email,
         entity_type, entity_id, entity_name, tenant,
         request_id, ip, user_agent, method, path, status, duration_ms,
         changes, metadata, presentation, source)
"""
)
# The key is (id, ts) per partition; the id alone is the idempotency key, whatever the ts.
INSERT_EVENTS = (
    _INSERT_FROM_ARRAYS
    + """WHERE NOT EXISTS (SELECT FROM audit_log a WHERE a.id = u.id)
ON CONFLICT (id, ts) DO NOTHING
RETURNING seq, ts
"""
)
# For events whose producer fixed id and ts together at capture (auditq's client), a second
# delivery carries the same ts, so the key alone catches it: no probe of every partition's
# index for the id (a sixth of the statement's cost with 8 partitions, more with each month).
INSERT_KEYED_EVENTS = _INSERT_FROM_ARRAYS + "ON CONFLICT (id, ts) DO NOTHING\nRETURNING seq, ts\n"
N_COLUMNS = 25

# The same rows built by PostgreSQL from the job's JSON text itself (events its producer
# completed and checked: service/producer), in one parameter: the worker neither decodes the
# events into objects nor encodes 25 arrays. The defaults the encoding omits are filled as
# the events' own ones (service/events.py); `presentation` as _columns stores it.
_INSERT_FROM_JSON = (
    _INSERT_INTO
    + """SELECT u.id, u.ts, u.action, u.category,
       coalesce(u.severity, 'info'), coalesce(u.outcome, 'success'),
       u.actor ->> 'id', u.actor ->> 'type', u.actor ->> 'name', u.actor ->> 'email',
       u.entity ->> 'type', u.entity ->> 'id', u.entity ->> 'name', u.tenant,
       u.request ->> 'id', (u.request ->> 'ip')::inet, u.request ->> 'user_agent',
       u.request ->> 'method', u.request ->> 'path', (u.request ->> 'status')::int,
       (u.request ->> 'duration_ms')::float8,
       u.changes, u.metadata,
       jsonb_build_object('code', u.presentation ->> 'code',
                          'params', coalesce(u.presentation -> 'params', '{}'::jsonb)),
       u.source, $2::text
FROM jsonb_to_recordset($1::text::jsonb) AS u(
    id uuid, ts timestamptz, action text, category text, severity text, outcome text,
    actor jsonb, entity jsonb, tenant text, request jsonb,
    changes jsonb, metadata jsonb, presentation jsonb, source text)
"""
)
# Which rows are new, as the live stream's entry holds them (service/queue/live.py): seq ranges in
# PostgreSQL's own multirange text, and the span of their ts.
_KEYS_OF_NEW_ROWS = """
SELECT count(*), range_agg(int8range(seq, seq, '[]'))::text, min(ts), max(ts) FROM new_rows
"""
INSERT_JSON_EVENTS = (
    "WITH new_rows AS ("
    + _INSERT_FROM_JSON
    + """WHERE NOT EXISTS (SELECT FROM audit_log a WHERE a.id = u.id)
ON CONFLICT (id, ts) DO NOTHING
RETURNING seq, ts)"""
    + _KEYS_OF_NEW_ROWS
)
INSERT_KEYED_JSON_EVENTS = (
    "WITH new_rows AS ("
    + _INSERT_FROM_JSON
    + "ON CONFLICT (id, ts) DO NOTHING\nRETURNING seq, ts)"
    + _KEYS_OF_NEW_ROWS
)
# The id probe of INSERT_EVENTS sees only committed rows: two deliveries of one id with two
# ts, written at once, would both find nothing. So writes that probe take this lock alone, and
# keyed writes (which cannot race that way among themselves) share it: a probing write runs
# after every keyed write in flight has committed, and before the next ones.
DEDUPE_LOCK = 0x61756471  # "audq"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared($1)"
LOCK_ALONE = "SELECT pg_advisory_xact_lock($1)"


_encoder = msgspec.json.Encoder()


def _json(value: object) -> str | None:
    return None if value is None else _encoder.encode(value).decode()


def _columns(events: Sequence[AuditEvent]) -> list[list[Any]]:
    """Turn events (with defaults filled) into one list per column."""
    columns: list[list[Any]] = [[] for _ in range(N_COLUMNS)]
    for e in events:
        actor, entity, request = e.actor, e.entity, e.request
        presentation = e.presentation
        row = (
            e.id,
            e.ts,
            e.action,
            e.category,
            e.severity,
            e.outcome,
            actor and actor.id,
            actor and actor.type,
            actor and actor.name,
            actor and actor.email,
            entity and entity.type,
            entity and entity.id,
            entity and entity.name,
            e.tenant,
            request and request.id,
            request and request.ip,
            request and request.user_agent,
            request and request.method,
            request and request.path,
            request and request.status,
            request and request.duration_ms,
            _json(e.changes),
            _json(e.metadata),
            _json(presentation and {"code": presentation.code, "params": presentation.params}),
            e.source,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


async def insert_rows(
    conn: asyncpg.Connection, events: Sequence[AuditEvent], *, keyed: bool, via: str
) -> list[asyncpg.Record]:
    """Insert `events` in one statement; return (seq, ts) of the new rows.

    `keyed`: each event's ts was fixed with its id by the producer (INSERT_KEYED_EVENTS).
    Raises what PostgreSQL raises: one bad row fails the whole statement.
    """
    statement = INSERT_KEYED_EVENTS if keyed else INSERT_EVENTS
    # Its own statement, first: the probe's snapshot is then taken once the lock is held.
    async with conn.transaction():
        await conn.execute(LOCK_SHARED if keyed else LOCK_ALONE, DEDUPE_LOCK)
        rows: list[asyncpg.Record] = await conn.fetch(statement, *_columns(events), via)
    return rows


async def write_json_events(
    conn: asyncpg.Connection, payload: str, *, received_via: str, keyed: bool = False
) -> tuple[int, dict[str, bytes] | None]:
    """Store the events of a JSON array its producer completed and checked, in one statement;
    return how many rows are new and their live stream entry (service/queue/live.py; None for none).

    Raises what PostgreSQL raises, a data error included: nothing is stored then, and the
    caller stores the events one by one instead (write_events), which isolates the bad ones.
    """
    async with conn.transaction():
        await conn.execute(LOCK_SHARED if keyed else LOCK_ALONE, DEDUPE_LOCK)
        row = await conn.fetchrow(
            INSERT_KEYED_JSON_EVENTS if keyed else INSERT_JSON_EVENTS, payload, received_via
        )
    assert row is not None
    new = int(row[0])
    return new, live_entry_of_ranges(row[1], row[2], row[3]) if new else None

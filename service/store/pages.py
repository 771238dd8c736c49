"""Reading audit logs for the API: a keyset page and its total, one row, every matching row
for an export (CSV written by PostgreSQL), and the rows of one write for the live tail.

The columns, the WHERE of the filters and a row as an item are items.py's."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from service.queue.live import LiveEntry
from service.store.db import Conn
from service.store.items import (
    AFTER_ASC,
    AFTER_DESC,
    ORDER_BY,
    SELECT_ITEMS,
    SELECT_ONE,
    Filters,
    where_of,
)

# A total is counted for at most this long, then estimated by the planner (and labelled so):
# an exact count over a million rows costs more than a page view should wait.
COUNT_BUDGET_MS = 100
SET_COUNT_BUDGET = f"SET LOCAL statement_timeout = {COUNT_BUDGET_MS}"
COUNT = "SELECT count(*) FROM audit_log "
ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM audit_log "


class Ordered(Filters, Protocol):
    """Filters, and the order of the walk."""

    @property
    def order(self) -> str: ...


class Page(Ordered, Protocol):
    """Filters, the order and the page's size."""

    @property
    def limit(self) -> int: ...


class Key(Protocol):
    """Where the previous page ended: its last row's time and id."""

    @property
    def ts(self) -> datetime: ...
    @property
    def id(self) -> uuid.UUID: ...


def page_query(query: Page, after: Key | None) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page: keyset on (ts, id), one row more than asked."""
    where = where_of(query)
    if after is not None:
        where.add(AFTER_DESC if query.order == "desc" else AFTER_ASC, after.ts, after.id)
    # The extra row tells whether a next page exists, without a count or an OFFSET.
    sql = f"{SELECT_ITEMS}{where.sql()} {ORDER_BY[query.order]} LIMIT ${len(where.args) + 1}"
    return sql, [*where.args, query.limit + 1]


async def total(conn: Conn, query: Filters) -> dict[str, Any]:
    """The rows matching: counted within COUNT_BUDGET_MS, else the planner's estimate."""
    where = where_of(query)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(SET_COUNT_BUDGET)
            counted = await conn.fetchval(f"{COUNT}{where.sql()}", *where.args)
        return {"count": counted, "exact": True}
    except asyncpg.QueryCanceledError:
        pass
    plan = await conn.fetchval(f"{ESTIMATE}{where.sql()}", *where.args)
    if isinstance(plan, str):
        plan = json.loads(plan)
    return {"count": int(plan[0]["Plan"]["Plan Rows"]), "exact": False}


async def one(conn: Conn, event_id: uuid.UUID) -> asyncpg.Record | None:
    """The row of one id, None when none is stored."""
    return await conn.fetchrow(SELECT_ONE, event_id)


# Export.
CSV_HEADER = (
    "id",
    "ts",
    "received_at",
    "action",
    "category",
    "severity",
    "outcome",
    "actor_id",
    "actor_type",
    "actor_name",
    "actor_email",
    "entity_type",
    "entity_id",
    "entity_name",
    "tenant",
    "request_id",
    "ip",
    "user_agent",
    "method",
    "path",
    "status",
    "duration_ms",
    "changes",
    "metadata",
    "presentation",
    "source",
    "received_via",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# CSV is written by PostgreSQL (COPY … CSV: quoting in C, no row decoded in Python), from
# cells the SELECT already made text: times in RFC 3339 with a Z, nested values as their
# JSON text, and a would-be formula with its "'". Through Python's csv module an export ran at
# ~20,000 rows/s; this way it is bound by the scan.
_UTC = "{0} AT TIME ZONE 'UTC'"
_RFC3339 = (
    "to_char(" + _UTC + ", 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
    "extract(microseconds FROM {0})::int % 1000000 = 0 THEN '' "
    "ELSE to_char(" + _UTC + ", '.US') END || 'Z'"
)
_CSV_TEXT = {
    "id": "id::text",
    "ts": _RFC3339.format("ts"),
    "received_at": _RFC3339.format("received_at"),
    "ip": "host(ip)",
    "status": "status::text",
    # Python's str() of a float: a whole number keeps its ".0".
    "duration_ms": "CASE WHEN duration_ms = trunc(duration_ms) AND abs(duration_ms) < 1e15 "
    "THEN trunc(duration_ms)::bigint::text || '.0' ELSE duration_ms::text END",
    "changes": "changes::text",
    "metadata": "metadata::text",
    "presentation": "presentation::text",
}
_CANNOT_BE_FORMULA = frozenset({"id", "ts", "received_at", "ip", "changes", "metadata"})
_FORMULA_SQL = "left({0}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r')"


def _csv_select_cell(column: str) -> str:
    text = _CSV_TEXT.get(column, column)
    if column in _CANNOT_BE_FORMULA:
        return text
    return f"CASE WHEN {_FORMULA_SQL.format(text)} THEN '''' || {text} ELSE {text} END"


# Output names of their own: ORDER BY ts must sort by the column, not by its text.
SELECT_CSV = (
    "SELECT "
    + ",\n    ".join(f"{_csv_select_cell(c)} AS csv_{c}" for c in CSV_HEADER)
    + "\nFROM audit_log\n"
)


def export_query(query: Ordered, *, csv: bool = False) -> tuple[str, list[Any]]:
    """The SQL and parameters of an export: every matching row, in the query's order.

    For CSV, the query whose rows COPY … (FORMAT csv) writes."""
    where = where_of(query)
    select = SELECT_CSV if csv else SELECT_ITEMS
    return f"{select}{where.sql()} {ORDER_BY[query.order]}", where.args


# The live tail: the rows of one write (service/queue/live.py), narrowed by the page's filters.
ROWS_OF_WRITE = "seq <@ {}::text::int8multirange AND ts BETWEEN {} AND {}"
STREAM_ORDER_BY = "ORDER BY received_at, id"


def write_rows_query(
    query: Filters, write: LiveEntry, *, limit: int, offset: int = 0
) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page of the rows of one write that match the filters."""
    where = where_of(query)
    where.add(ROWS_OF_WRITE, write.seqs, write.ts_from, write.ts_to)
    # No more rows than the entry names, and those a page at a time: never a whole table.
    args = [*where.args, min(write.row_count, limit), offset]
    n = len(args)
    return f"{SELECT_ITEMS}{where.sql()} {STREAM_ORDER_BY} LIMIT ${n - 1} OFFSET ${n}", args


# `{column}` and `{scope}` are fixed strings below; $1 the prefix, $2 how many, $3 the type.
_SKIP_SCAN = """
WITH RECURSIVE v(value) AS (
    SELECT (SELECT {column} FROM audit_log WHERE {column} >= $1 {scope}
            ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT {column} FROM audit_log WHERE {column} > v.value {scope}
            ORDER BY {column} LIMIT 1)
    FROM v WHERE v.value IS NOT NULL AND starts_with(v.value, $1)
)
SELECT value FROM v WHERE value IS NOT NULL AND starts_with(value, $1) LIMIT $2
"""
SUGGEST: dict[str, str] = {
    "action": _SKIP_SCAN.format(column="action", scope=""),
    "entity_type": _SKIP_SCAN.format(column="entity_type", scope=""),
    "entity_id": _SKIP_SCAN.format(column="entity_id", scope="AND entity_type = $3"),
}


async def suggestions(conn: Conn, field: str, prefix: str, limit: int, *scope: str) -> list[str]:
    """Stored values of `field` from `prefix` on (one index probe a value; `scope`: the
    entity type, for entity ids)."""
    return [r["value"] for r in await conn.fetch(SUGGEST[field], prefix, limit, *scope)]

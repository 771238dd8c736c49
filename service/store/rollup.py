"""The statistics rollup: stored rows folded into counts per UTC day, and a window read from it.

schema.sql keeps the rollup exact under every snapshot: each inserting statement queues its
seqs in `rollup_pending` (committed with the rows, as `seal_pending` is); the worker's fold
moves committed entries into `rollup_day`, `rollup_day_tenant` and `rollup_day_actor` in one
transaction; retention and erasure take the rows they remove or change out of the rollup in
theirs. So in one snapshot every row is counted exactly once: folded, or still pending.

A window's statistics (docs/scaling.md, "Statistics") are then the rollup of its days, plus
the rows still pending on those days, corrected at its two edge days from the rows
themselves: an edge day is taken whole from the rollup less its rows outside the window, or
left out and its rows inside the window counted, whichever side of the day is shorter.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from service.store.db import Conn

FOLD = "SELECT auditq_rollup_fold($1)"
FOLD_ENTRIES = 50  # pending entries (inserting statements) folded per transaction
FOLD_BUSY_PAUSE = 0.05  # seconds fold_all waits while another fold holds the lock
NO_DAYS = (date.max, date.min)  # first and last day of an empty range

# Parameters: $1 since, $2 until (the window, inclusive), $3 and $4 the first and last day
# taken from the rollup, $5..$8 two spans of time holding every edge row to correct (an
# index range each), $9 the entries of a top list, $10 the tenant.
_IN_WINDOW = "(a.ts >= $1 AND a.ts <= $2)"
_ROLLED_DAY = "((a.ts AT TIME ZONE 'UTC')::date BETWEEN $3 AND $4)"
_ROLLED_SPAN = (
    "a.ts >= ($3::timestamp AT TIME ZONE 'UTC') AND a.ts < (($4 + 1)::timestamp AT TIME ZONE 'UTC')"
)
# Rows that correct the rollup: +1 for a row in the window on a day left out, -1 for a row
# outside it on a day taken, +1 for a row of a day taken that is not folded yet.
_CORRECTIONS = f"""
SELECT (a.ts AT TIME ZONE 'UTC')::date AS day, a.actor_id, a.action, a.severity, a.outcome,
       CASE WHEN {_IN_WINDOW} THEN 1 ELSE -1 END::bigint AS n
FROM audit_log a
WHERE ((a.ts >= $5 AND a.ts <= $6) OR (a.ts >= $7 AND a.ts <= $8))
  AND {_IN_WINDOW} <> {_ROLLED_DAY} {{tenant}}
UNION ALL
SELECT (a.ts AT TIME ZONE 'UTC')::date, a.actor_id, a.action, a.severity, a.outcome, 1::bigint
FROM rollup_pending p, unnest(p.seqs) AS r, LATERAL (  -- OFFSET 0: by the seq index, always
    SELECT * FROM audit_log a WHERE a.seq >= lower(r) AND a.seq < upper(r) OFFSET 0) AS a
WHERE {_ROLLED_SPAN} AND {_ROLLED_DAY} {{tenant}}
"""
# The top lists are ranked here, as the live query ordered them (the database's collation).
_TOTALS = """
SELECT 'day' AS kind, NULL::text AS key, day, sum(n)::bigint AS count, NULL::bigint AS rank
FROM facts GROUP BY day
UNION ALL
(SELECT 'action', action, NULL, sum(n)::bigint, row_number() OVER (ORDER BY sum(n) DESC, action)
 FROM facts GROUP BY action HAVING sum(n) > 0 ORDER BY 5 LIMIT $9)
UNION ALL
SELECT 'severity', severity, NULL, sum(n)::bigint, NULL FROM facts GROUP BY severity
UNION ALL
SELECT 'outcome', outcome, NULL, sum(n)::bigint, NULL FROM facts GROUP BY outcome
UNION ALL
(SELECT 'actor', actor_id, NULL, sum(n)::bigint, row_number() OVER (ORDER BY sum(n) DESC, actor_id)
 FROM actors GROUP BY actor_id HAVING sum(n) > 0 ORDER BY 5 LIMIT $9)
"""
STATISTICS = f"""
WITH corrections AS MATERIALIZED ({_CORRECTIONS.format(tenant="")}),
facts AS MATERIALIZED (
    SELECT day, action, severity, outcome, n FROM rollup_day WHERE day BETWEEN $3 AND $4
    UNION ALL
    SELECT day, action, severity, outcome, n FROM corrections
),
actors AS (
    SELECT actor_id, n FROM rollup_day_actor WHERE day BETWEEN $3 AND $4
    UNION ALL
    SELECT actor_id, n FROM corrections WHERE actor_id IS NOT NULL
)
{_TOTALS}
"""
# A tenant's actors are counted from its rows (the tenant index): by tenant, day and actor
# the rollup would be nearly as many rows as the log.
STATISTICS_OF_TENANT = f"""
WITH corrections AS MATERIALIZED ({_CORRECTIONS.format(tenant="AND a.tenant = $10")}),
facts AS MATERIALIZED (
    SELECT day, action, severity, outcome, n FROM rollup_day_tenant
    WHERE tenant = $10 AND day BETWEEN $3 AND $4
    UNION ALL
    SELECT day, action, severity, outcome, n FROM corrections
),
actors AS (
    SELECT a.actor_id, 1::bigint AS n FROM audit_log a
    WHERE {_IN_WINDOW} AND a.tenant = $10 AND a.actor_id IS NOT NULL
)
{_TOTALS}
"""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a window is read: the days taken from the rollup, and the spans read from rows."""

    first_day: date  # taken from the rollup: first_day..last_day (none when first > last)
    last_day: date
    spans: tuple[tuple[datetime, datetime], tuple[datetime, datetime]]  # inclusive


@dataclasses.dataclass(frozen=True)
class Statistics:
    per_day: dict[date, int]
    top_actors: list[tuple[str, int]]
    top_actions: list[tuple[str, int]]
    by_severity: dict[str, int]
    by_outcome: dict[str, int]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def plan(since: datetime, until: datetime, now: datetime | None = None) -> Plan:
    """The cheaper reading of the window [since, until] (since <= until): each edge day taken
    whole from the rollup less its rows outside the window, or left out and its rows inside
    counted, whichever part of the day is shorter. A day's part after `now` (default: the
    clock) holds no rows, so the day of a window ending now is taken whole."""
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    now = (now or datetime.now(UTC)).astimezone(UTC)

    def held(lo: datetime, hi: datetime) -> timedelta:
        """How much of [lo, hi] can hold rows (none after now)."""
        return max(min(hi, now) - lo, timedelta(0))

    first, last = since.date(), until.date()
    if first == last:
        # One day: whole from the rollup less both ends, or the window from its rows.
        if first < date.max:
            day_start, day_end = _midnight(first), _midnight(first + timedelta(days=1))
            if held(day_start, since) + held(until, day_end) < held(since, until):
                return Plan(first, first, ((day_start, since), (until, day_end)))
        return Plan(*NO_DAYS, ((since, until), (until, until)))
    first_start, first_end = _midnight(first), _midnight(first + timedelta(days=1))
    last_start = _midnight(last)
    last_end = _midnight(last + timedelta(days=1)) if last < date.max else None
    take_first = held(first_start, since) < held(since, first_end)
    take_last = last_end is not None and held(until, last_end) < held(last_start, until)
    head = (first_start, since) if take_first else (since, first_end)
    tail = (until, last_end) if take_last and last_end else (last_start, until)
    return Plan(
        first if take_first else first + timedelta(days=1),
        last if take_last else last - timedelta(days=1),
        (head, tail),
    )


async def statistics(
    conn: Conn, since: datetime, until: datetime, tenant: str | None, *, top: int
) -> Statistics:
    """The window's counts; run it in one snapshot (a repeatable-read transaction)."""
    window = plan(since, until)
    (lo1, hi1), (lo2, hi2) = window.spans
    args = [since, until, window.first_day, window.last_day, lo1, hi1, lo2, hi2, top]
    if tenant is None:
        rows = await conn.fetch(STATISTICS, *args)
    else:
        rows = await conn.fetch(STATISTICS_OF_TENANT, *args, tenant)
    kinds: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        kinds.setdefault(row["kind"], []).append(row)
    return Statistics(
        per_day={r["day"]: r["count"] for r in kinds.get("day", [])},
        top_actors=_ranked(kinds.get("actor", [])),
        top_actions=_ranked(kinds.get("action", [])),
        by_severity={r["key"]: r["count"] for r in kinds.get("severity", [])},
        by_outcome={r["key"]: r["count"] for r in kinds.get("outcome", [])},
    )


def _ranked(rows: list[asyncpg.Record]) -> list[tuple[str, int]]:
    return [(r["key"], r["count"]) for r in sorted(rows, key=lambda r: r["rank"])]


async def fold_once(conn: Conn, *, limit: int = FOLD_ENTRIES) -> int | None:
    """Fold up to `limit` committed pending entries; None when the rollup lock is busy."""
    folded: int | None = await conn.fetchval(FOLD, limit)
    return folded


async def fold_all(conn: asyncpg.Connection, *, limit: int = FOLD_ENTRIES) -> int:
    """Fold until nothing committed is pending; return the entries folded."""
    total = 0
    while True:
        folded = await fold_once(conn, limit=limit)
        if folded is None:
            await asyncio.sleep(FOLD_BUSY_PAUSE)
        elif folded == 0:
            return total
        else:
            total += folded


# Hours are counted from the rows themselves (the rollup keeps days).
PER_HOUR = """
SELECT date_trunc('hour', ts AT TIME ZONE 'UTC') AS hour, count(*) AS count
FROM audit_log WHERE ts >= $1 AND ts <= $2 {tenant}
GROUP BY 1
"""
# The name of each top actor: the one its latest row up to the window's end gives (the
# actor index, newest first).
ACTOR_NAMES = """
SELECT a.id, n.actor_name
FROM unnest($1::text[]) AS a(id), LATERAL (
    SELECT actor_name FROM audit_log
    WHERE actor_id = a.id AND ts <= $2 AND actor_name IS NOT NULL
    ORDER BY ts DESC LIMIT 1
) AS n
"""


async def per_hour(
    conn: Conn, since: datetime, until: datetime, tenant: str | None
) -> dict[datetime, int]:
    """Rows per UTC hour of the window (hours without rows absent)."""
    if tenant is None:
        rows = await conn.fetch(PER_HOUR.format(tenant=""), since, until)
    else:
        rows = await conn.fetch(PER_HOUR.format(tenant="AND tenant = $3"), since, until, tenant)
    return {r["hour"].replace(tzinfo=UTC): r["count"] for r in rows}


async def actor_names(conn: Conn, actor_ids: list[str], until: datetime) -> dict[str, str]:
    """Each actor's latest name up to `until`."""
    return {r["id"]: r["actor_name"] for r in await conn.fetch(ACTOR_NAMES, actor_ids, until)}

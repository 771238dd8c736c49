"""The console's searches on 1,000,000 rows: the SQL the routes run, timed in alternating rounds.

`python -m bench.console_search [ROWS] [ROUNDS]`: bench/read_side.py's rows (COPY, indexes
made again from schema.sql, VACUUM ANALYZE), then per round one page query of a metadata
value the old way (`metadata #>> path = value`, which no index serves) and five of each new
query: a metadata value by containment (the GIN index), an actor's name by prefix, the
suggestions, hourly counts, the top actors' names. Each is timed at the client (wall) and by
the PostgreSQL backend's CPU (/proc/PID/schedstat; a parallel worker's CPU is not counted).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Stack
from bench.read_side import load
from service.api.audit_logs.pages import page_query
from service.api.audit_logs.query import AuditLogQuery
from service.api.audit_logs.statistics import ACTOR_NAMES, PER_HOUR
from service.api.audit_logs.suggestions import SUGGEST
from service.store.items import SELECT_ITEMS

OLD_METADATA = (
    f"{SELECT_ITEMS}WHERE metadata #>> $1::text[] = $2 ORDER BY ts DESC, id DESC LIMIT $3"
)


def _cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(url: str, rounds: int) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(url)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    rnd = random.Random(11)
    timings: dict[str, list[tuple[float, float]]] = {}

    async def timed(name: str, sql: str, *args: Any) -> None:
        cpu, wall = _cpu_ns(pid), time.perf_counter()
        await conn.fetch(sql, *args)
        wall, cpu = time.perf_counter() - wall, _cpu_ns(pid) - cpu
        timings.setdefault(name, []).append((wall * 1000, cpu / 1e6))

    try:
        for _ in range(rounds):
            value = str(rnd.randrange(1_000_000))
            await timed("metadata i=N, before (text, no index)", OLD_METADATA, ["i"], value, 51)
            for _ in range(5):
                i = rnd.randrange(1_000_000)
                sql, args = page_query(AuditLogQuery(metadata=[f"i={i}"], limit=50), None)
                await timed("metadata i=N (containment, GIN)", sql, *args)
                name = f"user {rnd.randrange(2000)}"
                sql, args = page_query(AuditLogQuery(actor_name=name, limit=50), None)
                await timed("actor_name, one actor's prefix", sql, *args)
                sql, args = page_query(AuditLogQuery(actor_name="user 1", limit=50), None)
                await timed("actor_name 'user 1' (111 actors)", sql, *args)
                await timed("suggestions action", SUGGEST["action"], "", 20)
                await timed("suggestions entity_type", SUGGEST["entity_type"], "", 20)
                await timed("suggestions entity_id", SUGGEST["entity_id"], "12", 20, "document")
                until = await conn.fetchval("SELECT now()")
                for hours in (24, 7 * 24):
                    await timed(
                        f"per_hour, {hours} h",
                        PER_HOUR.format(tenant=""),
                        until - timedelta(hours=hours),
                        until,
                    )
                top = [f"user-{rnd.randrange(2000)}" for _ in range(10)]
                await timed("top actors' names (10)", ACTOR_NAMES, top, until)
    finally:
        await conn.close()
    return {
        name: {
            "n": len(xs),
            "wall_p50_ms": _percentile([x[0] for x in xs], 50),
            "wall_p95_ms": _percentile([x[0] for x in xs], 95),
            "cpu_p50_ms": _percentile([x[1] for x in xs], 50),
            "cpu_p95_ms": _percentile([x[1] for x in xs], 95),
        }
        for name, xs in timings.items()
    }


async def main(rows: int, rounds: int) -> None:
    with Stack() as stack:
        await stack.migrate()
        await load(stack, rows)
        print(f"loaded {rows:,} rows; load average {os.getloadavg()}", flush=True)
        result = await measure(stack.database_url, rounds)
    print(f"load average after {os.getloadavg()}")
    for name, r in result.items():
        print(
            f"{name:40s} n={r['n']:3.0f} wall p50 {r['wall_p50_ms']:8.1f} p95 "
            f"{r['wall_p95_ms']:8.1f} ms | backend CPU p50 {r['cpu_p50_ms']:7.1f} "
            f"p95 {r['cpu_p95_ms']:7.1f} ms"
        )


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(arguments + [1_000_000, 10][len(arguments) :])))

"""What capture from the database costs: trigger overhead per row, and relay throughput.

    python -m bench.capture [--rows N] [--rounds N]

Fresh embedded Valkey + PostgreSQL; an application database of its own with two identical
tables of ROWS rows, one captured (`auditq capture install`), one not. Each round, in
alternating order so neither gets the warmer machine: the same INSERT of ROWS rows, UPDATE
of two columns of every row, and DELETE of every row, on each table, one statement per
transaction, timed to the commit; the outbox is emptied and both tables vacuumed between
rounds. Printed: the median of each phase per table, per row, and the ratio captured/plain (the
issue's goal: at most 2 for the UPDATE), in wall time to the commit and in CPU time of the
session's PostgreSQL backend (steadier on a shared machine; leaves out waiting on disk).

Then relay throughput: ROWS changes in the outbox, the relay (this process) drains them into
Valkey with no worker running: rows per second from start to an empty outbox (goal: at least
5,000), the relay's CPU per row; and end to end, with `auditq worker` storing them.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import asyncpg
import redis.asyncio as aioredis

from bench.common import VENV_BIN, Stack, count_rows, cpu_seconds
from service.capture import installer
from service.capture.relay import run_relays
from service.settings import Settings

APP_DATABASE = "bench_app"
TABLE_DDL = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    sku text NOT NULL,
    location text,
    quantity integer NOT NULL,
    note text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
INSERT = """
INSERT INTO {name} (id, name, sku, location, quantity, note)
SELECT g, 'item ' || g, 'SKU-' || lpad(g::text, 6, '0'), 'A1', g, NULL
FROM generate_series(1, $1) g
"""
UPDATE = "UPDATE {name} SET quantity = quantity + 1, location = 'B2', updated_at = now()"
DELETE = "DELETE FROM {name}"
PHASES = {"insert": INSERT, "update": UPDATE, "delete": DELETE}
TABLES = ("public.plain_items", "public.captured_items")


async def timed(
    conn: asyncpg.Connection, backend: int, sql: str, *args: object
) -> tuple[float, float]:
    """Wall seconds to the commit, and the CPU seconds of the session's backend meanwhile
    (what the statement and its triggers cost PostgreSQL, less sensitive to a busy machine)."""
    cpu = cpu_seconds(backend, with_children=False)
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SELECT set_config('auditq.actor_id', 'bench', true)")
        await conn.execute(sql, *args)
    return time.perf_counter() - started, cpu_seconds(backend, with_children=False) - cpu


async def trigger_overhead(
    app_url: str, rows: int, rounds: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """Median (wall, backend CPU) seconds per table and phase."""
    conn = await asyncpg.connect(app_url)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        for table in TABLES:
            await conn.execute(TABLE_DDL.format(name=table))
        await installer.install(app_url, TABLES[1])
        times: dict[str, dict[str, list[tuple[float, float]]]] = {
            t: {p: [] for p in PHASES} for t in TABLES
        }
        for round_ in range(rounds):
            order = TABLES if round_ % 2 == 0 else TABLES[::-1]
            for phase, sql in PHASES.items():
                for table in order:
                    args = (rows,) if phase == "insert" else ()
                    measured = await timed(conn, backend, sql.format(name=table), *args)
                    times[table][phase].append(measured)
            await conn.execute("TRUNCATE auditq_capture.outbox")
            for table in TABLES:
                await conn.execute(f"VACUUM ANALYZE {table}")
            await conn.execute("VACUUM ANALYZE auditq_capture.outbox")
        return {
            t: {
                p: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                for p, v in phases.items()
            }
            for t, phases in times.items()
        }
    finally:
        await conn.close()


async def relay_throughput(stack: Stack, app_url: str, rows: int) -> dict[str, float]:
    """Rows/s the relay drains into Valkey alone, then end to end with a worker storing."""
    settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url, queue="bench")
    conn = await asyncpg.connect(app_url)
    redis = aioredis.Redis.from_url(stack.redis_url)
    out: dict[str, float] = {}
    try:
        for mode in ("relay_only", "end_to_end"):
            await conn.execute(INSERT.format(name=TABLES[1]), rows)
            await conn.execute(DELETE.format(name=TABLES[1]))  # rows*2 changes
            changes = int(await conn.fetchval("SELECT count(*) FROM auditq_capture.outbox"))
            worker = None
            store = await asyncpg.connect(stack.database_url)
            stored_before = await count_rows(store)
            if mode == "end_to_end":
                worker = subprocess.Popen(  # noqa: ASYNC220 - a bench, started once
                    [str(VENV_BIN / "auditq"), "worker"],
                    env=stack.env(AUDITQ_QUEUE="bench", AUDITQ_SEAL="off"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            stop = asyncio.Event()
            cpu = time.process_time()
            started = time.perf_counter()
            task = asyncio.create_task(run_relays(settings, [app_url], stop))
            while await conn.fetchval("SELECT count(*) FROM auditq_capture.outbox"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            drained = time.perf_counter() - started
            relay_cpu = time.process_time() - cpu
            stop.set()
            await task
            if worker is not None:
                while await count_rows(store) < stored_before + changes:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                stored = time.perf_counter() - started
                worker.terminate()
                worker.wait(30)
                out["end_to_end_rows_per_s"] = changes / stored
                out["relay_rows_per_s_beside_worker"] = changes / drained
            else:
                out["relay_rows_per_s"] = changes / drained
                out["relay_cpu_us_per_row"] = relay_cpu / changes * 1e6
                await redis.flushdb()
            out["changes"] = changes
            await store.close()
    finally:
        await conn.close()
        await redis.aclose()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Stack() as stack:
        stack.stack.postgres.create_database(APP_DATABASE)
        await stack.migrate()
        app_url = stack.stack.postgres.url_for(APP_DATABASE)
        medians = await trigger_overhead(app_url, args.rows, args.rounds)
        print(f"trigger overhead, {args.rows:,} rows, median of {args.rounds} rounds:")
        plain, captured = (medians[t] for t in TABLES)
        per_row = 1e6 / args.rows
        for phase in PHASES:
            (bare, bare_cpu), (with_capture, with_cpu) = plain[phase], captured[phase]
            print(
                f"  {phase:<7} wall: plain {bare * per_row:5.1f} µs/row, captured "
                f"{with_capture * per_row:5.1f} µs/row, ratio {with_capture / bare:4.2f}; "
                f"backend CPU: plain {bare_cpu * per_row:5.1f} µs/row, captured "
                f"{with_cpu * per_row:5.1f} µs/row, ratio {with_cpu / max(bare_cpu, 1e-9):4.2f}"
            )
        relay = await relay_throughput(stack, app_url, args.rows)
        print(f"relay, {int(relay['changes']):,} changes:")
        print(
            f"  into Valkey alone: {relay['relay_rows_per_s']:,.0f} rows/s, "
            f"{relay['relay_cpu_us_per_row']:.0f} µs CPU/row in the relay"
        )
        print(
            f"  with a worker storing them: relay {relay['relay_rows_per_s_beside_worker']:,.0f} "
            f"rows/s, stored end to end {relay['end_to_end_rows_per_s']:,.0f} rows/s"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())

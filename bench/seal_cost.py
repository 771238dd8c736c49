"""What sealing costs: the worker's write throughput and CPU per event, seals on and off.

Usage: .venv/bin/python -m bench.seal_cost [EVENTS] [ROUNDS]
Each round: a fresh database, EVENTS events enqueued first (jobs of 100, through the Lua
script), then one in-process worker (the sealer with it, as in production) drains them.
"on": schema as shipped, sealing every second, the clock stopped when the last row is
visible and CPU counted until every row is sealed; "off": the seal trigger dropped and no
sealer. Rounds alternate on/off; medians are printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from bench.common import Stack, cpu_seconds, event_fields, postmaster_pid
from service import db
from service.queue import ENQUEUE_SCRIPT
from service.settings import Settings
from workers.worker import build_worker, run_until

EVENTS = 50_000
ROUNDS = 3
PER_JOB = 100


async def one_round(stack: Stack, *, sealing: bool, events: int, work: Path) -> tuple[float, float]:
    """Events/s until the last row is visible, and CPU µs per event (worker + PostgreSQL)."""
    name = f"seal_{'on' if sealing else 'off'}_{uuid.uuid4().hex[:6]}"
    stack.stack.postgres.create_database(name)
    url = stack.stack.postgres.url_for(name)
    await db.migrate(url)
    conn = await asyncpg.connect(url)
    if not sealing:
        await conn.execute("DROP TRIGGER audit_log_queue_seal ON audit_log")
    queue = f"bench-{name}"
    redis = aioredis.Redis.from_url(stack.redis_url)
    script = redis.register_script(ENQUEUE_SCRIPT)
    batch = [event_fields(name, i) for i in range(events)]
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, events, PER_JOB):
            await script(
                keys=[queue], args=[json.dumps(batch[start : start + PER_JOB])], client=pipe
            )
        await pipe.execute()
    settings = Settings(
        redis_url=stack.redis_url,
        database_url=url,
        queue=queue,
        data_dir=work,
        sealing=sealing,
        seal_interval_s=1.0,
    )
    pg_pid = postmaster_pid(stack.stack)
    cpu_before = time.process_time() + cpu_seconds(pg_pid)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run_until(build_worker(settings), stop))
    while await conn.fetchval("SELECT count(*) FROM audit_log") < events:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    while sealing and await conn.fetchval("SELECT count(*) FROM seal_pending"):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    cpu = time.process_time() + cpu_seconds(pg_pid) - cpu_before
    stop.set()
    await task
    await conn.close()
    await redis.aclose()
    return events / elapsed, cpu / events * 1e6


async def main(events: int, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="auditq-bench-seal-"))
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with Stack() as stack:
        for _ in range(rounds):
            for sealing in (True, False):
                results[sealing].append(
                    await one_round(stack, sealing=sealing, events=events, work=work)
                )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print("| seals | events/s (median) | CPU µs/event, worker + PostgreSQL (median) |")
    print("|---|---:|---:|")
    medians = {}
    for sealing in (False, True):
        rate = statistics.median(r for r, _ in results[sealing])
        cpu = statistics.median(c for _, c in results[sealing])
        medians[sealing] = (rate, cpu)
        print(f"| {'on' if sealing else 'off'} | {rate:,.0f} | {cpu:.1f} |")
    (off_rate, off_cpu), (on_rate, on_cpu) = medians[False], medians[True]
    print(
        f"cost of sealing: {100 * (1 - on_rate / off_rate):.1f} % of throughput, "
        f"{100 * (on_cpu / off_cpu - 1):.1f} % more CPU per event"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(int(args[0]) if args else EVENTS, int(args[1]) if len(args) > 1 else ROUNDS))

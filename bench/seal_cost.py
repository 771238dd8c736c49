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
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.common import Stack, cpu_seconds, event_fields, postmaster_pid
from service.queue import ENQUEUE_SCRIPT
from service.settings import Settings
from service.store import db
from workers.runner import build_worker, run_until

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


async def run(events: int, rounds: int) -> dict[str, Any]:
    """Rounds alternating seals on and off; the medians and what sealing costs."""
    work = Path(tempfile.mkdtemp(prefix="auditq-bench-seal-"))
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with Stack() as stack:
        for _ in range(rounds):
            for sealing in (True, False):
                results[sealing].append(
                    await one_round(stack, sealing=sealing, events=events, work=work)
                )
    medians = {
        "on" if sealing else "off": {
            "events_per_s": statistics.median(r for r, _ in results[sealing]),
            "cpu_us_per_event": statistics.median(c for _, c in results[sealing]),
        }
        for sealing in (False, True)
    }
    on, off = medians["on"], medians["off"]
    return {
        "events": events,
        "rounds": rounds,
        **medians,
        "seal_overhead": 1 - on["events_per_s"] / off["events_per_s"],
        "seal_cpu_overhead": on["cpu_us_per_event"] / off["cpu_us_per_event"] - 1,
    }


def main(events: int, rounds: int) -> None:
    result = asyncio.run(run(events, rounds))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print("| seals | events/s (median) | CPU µs/event, worker + PostgreSQL (median) |")
    print("|---|---:|---:|")
    for name in ("off", "on"):
        print(
            f"| {name} | {result[name]['events_per_s']:,.0f} "
            f"| {result[name]['cpu_us_per_event']:.1f} |"
        )
    print(
        f"cost of sealing: {100 * result['seal_overhead']:.1f} % of throughput, "
        f"{100 * result['seal_cpu_overhead']:.1f} % more CPU per event"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else EVENTS, int(args[1]) if len(args) > 1 else ROUNDS)

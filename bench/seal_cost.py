"""What sealing costs: end-to-end write throughput and CPU per event, seals on and off.

Usage: .venv/bin/python -m bench.seal_cost [EVENTS] [ROUNDS]
One Valkey and PostgreSQL for the whole run; each round, a fresh database and an empty Valkey,
then the pipeline as the write side runs it (bench/write_side.py): an `auditq worker` process,
and a producer process whose 64 concurrent awaited captures send EVENTS events flat out (after
a warm-up). Throughput is EVENTS over the time from the first capture until the last row is
visible; CPU is that of the producer, the worker, PostgreSQL and Valkey over that phase.
"on": schema as shipped, sealing every second, CPU counted until every row is sealed; "off":
the seal trigger dropped and the worker's sealer off (AUDITQ_SEAL=off). ROUNDS pairs of
rounds, one on and one off back to back, alternating which goes first; the cost is the median
over the pairs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench import report
from bench.common import Stack, cpu_seconds
from bench.write_side import SYSTEMS, produce_and_wait, producer_cmd, start_workers, stop_workers
from service.integrity.keys import load_or_create_private_key
from service.store import db

EVENTS = 100_000
ROUNDS = 8
WARMUP = 2_000
AUDITQ = next(s for s in SYSTEMS if s.name == "auditq_1_worker")
PARTS = ("producer", "worker", "postgres", "valkey")


async def one_round(stack: Stack, *, sealing: bool, events: int, logs: Path) -> dict[str, Any]:
    """Events/s from first capture to last visible row, and CPU µs per event of each part."""
    name = f"seal_{'on' if sealing else 'off'}_{uuid.uuid4().hex[:6]}"
    stack.stack.postgres.create_database(name)
    url = stack.stack.postgres.url_for(name)
    await db.migrate(url)
    redis = aioredis.Redis.from_url(stack.redis_url)
    await redis.flushall()
    await redis.aclose()
    conn = await asyncpg.connect(url)
    if not sealing:
        await conn.execute("DROP TRIGGER audit_log_queue_seal ON audit_log")
    round_logs = logs / name
    round_logs.mkdir()
    load_or_create_private_key(round_logs / "seal-key")  # the worker needs the deployment's
    [worker] = start_workers(
        AUDITQ,
        stack,
        round_logs,
        AUDITQ_DATABASE_URL=url,
        AUDITQ_SEAL="on" if sealing else "off",
        AUDITQ_SEAL_INTERVAL_S="1",
        AUDITQ_SEAL_KEY_FILE=str(round_logs / "seal-key"),
        # The bench's database user is the embedded superuser (the same on both sides).
        AUDITQ_ALLOW_PRIVILEGED_ROLE="1",
        # Each round's database is new: so is the log the sealer remembers.
        AUDITQ_SEAL_STATE_FILE=str(round_logs / "seal-state"),
    )
    try:
        plog = round_logs / "producer.log"
        out = round_logs / "warmup.json"
        cmd = producer_cmd(AUDITQ, stack, "warmup", WARMUP, 0, out)
        await produce_and_wait(conn, cmd, out, WARMUP, plog, timeout_s=300)
        while sealing and await conn.fetchval("SELECT count(*) FROM seal_pending"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        stack.stack.postgres.psql("CHECKPOINT")  # every round starts with the same WAL state
        before = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
        out = round_logs / "throughput.json"
        cmd = producer_cmd(AUDITQ, stack, "throughput", events, 0, out)
        produced, visible_at = await produce_and_wait(conn, cmd, out, WARMUP + events, plog)
        while sealing and await conn.fetchval("SELECT count(*) FROM seal_pending"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        after = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
        unsealed = await conn.fetchval(  # every row a leaf of the transparency log
            "SELECT count(*) FROM audit_log a WHERE NOT EXISTS (SELECT FROM tlog_batch b "
            "WHERE b.row_seqs @> a.seq)"
        )
    finally:
        await conn.close()
        stop_workers([worker])
        # Gone before the next round, so no autovacuum of this one's rows runs into it.
        stack.stack.postgres.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
    if sealing and unsealed:
        raise RuntimeError(f"{unsealed} rows were left unsealed")
    if produced["failed"]:
        raise RuntimeError(f"{produced['failed']} captures failed: see {plog}")
    cpu = {part: (after[part] - before[part]) for part in ("worker", "postgres", "valkey")}
    cpu["producer"] = produced["cpu_s"]  # the producer process ran this phase only
    return {
        "events_per_s": events / (visible_at - produced["started_at"]),
        "cpu_us_per_event": {part: cpu[part] / events * 1e6 for part in PARTS},
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "events_per_s": statistics.median(r["events_per_s"] for r in rounds),
        "events_per_s_rounds": [r["events_per_s"] for r in rounds],
        "cpu_us_per_event": {
            part: statistics.median(r["cpu_us_per_event"][part] for r in rounds) for part in PARTS
        },
    }


def _total(side: dict[str, Any], parts: tuple[str, ...] = PARTS) -> float:
    return float(sum(side["cpu_us_per_event"][p] for p in parts))


async def run(events: int, rounds: int) -> dict[str, Any]:
    """`rounds` pairs of rounds, seals on and off back to back (which goes first alternates);
    the medians of each side, and what sealing costs as the median over the pairs (the two
    rounds of a pair share the machine's load of the moment, which swings far more between
    pairs than sealing costs)."""
    logs = Path(tempfile.mkdtemp(prefix="auditq-bench-seal-"))
    pairs: list[dict[bool, dict[str, Any]]] = []
    with Stack() as stack:
        for n in range(rounds):
            pair = {}
            for sealing in (True, False) if n % 2 == 0 else (False, True):
                pair[sealing] = await one_round(stack, sealing=sealing, events=events, logs=logs)
            pairs.append(pair)
    on = _median_round([p[True] for p in pairs])
    off = _median_round([p[False] for p in pairs])
    worker_postgres = ("worker", "postgres")  # where sealing runs: the sealer, the trigger
    costs = [1 - p[True]["events_per_s"] / p[False]["events_per_s"] for p in pairs]
    return {
        "events": events,
        "rounds": rounds,
        "on": on,
        "off": off,
        "seal_overhead_pairs": costs,
        "seal_overhead": statistics.median(costs),
        "seal_cpu_overhead": statistics.median(
            _total(p[True]) / _total(p[False]) - 1 for p in pairs
        ),
        "seal_cpu_overhead_worker_postgres": statistics.median(
            _total(p[True], worker_postgres) / _total(p[False], worker_postgres) - 1 for p in pairs
        ),
    }


def main(events: int, rounds: int) -> None:
    result = asyncio.run(run(events, rounds))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print("\n".join(report.seals(result)))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else EVENTS, int(args[1]) if len(args) > 1 else ROUNDS)

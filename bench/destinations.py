"""What streaming to destinations costs ingest, and how far behind the destinations run.

Usage: .venv/bin/python -m bench.destinations [EVENTS] [ROUNDS] [RATE_SECONDS]
One Valkey and PostgreSQL for the whole run; each round a fresh database and an empty Valkey,
an `auditq worker` process and a producer process, as bench/seal_cost.py runs them.

Throughput: EVENTS captured flat out (64 concurrent awaited captures), events/s from the first
capture until the last row is visible; "on" with two webhook destinations (item JSON, one
HMAC-signed; OCSF, the other) delivering to a receiver in this process on loopback, "off"
with none. ROUNDS pairs, on and off back to back, which goes first alternating; the drop is
the median over the pairs (the machine's load swings more between pairs than within one).

Lag: the producer paced at 2,000 events/s for RATE_SECONDS with both destinations on; every
half second each destination's lag_s (the API's figure) is read, and the receiver notes when
each event arrived: capture-to-receipt latency is the receipt time minus the event's ts.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from bench.common import Stack, cpu_seconds, percentile
from bench.write_side import SYSTEMS, produce_and_wait, producer_cmd, start_workers, stop_workers
from service.integrity.keys import load_or_create_private_key
from service.store import db
from service.store import destinations as store

EVENTS = 50_000
ROUNDS = 4
RATE = 2_000  # events/s of the lag run
RATE_SECONDS = 30
WARMUP = 2_000
AUDITQ = next(s for s in SYSTEMS if s.name == "auditq_1_worker")


class Receiver:
    """Two webhook endpoints on loopback counting what they get and when."""

    def __init__(self) -> None:
        self.timing = False  # note every event's arrival (the lag run), else only count bytes
        self.bytes = 0
        self.arrived: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}  # (ts, received)
        self.ids: dict[str, set[str]] = {"a": set(), "b": set()}
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{name}", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        self.bytes += len(body)
        if not self.timing:  # a receiver elsewhere would parse it; not on this machine's CPU
            return web.json_response({"ok": True})
        items = json.loads(body)
        now = time.time()
        for item in items:
            event_id = item["id"] if "id" in item else item["metadata"]["uid"]
            ts = item["ts"] if "ts" in item else item["time"] / 1000
            when = datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else ts
            self.ids[name].add(event_id)
            self.arrived[name].append((when, now))
        return web.json_response({"ok": True})

    def reset(self) -> None:
        for name in self.arrived:
            self.arrived[name].clear()
            self.ids[name].clear()


async def add_destinations(
    conn: asyncpg.Connection, port: int, *, since: datetime | None = None
) -> None:
    for name, fmt, secret in (("a", "json", "bench-secret"), ("b", "ocsf", None)):
        await store.add_destination(
            conn,
            name=f"bench-{name}",
            kind="webhook",
            url=f"http://127.0.0.1:{port}/{name}",
            format=fmt,
            filter="",
            filter_json={},
            options={"allow_private": True},
            secret=secret,
            since=since,
            created_by="bench",
        )


def worker_env(url: str, logs: Path, round_logs: Path) -> dict[str, str]:
    """A worker as deployed (sealing on), on the round's database: the run's one seal key,
    and a seal state of the round's own (each round's database is new). It connects as the
    embedded server's superuser (a benchmark: no roles set up), which it is told to allow."""
    key = logs / "seal-key"
    load_or_create_private_key(key)
    return {
        "AUDITQ_DATABASE_URL": url,
        "AUDITQ_SEAL_KEY_FILE": str(key),
        "AUDITQ_SEAL_STATE_FILE": str(round_logs / "seal-state"),
        "AUDITQ_ALLOW_PRIVILEGED_ROLE": "1",
    }


async def fresh(stack: Stack, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    stack.stack.postgres.create_database(name)
    url = stack.stack.postgres.url_for(name)
    await db.migrate(url)
    redis = aioredis.Redis.from_url(stack.redis_url)
    await redis.flushall()
    await redis.aclose()
    return name, url


async def caught_up(conn: asyncpg.Connection, timeout_s: float = 120) -> float:
    """Seconds until every destination's lag is zero."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        lags = [(await store.lag(conn, d.position))[0] for d in await store.list_destinations(conn)]
        if not any(lags):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise TimeoutError("the destinations did not catch up")


async def one_round(
    stack: Stack, receiver: Receiver, *, streaming: bool, events: int, logs: Path
) -> dict[str, Any]:
    name, url = await fresh(stack, f"dest_{'on' if streaming else 'off'}")
    conn = await db.connect(url)
    if streaming:
        await add_destinations(conn, receiver.port)
    round_logs = logs / name
    round_logs.mkdir()
    [worker] = start_workers(AUDITQ, stack, round_logs, **worker_env(url, logs, round_logs))
    try:
        plog = round_logs / "producer.log"
        out = round_logs / "warmup.json"
        cmd = producer_cmd(AUDITQ, stack, "warmup", WARMUP, 0, out)
        await produce_and_wait(conn, cmd, out, WARMUP, plog, timeout_s=300)
        if streaming:
            await caught_up(conn)
        receiver.reset()
        before = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
        out = round_logs / "throughput.json"
        cmd = producer_cmd(AUDITQ, stack, "throughput", events, 0, out)
        produced, visible_at = await produce_and_wait(conn, cmd, out, WARMUP + events, plog)
        behind_s = await caught_up(conn) if streaming else 0.0
        after = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
    finally:
        await conn.close()
        stop_workers([worker])
        stack.stack.postgres.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
    # On a loaded machine a capture can outwait its 0.25 s bound while Redis still takes it
    # (DeliveryUncertain): every row was still visible, so the round stands; say how many.
    cpu = {part: (after[part] - before[part]) / events * 1e6 for part in after}
    cpu["producer"] = produced["cpu_s"] / events * 1e6
    return {
        "events_per_s": events / (visible_at - produced["started_at"]),
        "caught_up_after_s": behind_s,
        "cpu_us_per_event": cpu,  # until every destination caught up
        "uncertain_captures": produced["failed"],
    }


async def lag_run(stack: Stack, receiver: Receiver, *, seconds: int, logs: Path) -> dict[str, Any]:
    name, url = await fresh(stack, "dest_lag")
    conn = await db.connect(url)
    await add_destinations(conn, receiver.port)
    round_logs = logs / name
    round_logs.mkdir()
    [worker] = start_workers(AUDITQ, stack, round_logs, **worker_env(url, logs, round_logs))
    samples: dict[str, list[float]] = {"bench-a": [], "bench-b": []}
    stop = asyncio.Event()

    async def sample() -> None:
        watcher = await db.connect(url)  # produce_and_wait counts rows on `conn` meanwhile
        try:
            while not stop.is_set():
                for d in await store.list_destinations(watcher):
                    samples[d.name].append((await store.lag(watcher, d.position))[1])
                await asyncio.sleep(0.5)
        finally:
            await watcher.close()

    try:
        plog = round_logs / "producer.log"
        out = round_logs / "warmup.json"
        cmd = producer_cmd(AUDITQ, stack, "warmup", WARMUP, 0, out)
        await produce_and_wait(conn, cmd, out, WARMUP, plog, timeout_s=300)
        await caught_up(conn)
        receiver.reset()
        receiver.timing = True
        sampler = asyncio.create_task(sample())
        total = RATE * seconds
        out = round_logs / "paced.json"
        cmd = producer_cmd(AUDITQ, stack, "paced", total, RATE, out)
        produced, visible_at = await produce_and_wait(conn, cmd, out, WARMUP + total, plog)
        stop.set()
        await sampler
        after_s = await caught_up(conn)
    finally:
        await conn.close()
        stop_workers([worker])
        stack.stack.postgres.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
    latency = {
        n: sorted(received - ts for ts, received in receiver.arrived[n]) for n in receiver.arrived
    }
    return {
        "rate": RATE,
        "seconds": seconds,
        "achieved_events_per_s": total / (visible_at - produced["started_at"]),
        "caught_up_after_last_row_s": after_s,
        "uncertain_captures": produced["failed"],
        "lag_s": {
            n: {"p50": percentile(v, 50), "p95": percentile(v, 95), "max": max(v, default=0.0)}
            for n, v in samples.items()
        },
        "capture_to_receipt_s": {
            n: {
                "p50": percentile(v, 50),
                "p99": percentile(v, 99),
                "max": max(v, default=0.0),
                "received": len(v),
                "unique": len(receiver.ids[n]),
            }
            for n, v in latency.items()
        },
    }


STORE_ROWS = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, actor_id, actor_type,
    tenant, request_id, ip, method, path, status, metadata, presentation, received_via)
SELECT gen_random_uuid(), now(), 'doc.updated', 'doc', 'info', 'success', 'user-' || g, 'user',
    'acme', 'req-' || g, '10.0.0.1', 'POST', '/docs/' || g, 200,
    jsonb_build_object('doc', g, 'note', 'a few words'), '{"code": "doc.updated", "params": {}}',
    'api'
FROM generate_series(1, $1) g
"""


async def delivery_cost(stack: Stack, receiver: Receiver, *, events: int, logs: Path) -> Any:
    """CPU per event of delivery alone, for both destinations together: `events` rows stored
    beforehand (statements of 250), an idle worker, then both destinations added with a
    backfill of them; the worker's and PostgreSQL's CPU until both caught up."""
    name, url = await fresh(stack, "dest_cost")
    conn = await db.connect(url)
    round_logs = logs / name
    round_logs.mkdir()
    since = await conn.fetchval("SELECT now()")
    for _ in range(events // 250):
        await conn.execute(STORE_ROWS, 250)
    [worker] = start_workers(AUDITQ, stack, round_logs, **worker_env(url, logs, round_logs))
    try:
        await asyncio.sleep(5.0)  # started, sealed the rows, idle
        before = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
        await add_destinations(conn, receiver.port, since=since)
        await caught_up(conn)
        after = stack.server_cpu() | {"worker": cpu_seconds(worker.pid)}
    finally:
        await conn.close()
        stop_workers([worker])
        stack.stack.postgres.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
    return {part: (after[part] - before[part]) / events * 1e6 for part in ("worker", "postgres")}


async def run(events: int, rounds: int, seconds: int) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="auditq-bench-dest-"))
    load_before = os.getloadavg()[0]
    receiver = Receiver()
    await receiver.start()
    pairs: list[dict[bool, dict[str, Any]]] = []
    try:
        with Stack() as stack:
            for n in range(rounds):
                pair = {}
                for streaming in (True, False) if n % 2 == 0 else (False, True):
                    pair[streaming] = await one_round(
                        stack, receiver, streaming=streaming, events=events, logs=logs
                    )
                pairs.append(pair)
            lag = await lag_run(stack, receiver, seconds=seconds, logs=logs)
            cost = await delivery_cost(stack, receiver, events=events, logs=logs)
    finally:
        await receiver.runner.cleanup()
    drops = [1 - p[True]["events_per_s"] / p[False]["events_per_s"] for p in pairs]

    def worker_and_pg(streaming: bool) -> float:  # CPU per event, whatever the machine's load
        return float(
            statistics.median(
                p[streaming]["cpu_us_per_event"]["worker"]
                + p[streaming]["cpu_us_per_event"]["postgres"]
                for p in pairs
            )
        )

    return {
        "events": events,
        "rounds": rounds,
        "on_events_per_s": [p[True]["events_per_s"] for p in pairs],
        "off_events_per_s": [p[False]["events_per_s"] for p in pairs],
        "caught_up_after_s": [p[True]["caught_up_after_s"] for p in pairs],
        "cpu_us_per_event_on": [p[True]["cpu_us_per_event"] for p in pairs],
        "cpu_us_per_event_off": [p[False]["cpu_us_per_event"] for p in pairs],
        "uncertain_captures": sum(p[s]["uncertain_captures"] for p in pairs for s in p),
        "drop_pairs": drops,
        "drop": statistics.median(drops),
        "worker_pg_cpu_us_per_event_off": worker_and_pg(False),
        "worker_pg_cpu_us_per_event_on": worker_and_pg(True),
        "lag": lag,
        "delivery_cpu_us_per_event": cost,  # both destinations, delivery alone
        "lag_s_max": max(v["max"] for v in lag["lag_s"].values()),
        "load_average": os.getloadavg()[0],
        "load_average_before": load_before,
    }


def main(events: int, rounds: int, seconds: int) -> None:
    result = asyncio.run(run(events, rounds, seconds))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        int(args[0]) if args else EVENTS,
        int(args[1]) if len(args) > 1 else ROUNDS,
        int(args[2]) if len(args) > 2 else RATE_SECONDS,
    )

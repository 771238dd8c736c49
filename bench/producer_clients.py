"""The Node client beside the Python client: `python -m bench.producer_clients [--rounds R]`.

For each client, in alternating rounds against one fresh embedded Valkey (the enqueue
function library loaded), each round after as many warm-up calls: the cost of one
`capture_nowait` / `captureNowait` call (CPU µs, nothing awaited, the benchmark event of
bench/common.py prebuilt), and the throughput of one process (events/s from the first call
to the client's close, a yield to the event loop every 100 events, the client connected
before) and its CPU per event, with every event counted back in Redis. Needs node and npm
(`clients/node`: `npm ci`). Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.producer import audit_event
from service.embedded.servers import EmbeddedValkey
from service.producer.client import AuditClient
from service.queue.enqueue import load_functions

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
YIELD_EVERY = 100  # events between two yields to the event loop, as in the Node bench


async def queued(redis: aioredis.Redis, queue: str) -> int:
    events = 0
    for task_id in await redis.zrange(queue, 0, -1):
        job = await redis.get(b"arq:job:" + task_id)
        events += job.count(b'\\"action\\":')
    return events


async def python_round(url: str, calls: int, total: int) -> dict[str, Any]:
    queue = f"bench-python-{time.monotonic_ns()}"
    # As many calls first, into a queue of their own (as the Node side warms its JIT).
    warm = AuditClient.from_url(url, queue=f"{queue}-warmup", buffer_max_events=calls + 1)
    warm.bind_loop()
    for i in range(calls):
        warm.capture_nowait(audit_event("python-warmup", i))
    await warm.aclose(30.0)
    client = AuditClient.from_url(
        url, queue=queue, buffer_max_events=calls + 1, flush_interval_s=60.0
    )
    client.bind_loop()
    batch = [audit_event("python-call", i) for i in range(calls)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for event in batch:
        client.capture_nowait(event)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await client.aclose(30.0)

    client = AuditClient.from_url(url, queue=queue)
    events = [audit_event("python", i) for i in range(total)]
    await client.capture(audit_event("python-warmup", 0))  # connected, as a running service is
    started, cpu_started = time.perf_counter(), time.process_time()
    for i, event in enumerate(events):
        client.capture_nowait(event)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    await client.aclose(60.0)
    seconds = time.perf_counter() - started
    flow_cpu = time.process_time() - cpu_started
    redis = aioredis.Redis.from_url(url)
    try:
        count = await queued(redis, queue)
        await redis.flushdb()
    finally:
        await redis.aclose()
    return {
        "cpu_us": cpu / calls * 1e6,
        "wall_us": wall / calls * 1e6,
        "events_per_s": total / seconds,
        "flow_cpu_us": flow_cpu / total * 1e6,
        "queued": count,
    }


async def node_round(url: str, calls: int, total: int) -> dict[str, Any]:
    queue = f"bench-node-{time.monotonic_ns()}"
    env = {**os.environ, "REDIS_URL": url, "QUEUE": queue}
    env.update(CALLS=str(calls), EVENTS=str(total))
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "bench/capture.mjs"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    redis = aioredis.Redis.from_url(url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    return result


async def main(rounds: int, calls: int, total: int) -> None:
    await asyncio.to_thread(
        subprocess.run, ["npm", "run", "build"], cwd=NODE_DIR, check=True, capture_output=True
    )
    data_dir = Path(tempfile.mkdtemp(prefix="auditq-bench-clients-"))
    valkey = EmbeddedValkey(data_dir)
    await asyncio.to_thread(valkey.start)
    try:
        redis = aioredis.Redis.from_url(valkey.url)
        await load_functions(redis)
        await redis.aclose()
        results: dict[str, list[dict[str, Any]]] = {"python": [], "node": []}
        for _ in range(rounds):
            results["python"].append(await python_round(valkey.url, calls, total))
            results["node"].append(await node_round(valkey.url, calls, total))
    finally:
        valkey.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = {}
    for side, runs in results.items():
        for run in runs:
            # Every event reached Redis (+ the warm-up); a batch resent after an answer that
            # came late is there twice (stored once: the worker dedupes by id).
            assert run["queued"] >= calls + total + 1, (side, run["queued"])
        summary[side] = {
            name: statistics.median(run[name] for run in runs)
            for name in ("cpu_us", "wall_us", "events_per_s", "flow_cpu_us")
        }
        rates = [f"{run['events_per_s']:.0f}" for run in runs]
        print(
            f"{side:6s} captureNowait {summary[side]['cpu_us']:6.2f} µs CPU "
            f"({summary[side]['wall_us']:6.2f} µs wall) a call; "
            f"{summary[side]['events_per_s']:9.0f} events/s into Redis (medians of {rounds}); "
            f"flow {summary[side]['flow_cpu_us']:6.2f} µs CPU an event "
            f"(= {1e6 / summary[side]['flow_cpu_us']:7.0f} events/s per CPU second); "
            f"rounds: {', '.join(rates)} events/s; queued: {[run['queued'] for run in runs]}"
        )
    print(
        f"node / python: {summary['node']['cpu_us'] / summary['python']['cpu_us']:.2f} x the "
        f"CPU a call, {summary['node']['events_per_s'] / summary['python']['events_per_s']:.2f} x "
        f"the events/s, {summary['node']['flow_cpu_us'] / summary['python']['flow_cpu_us']:.2f} x "
        "the CPU an event"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.calls, args.events))

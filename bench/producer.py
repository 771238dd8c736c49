"""A producer process: awaited captures from concurrent tasks, timed one by one.

    python -m bench.producer auditq|arq REDIS_URL RUN COUNT CONCURRENCY RATE OUT_JSON [--nowait N]

auditq: `AuditClient.capture` with the client's defaults. arq: one `enqueue_job` per event
(the one-job-per-event design on arq). RATE 0 runs flat out; otherwise events/s, paced.
`--nowait N` (auditq) then times N `capture_nowait` calls (the calls alone) and flushes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from bench.common import event_fields
from service.events import Actor, AuditEvent, Change, Entity, RequestInfo
from service.producer.client import AuditClient

NOWAIT_CHUNK = 1000  # calls between two yields to the loop, so the sender can drain the buffer


def audit_event(run: str, i: int) -> AuditEvent:
    """The benchmark event as a service builds one: with the Struct constructors."""
    e = event_fields(run, i)
    return AuditEvent(
        action=e["action"],
        actor=Actor(**e["actor"]),
        entity=Entity(**e["entity"]),
        tenant=e["tenant"],
        request=RequestInfo(**e["request"]),
        changes=[Change(**c) for c in e["changes"]],
        metadata=e["metadata"],
        source=e["source"],
    )


async def drive(
    capture: Callable[[int], Awaitable[object]], count: int, concurrency: int, rate: float
) -> tuple[float, float, list[float]]:
    latencies = [0.0] * count
    position = 0
    started = time.time()
    t0 = time.perf_counter()

    async def loop() -> None:
        nonlocal position
        while position < count:
            i = position
            position += 1
            if rate > 0:
                wait = t0 + i / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            t = time.perf_counter()
            await capture(i)
            latencies[i] = (time.perf_counter() - t) * 1000

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return started, time.perf_counter() - t0, latencies


async def run_auditq(args: argparse.Namespace) -> dict[str, Any]:
    client = AuditClient.from_url(args.redis_url)
    failed = 0

    async def capture(i: int) -> None:
        nonlocal failed
        if await client.capture(audit_event(args.run, i)) is None:
            failed += 1

    started, elapsed, latencies = await drive(capture, args.count, args.concurrency, args.rate)
    result: dict[str, Any] = {"started_at": started, "elapsed_s": elapsed, "failed": failed}
    result["latencies_ms"] = latencies
    if args.nowait:
        events = [audit_event(f"{args.run}-nowait", i) for i in range(args.nowait)]
        spent = 0.0
        for start in range(0, len(events), NOWAIT_CHUNK):
            chunk = events[start : start + NOWAIT_CHUNK]
            t = time.perf_counter()
            for event in chunk:
                client.capture_nowait(event)
            spent += time.perf_counter() - t
            await asyncio.sleep(0.002)
        result["nowait_us_per_call"] = spent / len(events) * 1e6
    await client.aclose()
    result["failed"] += client.failed + client.dropped
    return result


async def run_arq(args: argparse.Namespace) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(args.redis_url))

    async def capture(i: int) -> None:
        event = event_fields(args.run, i)
        event["id"] = str(uuid.uuid4())
        event["ts"] = datetime.now(UTC).isoformat()
        await pool.enqueue_job("store_event", event)

    started, elapsed, latencies = await drive(capture, args.count, args.concurrency, args.rate)
    await pool.aclose()
    return {"started_at": started, "elapsed_s": elapsed, "failed": 0, "latencies_ms": latencies}


def usage() -> dict[str, float]:
    """CPU seconds and peak RSS (KiB) of this process so far."""
    self = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": self.ru_utime + self.ru_stime, "peak_rss_kib": self.ru_maxrss}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=("auditq", "arq"))
    parser.add_argument("redis_url")
    parser.add_argument("run")
    parser.add_argument("count", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("out")
    parser.add_argument("--nowait", type=int, default=0)
    args = parser.parse_args()
    runner = run_auditq if args.system == "auditq" else run_arq
    result = asyncio.run(runner(args))
    result.update(usage())
    with open(args.out, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()

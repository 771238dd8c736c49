"""The live tail's latency: from a row's write to an SSE client, through the Redis stream.

`python -m bench.live_tail [--seconds S] [--rate R]`: a worker and the API in this process on
fresh embedded servers, one SSE client on GET /api/v1/admin/audit-logs/stream, and a producer
capturing R events/s for S seconds. Prints p50/p99 of (a) the row's `received_at` (when its
writing transaction began, so at or before its commit) to the client, an upper bound of
commit-to-client, and (b) capture to client. Not a timed test; `make bench` runs it (bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import time
from datetime import datetime

import aiohttp
import asyncpg
from aiohttp import web

from bench.common import Stack, percentile
from service.api.app import create_app
from service.events import AuditEvent, Entity
from service.producer.client import AuditClient
from service.settings import Settings
from service.store.tokens import create_token
from workers.runner import build_worker, run_until


async def measure(seconds: float, rate: float) -> dict[str, float | None]:
    with Stack() as stack:
        await stack.migrate()
        settings = dataclasses.replace(
            Settings(), redis_url=stack.redis_url, database_url=stack.database_url
        )
        conn = await asyncpg.connect(stack.database_url)
        token = await create_token(conn, name="bench", role="reader")
        await conn.close()
        stop = asyncio.Event()
        worker = asyncio.create_task(run_until(build_worker(settings), stop))
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        captured: dict[str, float] = {}
        from_row: list[float] = []
        from_capture: list[float] = []
        all_seen = asyncio.Event()
        headers = {"Authorization": f"Bearer {token}"}
        url = f"http://{host}:{port}/api/v1/admin/audit-logs/stream"
        try:
            async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
                await r.content.readline()  # retry: the tail is listening

                async def read() -> None:
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            now = time.time()
                            item = json.loads(line[6:])
                            received = datetime.fromisoformat(item["received_at"]).timestamp()
                            from_row.append(now - received)
                            if item["id"] in captured:
                                from_capture.append(now - captured[item["id"]])
                                if len(from_capture) >= len(captured):
                                    all_seen.set()

                reader = asyncio.create_task(read())
                async with AuditClient.from_settings(settings) as client:
                    for i in range(int(seconds * rate)):
                        event = AuditEvent(
                            action="bench.tailed", entity=Entity(type="n", id=str(i))
                        )
                        started = time.time()
                        event_id = await client.capture(event)
                        if event_id is not None:
                            captured[event_id] = started
                        await asyncio.sleep(1 / rate)
                all_seen.clear()
                if len(from_capture) < len(captured):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(all_seen.wait(), 10)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            await runner.cleanup()
            stop.set()
            await worker
    return {
        "events": float(len(captured)),
        "received": float(len(from_capture)),
        "row_to_client_p50_ms": _ms(percentile(from_row, 50)),
        "row_to_client_p99_ms": _ms(percentile(from_row, 99)),
        "capture_to_client_p50_ms": _ms(percentile(from_capture, 50)),
        "capture_to_client_p99_ms": _ms(percentile(from_capture, 99)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.seconds, args.rate)), indent=2))


if __name__ == "__main__":
    main()

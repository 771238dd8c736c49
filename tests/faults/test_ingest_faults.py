"""The API process SIGKILLed while producers ingest over HTTP: what got 202 is stored."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.embedded.servers import free_port
from service.producer.client import AuditClient
from service.settings import Settings
from tests.faults.harness import (
    DrainWatch,
    Ledger,
    Load,
    auditq_process,
    http_up,
    ingest_token,
    reckon,
    start_producers,
)
from tests.faults.report import FaultReport
from tests.support.polling import wait_for
from tests.support.servers import server_dir

pytestmark = pytest.mark.faults

HTTP_PRODUCERS = 4


async def test_api_sigkilled_while_ingesting_then_restarted(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    port = free_port()
    # As `auditq api` runs: its spool under the data dir, which outlives the process.
    api_settings = dataclasses.replace(settings, data_dir=server_dir())
    api_env = {"AUDITQ_HTTP_PORT": str(port)}
    base_url = f"http://127.0.0.1:{port}"
    token = await ingest_token(database_url)
    client = AuditClient.from_settings(settings)
    load = Load(ledger)
    drain = DrainWatch(ledger, database_url)
    log = tmp_path / "api.log"

    async def api_up() -> bool:
        return await http_up(base_url)

    try:
        async with (
            auditq_process("worker", settings, tmp_path / "worker.log"),
            auditq_process("api", api_settings, log, **api_env) as api,
        ):
            await wait_for(api_up, within_s=30, what="the API answers")
            start_producers(
                load,
                client,
                redis_url=settings.redis_url or "",
                queue=settings.queue,
                http=(base_url, token),
                http_tasks=HTTP_PRODUCERS,
            )
            await asyncio.sleep(2.0)
            api.send_signal(signal.SIGKILL)  # requests in flight die with it
            await asyncio.to_thread(api.wait, 10)
            async with auditq_process("api", api_settings, log, **api_env):
                await wait_for(api_up, within_s=30, what="the restarted API answers")
                drain.start()
                await asyncio.sleep(2.0)
                await load.stop()
                await client.aclose()
                figures = await reckon(
                    "api-kill",
                    ledger,
                    database_url=database_url,
                    redis=redis,
                    queue=settings.queue,
                    drain=drain,
                    notes=(
                        f"{sum(1 for p in ledger.accepted.values() if p == 'http')} got 202 over "
                        f"HTTP; {ledger.refused} refused (requests cut by the kill, port closed)"
                    ),
                )
    finally:
        shutil.rmtree(api_settings.data_dir, ignore_errors=True)
    fault_report.add(figures)
    assert not figures.problems, figures

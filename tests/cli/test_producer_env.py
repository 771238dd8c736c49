"""`auditq run` gives producers a URL of their own: a user that can only enqueue."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from service.embedded.servers import free_port
from service.events import AuditEvent
from service.producer.client import AuditClient
from service.queue.producer_acl import PRODUCER_USER
from service.settings import read_env_file
from tests.integrity.test_embedded import Run, data_dir, mode
from tests.support.polling import wait_for

__all__ = ["data_dir"]


async def test_run_writes_the_producer_user_url_and_it_can_only_enqueue(data_dir: Path) -> None:
    run = Run(data_dir, free_port())
    try:
        await run.running()
        producer_env = data_dir / "producer.env"
        assert mode(producer_env) == 0o600
        assert producer_env.read_text().strip().count("\n") == 0  # one line, nothing else
        url = read_env_file(producer_env)["AUDITQ_REDIS_URL"]
        assert url.startswith(f"redis://{PRODUCER_USER}:")
        assert "producer.env" in run.output()
        urls = read_env_file(data_dir / "env")
        assert urls["AUDITQ_REDIS_URL"].startswith("redis://default:")  # user spelled out
        assert urls["AUDITQ_REDIS_URL"] != url

        client = AuditClient.from_url(url)
        event_id = await client.capture(AuditEvent(action="doc.viewed"))
        await client.aclose()
        assert event_id is not None
        api = await asyncpg.connect(urls["AUDITQ_DATABASE_URL"])
        try:

            async def stored() -> bool:
                return bool(
                    await api.fetchval("SELECT count(*) FROM audit_log WHERE id = $1", event_id)
                )

            await wait_for(stored, within_s=60)
        finally:
            await api.close()
        producer = aioredis.Redis.from_url(url)
        try:
            for command in (("KEYS", "*"), ("GET", "auditq:task-seq"), ("FLUSHALL",)):
                with pytest.raises(NoPermissionError):
                    await producer.execute_command(*command)
        finally:
            await producer.aclose()
        if shutil.which("redis-cli"):  # the URLs work with Debian's redis-cli as written
            for written in (url, urls["AUDITQ_REDIS_URL"]):
                done = await asyncio.to_thread(
                    subprocess.run,
                    ["redis-cli", "--no-auth-warning", "-u", written, "PING"],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                assert done.stdout.strip() == "PONG", done.stderr
    finally:
        await run.stop()

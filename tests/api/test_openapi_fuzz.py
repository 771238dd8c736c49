"""Fuzz the running API from its own OpenAPI document: no 5xx, responses match their schemas."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from service.settings import Settings
from service.store.tokens import create_token

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
AUDITQ = Path(sys.executable).with_name("auditq")
RUN_LIMIT = 120.0  # seconds the whole schemathesis run may take
START_LIMIT = 20.0  # seconds the API gets to answer /healthz


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(settings: Settings, tmp_path: Path) -> AsyncIterator[str]:
    """Run `auditq api` on a free port, as an operator would, until the block ends."""
    port = free_port()
    env = os.environ | {
        "AUDITQ_REDIS_URL": settings.redis_url or "",
        "AUDITQ_DATABASE_URL": settings.database_url or "",
        "AUDITQ_QUEUE": settings.queue,
        "AUDITQ_DATA_DIR": str(tmp_path),
        "AUDITQ_HTTP_PORT": str(port),
        "AUDITQ_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "api.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        str(AUDITQ), "api", env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_LIMIT
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                assert process.returncode is None, (tmp_path / "api.log").read_text()
                assert time.monotonic() < deadline, "the API did not start"
                await asyncio.sleep(0.1)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 20)
        log.close()


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis (dev extra) not installed")
async def test_no_route_fails_on_generated_input(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    token = await create_token(pg, name="fuzzer", role="admin")
    async with serving(settings, tmp_path) as base:
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            f"{base}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "20",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
            "--request-timeout",
            "10",
            # The live tail answers with an endless stream: no single response to check.
            "--exclude-path-regex",
            "/stream$",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its report and cache stay out of the repository
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), RUN_LIMIT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"schemathesis ran longer than {RUN_LIMIT} s") from None
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-20_000:]

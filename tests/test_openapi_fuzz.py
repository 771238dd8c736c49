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
RUN_LIMIT = 150.0  # seconds one schemathesis run may take
MAX_EXAMPLES = 20  # generated cases per route and phase: the run stays near a minute
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "schemathesis.toml"
HOOKS = "tests.schemathesis_hooks"  # the rules between parameters JSON Schema cannot state
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


async def schemathesis(base: str, token: str, cwd: Path, *options: str) -> tuple[int, str]:
    """Run the schemathesis CLI on the API's own document; its exit code and report."""
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--seed",
        "1",
        "--request-timeout",
        "10",
        "--workers",
        "2",
        "--no-color",
        *options,
        env=os.environ | {"SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,  # its report and cache stay out of the repository
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_LIMIT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"schemathesis ran longer than {RUN_LIMIT} s") from None
    assert process.returncode is not None
    report = output.decode(errors="replace")
    (cwd / "schemathesis.txt").write_text(report)
    # Generated URLs can be long: the failure message keeps each line short.
    return process.returncode, "\n".join(line[:400] for line in report.splitlines())


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis (dev extra) not installed")
async def test_no_route_fails_on_generated_input(
    settings: Settings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Every check, the four phases, every route: 0 failures."""
    token = await create_token(pg, name="fuzzer", role="admin")
    async with serving(settings, tmp_path) as base:
        code, report = await schemathesis(
            base,
            token,
            tmp_path,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            # A valid request to the live tail is answered by an endless stream: there is no
            # single response to check, so it gets the run below.
            "--exclude-path-regex",
            "/stream$",
        )
        assert code == 0, report[-20_000:]
        # The live tail, bounded: every schema-invalid request is refused at once (one that
        # is accepted streams on, and shows as a timeout); wrong methods and no token too.
        code, report = await schemathesis(
            base,
            token,
            tmp_path,
            "--phases",
            "examples,coverage,fuzzing",
            "--mode",
            "negative",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--include-path-regex",
            "/stream$",
        )
        assert code == 0, report[-20_000:]

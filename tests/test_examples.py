"""The documented programs run as written and store what their pages say."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import asyncpg

from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker
from tests.test_docs import README, blocks, example_dir

ROOT = Path(__file__).resolve().parent.parent
SQLALCHEMY_EXAMPLE = ROOT / "docs" / "examples" / "sqlalchemy_example.py"
SQLALCHEMY_PAGE = ROOT / "docs" / "sqlalchemy.md"
FIRST_EVENT = ROOT / "docs" / "examples" / "first_event.py"
PROCESS_TIMEOUT = 60.0  # seconds

__all__ = ["example_dir"]  # the fixture, used here too


def test_the_page_shows_the_sqlalchemy_example_file_as_it_is() -> None:
    page = SQLALCHEMY_PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
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
        stored_rows = await conn.fetch(
            "SELECT ts, action, entity_type, entity_id, actor_id, source,"
            " changes::text AS changes FROM audit_log"
        )
    finally:
        await conn.close()
    # The example's order: its three commits are captured in turn, so their times never go
    # backwards (two of them may share a timestamp, which is why the rows are not read by ts).
    order = {"asset.created": 0, "asset.updated": 1, "asset.deleted": 2}
    rows = sorted(stored_rows, key=lambda r: order.get(r["action"], len(order)))
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert [(r["action"], r["entity_id"], r["actor_id"], r["source"]) for r in rows] == [
        ("asset.created", "1", "u-42", "inventory"),
        ("asset.updated", "1", "u-42", "inventory"),
        ("asset.deleted", "1", "u-42", "inventory"),
    ]
    # What docs/sqlalchemy.md shows of them.
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


async def test_the_readme_first_event_runs_as_told_and_is_stored(
    settings: Settings, database_url: str, example_dir: Path
) -> None:
    """The README's "Produce an event": its shell lines run its program against the stack."""
    section = README.read_text().split("## Produce an event", 1)[1].split("\n## ", 1)[0]
    page_blocks = [b for b in blocks(README) if b.code.strip() and b.code in section]
    shell = next(b for b in page_blocks if b.lang == "sh")
    program = next(b for b in page_blocks if b.lang == "python")
    assert ". .auditq/producer.env" in shell.code
    assert "docs/examples/first_event.py" in shell.code
    code = FIRST_EVENT.read_text()
    assert code[code.index("import asyncio") :] == program.code  # the file the README shows
    (example_dir / "docs").symlink_to(ROOT / "docs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITQ_")}
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-c",
        shell.code,
        cwd=example_dir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()
    assert stderr == b""  # not one failure line
    printed = re.fullmatch(r"stored as ([0-9a-f-]{36})\n", stdout.decode())
    assert printed, stdout.decode()

    async with running_worker(settings):

        async def stored() -> bool:
            return await count_rows(database_url) >= 2

        await wait_for(stored)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, action, severity, actor_id, entity_type, entity_id,"
            " changes::text AS changes, metadata::text AS metadata FROM audit_log ORDER BY action"
        )
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["auth.login", "project.renamed"]
    renamed = rows[1]
    assert renamed["id"] == printed.group(1)  # the id it printed is the row's
    assert (renamed["severity"], renamed["actor_id"]) == ("notice", "u-42")
    assert (renamed["entity_type"], renamed["entity_id"]) == ("project", "42")
    assert json.loads(renamed["changes"]) == [{"field": "name", "old": "Apollo", "new": "Artemis"}]
    # The comment in the README: the key is redacted before the event leaves the process.
    assert json.loads(renamed["metadata"]) == {"reason": "rebrand", "api_key": "[REDACTED]"}

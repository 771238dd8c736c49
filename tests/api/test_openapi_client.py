"""A client generated from the OpenAPI document (openapi-python-client) reads audit logs:
every read answers a typed value, never None, and paging with it walks every row once."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from aiohttp.test_utils import TestClient

from service.api.audit_logs.items import AuditLogItem, AuditLogPage, AuditLogStatistics
from tests.support.admin_api import Tokens

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
ROWS = 7

INSERT = """
INSERT INTO audit_log (id, ts, action, category, severity, outcome, actor_id, actor_type,
                       actor_name, entity_type, entity_id, tenant, request_id, ip, method, path,
                       status, duration_ms, changes, metadata, presentation, source, received_via)
VALUES ($1, $2, 'doc.updated', 'doc', 'notice', 'success', 'u-1', 'user', 'Ann', 'doc', $3,
        't-1', 'r-1', '10.1.2.3', 'PATCH', '/docs/1', 200, 12.5,
        '[{"field": "title", "old": "a", "new": "b"}]', '{"n": 1, "tags": ["x"]}',
        '{"code": "audit.doc.updated", "params": {"n": 1}}', 'svc', 'redis:audit-logs')
"""


def generate(document: Path, package: Path) -> None:
    """Run the generator as a user would (its ruff hook needs the venv on PATH)."""
    env = os.environ | {"PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = ["generate", "--path", str(document), "--output-path", str(package), "--meta", "none"]
    result = subprocess.run(
        [str(GENERATOR), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # nothing of the document skipped


async def test_a_generated_client_pages_through_audit_logs(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(ROWS)]
    for n, row_id in enumerate(ids):
        await pg.execute(INSERT, row_id, now - timedelta(minutes=n), f"d-{n}")

    document = tmp_path / "openapi.json"
    document.write_bytes(await (await api.get("/api/v1/openapi.json")).read())
    name = f"auditq_client_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(generate, document, tmp_path / name)
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module(f"{name}.client")
        endpoints = f"{name}.api.default"
        list_logs = importlib.import_module(f"{endpoints}.get_api_v1_admin_audit_logs")
        one_log = importlib.import_module(f"{endpoints}.get_api_v1_admin_audit_logs_id")
        search = importlib.import_module(f"{endpoints}.post_api_v1_admin_audit_logs_search")
        entity = importlib.import_module(
            f"{endpoints}.get_api_v1_admin_audit_logs_entity_entity_type_entity_id"
        )
        actor = importlib.import_module(f"{endpoints}.get_api_v1_admin_audit_logs_user_actor_id")
        statistics = importlib.import_module(f"{endpoints}.get_api_v1_admin_audit_logs_statistics")
        models = importlib.import_module(f"{name}.models")
        unset = importlib.import_module(f"{name}.types").UNSET
    finally:
        sys.path.remove(str(tmp_path))

    # An admin token: the search is a POST, which a reader token may not send.
    token = tokens.admin["Authorization"].removeprefix("Bearer ")
    base_url = str(api.make_url("")).rstrip("/")
    async with client_module.AuthenticatedClient(base_url=base_url, token=token) as client:
        seen: list[uuid.UUID] = []
        cursor: Any = unset
        pages = 0
        while True:
            page = await list_logs.asyncio(client=client, limit=3, cursor=cursor)
            assert isinstance(page, models.AuditLogPage), page
            pages += 1
            seen += [item.id for item in page.items]
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert seen == ids  # newest first, every row once
        assert pages == 3

        item = await one_log.asyncio(client=client, id=ids[2])
        assert isinstance(item, models.AuditLogItem), item
        assert item.actor.name == "Ann" and item.request.ip == "10.1.2.3"
        assert item.changes[0].field == "title" and item.entity.id == "d-2"

        body = models.AuditLogQuery.from_dict({"entity_id": "d-4"})
        found = await search.asyncio(client=client, body=body)
        assert isinstance(found, models.AuditLogPage), found
        assert [i.id for i in found.items] == [ids[4]]
        history = await entity.asyncio(client=client, entity_type="doc", entity_id="d-1")
        assert [i.id for i in history.items] == [ids[1]]
        acts = await actor.asyncio(client=client, actor_id="u-1", limit=1000)
        assert len(acts.items) == ROWS

        stats = await statistics.asyncio(client=client)
        assert isinstance(stats, models.AuditLogStatistics), stats
        assert stats.by_severity.notice == ROWS
        assert stats.top_actors[0].actor_id == "u-1"

    # The declarations the document is made from decode the real bodies, strictly.
    headers = tokens.reader
    for path, kind in (
        ("/api/v1/admin/audit-logs", AuditLogPage),
        (f"/api/v1/admin/audit-logs/{ids[0]}", AuditLogItem),
        ("/api/v1/admin/audit-logs/statistics", AuditLogStatistics),
    ):
        response = await api.get(path, headers=headers)
        assert response.status == 200
        msgspec.json.decode(await response.read(), type=kind)

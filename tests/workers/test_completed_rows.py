"""A job of completed events stored from its text (jsonb_to_recordset) stores the very rows
the per-event path stores; what PostgreSQL refuses sends the job down that path."""

from __future__ import annotations

import json
import uuid

import msgspec
import redis.asyncio as aioredis

from service.events import AuditEvent, encode, finalize
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.queue.live import live_entry, read_live_entry
from service.settings import Settings
from service.store import db
from tests.support.polling import wait_for
from tests.support.worker import count_rows, running_worker
from workers.writer import write_events, write_json_events

COMPARED = """
SELECT action, category, severity, outcome, actor_id, actor_type, actor_name, actor_email,
       entity_type, entity_id, entity_name, tenant, request_id, ip, user_agent, method, path,
       status, duration_ms, changes::text, metadata::text, presentation::text, source,
       search::text
FROM audit_log WHERE received_via = $1 ORDER BY entity_id
"""


def events() -> list[AuditEvent]:
    """Events as the client sends them: one with every field, one with none it may omit."""
    plain = {"action": "doc.viewed", "entity": {"type": "doc", "id": "d-0"}}
    full = {
        "action": "doc.updated",
        "severity": "critical",
        "outcome": "failure",
        "actor": {"id": "u-1", "type": "user", "name": "Zoë Ünïcode", "email": "z@example.com"},
        "entity": {"type": "doc", "id": "d-1", "name": "Plan 🚀"},
        "tenant": "t-1",
        "request": {"id": "r-1", "ip": "2001:db8::1", "user_agent": "ua/1", "method": "PUT",
                    "path": "/d/1", "status": 201, "duration_ms": 12},
        "changes": [{"field": "title", "new": "x"}, {"field": "n", "old": 1.5, "new": 2}],
        "metadata": {"nested": {"list": [1, "two", None, True, {"k": 0.1}]}, "big": 2**60},
        "presentation": {"code": "doc.updated", "params": {"who": "Zoë", "n": 3}},
        "source": "svc",
    }  # fmt: skip
    return [finalize(msgspec.convert(e, AuditEvent))[0] for e in (plain, full)]


async def test_rows_from_the_text_are_the_rows_of_the_events(database_url: str) -> None:
    batch = events()
    again = [msgspec.structs.replace(e, id=uuid.uuid4()) for e in batch]
    text = "[" + ",".join(encode(e).decode() for e in again) + "]"
    conn = await db.connect(database_url)
    try:
        await write_events(conn, batch, received_via="per-event", keyed=True)
        new, live = await write_json_events(conn, text, received_via="text", keyed=True)
        entry = read_live_entry({k.encode(): v for k, v in (live or {}).items()})
        rows = await conn.fetch("SELECT seq, ts FROM audit_log WHERE received_via = 'text'")
        assert new == 2 and entry is not None and live == live_entry([tuple(r) for r in rows])
        assert await write_json_events(conn, text, received_via="text", keyed=True) == (0, None)
        # The probing statement (HTTP ingest's ids) finds them whatever their ts.
        later = [msgspec.structs.replace(e, ts=e.ts.replace(year=2001)) for e in again]
        text = "[" + ",".join(encode(e).decode() for e in later) + "]"
        assert (await write_json_events(conn, text, received_via="text"))[0] == 0
        expected = [tuple(r) for r in await conn.fetch(COMPARED, "per-event")]
        assert [tuple(r) for r in await conn.fetch(COMPARED, "text")] == expected
        assert len(expected) == 2
    finally:
        await conn.close()


async def test_a_row_postgres_refuses_sends_the_job_event_by_event(
    settings: Settings, redis: aioredis.Redis, database_url: str
) -> None:
    good = [finalize(AuditEvent(action="doc.viewed"))[1].decode() for _ in range(3)]
    bad = json.loads(good[0]) | {"id": str(uuid.uuid4()), "request": {"ip": "999.1.1.1"}}
    payload = "[" + ",".join([*good, json.dumps(bad, separators=(",", ":"))]) + "]"
    await redis.eval(ENQUEUE_SCRIPT, 1, settings.queue, payload, "", "finalized")
    async with running_worker(settings):
        await wait_for(lambda: dead_letter.list_ids(redis, settings.queue))
    assert await count_rows(database_url) == 3
    (task_id,) = await dead_letter.list_ids(redis, settings.queue)
    letter = await dead_letter.get(redis, settings.queue, task_id)
    assert letter is not None and letter.event_count == 1 and "ip" in letter.message

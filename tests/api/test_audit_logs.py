"""The audit-log admin API on real servers: filters, keyset pages, export, statistics, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.api.audit_logs import cursor as cursors
from service.api.audit_logs import export
from service.api.audit_logs.query import convert_query
from service.api.state import REDIS, SETTINGS
from service.events import AuditEvent, finalize
from service.queue import revocations
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.settings import Settings
from service.store.pages import page_query
from service.store.tokens import create_token, revoke_token
from tests.support.admin_api import admin_events, insert_token
from tests.support.polling import wait_for
from tests.support.worker import running_worker
from workers.writer import write_events

BASE = "/api/v1/admin/audit-logs"
INJECTION = "' OR 1=1 --"


def make_event(**fields: Any) -> AuditEvent:
    """A stored-shape event (defaults filled) from wire-format data."""
    event, _ = finalize(msgspec.convert(fields, AuditEvent))
    return event


async def seed(pg: asyncpg.Connection, events: list[AuditEvent]) -> None:
    result = await write_events(pg, events, received_via="redis:test", keyed=True)
    assert len(result.inserted) == len(events) and not result.rejected


@pytest.fixture
async def admin(pg: asyncpg.Connection) -> dict[str, str]:
    token = await insert_token(pg, name="test-admin", role="admin")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def reader(pg: asyncpg.Connection) -> dict[str, str]:
    token = await insert_token(pg, name="test-reader", role="reader")
    return {"Authorization": f"Bearer {token}"}


async def get_json(
    api: TestClient[Any, Any], path: str, headers: dict[str, str], **params: Any
) -> Any:
    async with api.get(path, headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def ids(api: TestClient[Any, Any], headers: dict[str, str], params: Any) -> list[str]:
    async with api.get(BASE, headers=headers, params=params) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["next_cursor"] is None  # the data sets here fit in one page
    return [entry["id"] for entry in body["items"]]


async def error(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body["error"]) == {"code", "message"}
    message: str = body["error"]["message"]
    return message


# Keyset pagination.


async def test_walking_every_page_returns_each_row_once_while_rows_arrive(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    # Three rows per timestamp: ties are broken by id, or a page boundary would lose rows.
    walk = [
        make_event(
            action="record.updated",
            ts=(start + timedelta(milliseconds=i // 3)).isoformat(),
            tenant="walk",
            actor={"id": f"user-{i % 11}", "type": "user"},
        )
        for i in range(5000)
    ]
    others = [
        make_event(action="record.updated", ts=start.isoformat(), tenant="other")
        for _ in range(300)
    ]
    await seed(pg, walk + others)
    await pg.execute("ANALYZE audit_log")
    expected = {str(e.id) for e in walk}

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"tenant": "walk", "limit": "97"} | ({"cursor": cursor} if cursor else {})
        body = await get_json(api, BASE, admin, **params)
        seen += [entry["id"] for entry in body["items"]]
        pages += 1
        # New matching rows arrive during the walk, newer than every row it started with.
        arriving = [
            make_event(action="record.created", tenant="walk", ts=datetime.now(UTC).isoformat())
            for _ in range(3)
        ]
        await seed(pg, arriving)
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 100, "the walk does not end"
    assert len(seen) == len(set(seen)) == 5000
    assert set(seen) == expected
    assert pages == -(-5000 // 97)

    # A page deep in the walk is an index range scan, with no OFFSET.
    middle = next(e for e in walk if str(e.id) == seen[2600])
    assert middle.ts is not None and middle.id is not None
    audit_query = convert_query({"tenant": ["walk"], "limit": 97}, strict=True)
    sql, args = page_query(audit_query, cursors.Position(middle.ts, middle.id, "desc"))
    assert "OFFSET" not in sql.upper()
    plan = "\n".join(row[0] for row in await pg.fetch("EXPLAIN " + sql, *args))
    assert "Index" in plan, plan
    assert "Seq Scan" not in plan, plan


async def test_ascending_walk_and_cursor_of_another_order(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    events = [
        make_event(action="auth.login", ts=(start + timedelta(seconds=i)).isoformat())
        for i in range(25)
    ]
    await seed(pg, events)
    first = await get_json(api, BASE, admin, order="asc", limit="10")
    assert [e["id"] for e in first["items"]] == [str(e.id) for e in events[:10]]
    second = await get_json(api, BASE, admin, order="asc", limit="10", cursor=first["next_cursor"])
    assert [e["id"] for e in second["items"]] == [str(e.id) for e in events[10:20]]
    async with api.get(
        BASE, headers=admin, params={"order": "desc", "cursor": first["next_cursor"]}
    ) as response:
        assert "`cursor`" in await error(response, 400)


# Filters.


def data_set() -> list[AuditEvent]:
    t0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    return [
        make_event(
            action="auth.login",
            ts=t0.isoformat(),
            actor={"id": "alice", "type": "user", "name": "Alice"},
            tenant="acme",
            request={"id": "req-1", "ip": "10.0.0.5"},
            metadata={"note": "first flamingo sighting"},
        ),
        make_event(
            action="auth.logout",
            ts=(t0 + timedelta(hours=1)).isoformat(),
            actor={"id": "alice", "type": "user"},
            tenant="acme",
            outcome="failure",
            request={"id": "req-2", "ip": "10.0.1.7"},
        ),
        make_event(
            action="config.updated",
            category="settings",
            ts=(t0 + timedelta(days=1)).isoformat(),
            severity="warning",
            actor={"id": "bob", "type": "user"},
            entity={"type": "project", "id": "42", "name": "Apollo"},
            tenant="globex",
            changes=[{"field": "mode", "old": "lax", "new": "zebra"}],
        ),
        make_event(
            action="config.deleted",
            ts=(t0 + timedelta(days=2)).isoformat(),
            severity="critical",
            actor={"id": "bob", "type": "user"},
            entity={"type": "project", "id": "43"},
            tenant="globex",
            request={"ip": "2001:db8::1"},
        ),
        make_event(
            action="authz.denied",
            ts=(t0 + timedelta(days=3)).isoformat(),
            severity="notice",
            outcome="failure",
            actor={"id": "svc-billing", "type": "service"},
            entity={"type": "invoice", "id": "42"},
        ),
    ]


async def test_every_filter_alone_and_combined(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    events = data_set()
    await seed(pg, events)
    i = [str(e.id) for e in events]
    cases: list[tuple[Any, list[str]]] = [
        ({}, i[::-1]),
        ({"action": "auth.login"}, [i[0]]),
        ([("action", "auth.login"), ("action", "config.deleted")], [i[3], i[0]]),
        ({"action_prefix": "auth"}, [i[4], i[1], i[0]]),
        ({"action_prefix": "auth."}, [i[1], i[0]]),
        ({"category": "settings"}, [i[2]]),
        ({"category": "auth"}, [i[1], i[0]]),
        ({"severity": "warning"}, [i[2]]),
        ([("severity", "warning"), ("severity", "critical")], [i[3], i[2]]),
        ({"outcome": "failure"}, [i[4], i[1]]),
        ({"actor_id": "alice"}, [i[1], i[0]]),
        ({"entity_type": "project"}, [i[3], i[2]]),
        ({"entity_id": "42"}, [i[4], i[2]]),
        ({"tenant": "globex"}, [i[3], i[2]]),
        ({"request_id": "req-2"}, [i[1]]),
        ({"ip": "10.0.0.5"}, [i[0]]),
        ({"ip": "10.0.0.0/16"}, [i[1], i[0]]),
        ({"ip": "2001:db8::1"}, [i[3]]),
        ({"since": "2025-03-02T12:00:00Z"}, [i[4], i[3], i[2]]),
        ({"until": "2025-03-01T13:00:00Z"}, [i[1], i[0]]),
        ({"since": "2025-03-02", "until": "2025-03-03T23:59:59+00:00"}, [i[3], i[2]]),
        ({"q": "flamingo"}, [i[0]]),  # a word inside metadata
        ({"q": "zebra"}, [i[2]]),  # a word inside changes
        ({"q": "apollo"}, [i[2]]),  # the entity's name
        ({"q": "!!!"}, []),  # no words at all
        ({"order": "asc"}, i),
        ({"entity_type": "project", "entity_id": "42"}, [i[2]]),
        ({"actor_id": "alice", "outcome": "success"}, [i[0]]),
        ({"tenant": "globex", "severity": "critical", "action_prefix": "config."}, [i[3]]),
        ({"outcome": "failure", "since": "2025-03-02T00:00:00Z"}, [i[4]]),
        ({"unknown_parameter": "ignored", "action": ""}, i[::-1]),
        # No stored text holds a NUL (PostgreSQL's text cannot): such a value matches nothing.
        ({"entity_id": "42\x00"}, []),
        ({"actor_id": ["alice", "x\x00"]}, [i[1], i[0]]),
        ({"q": "flamingo\x00"}, []),
    ]
    for params, expected in cases:
        assert await ids(api, admin, params) == expected, params


async def test_item_has_the_wire_shape_and_one_is_found_by_id(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    events = data_set()
    await seed(pg, events)
    entry = await get_json(api, f"{BASE}/{events[0].id}", admin)
    assert entry["id"] == str(events[0].id)
    assert entry["ts"] == "2025-03-01T12:00:00Z"
    assert entry["actor"] == {"id": "alice", "type": "user", "name": "Alice"}  # no nulls
    assert entry["entity"] is None
    assert entry["request"] == {"id": "req-1", "ip": "10.0.0.5"}
    assert entry["presentation"] == {"code": "audit.auth.login", "params": {}}
    assert entry["metadata"] == {"note": "first flamingo sighting"}
    assert entry["category"] == "auth" and entry["severity"] == "info"
    assert datetime.fromisoformat(entry["received_at"]) > datetime(2025, 1, 1, tzinfo=UTC)
    assert set(entry) == {
        *("id", "ts", "action", "category", "severity", "outcome", "actor", "entity"),
        *("tenant", "request", "changes", "metadata", "presentation", "source", "received_at"),
        "received_via",
    }
    async with api.get(f"{BASE}/{uuid.uuid4()}", headers=admin) as response:
        await error(response, 404)


async def test_entity_history_is_oldest_first_and_actor_history_newest_first(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    events = [
        make_event(
            action="doc.edited",
            ts=(t0 + timedelta(minutes=n)).isoformat(),
            actor={"id": "carol@example.com", "type": "user"},
            entity={"type": "doc", "id": "a/b 1"},
        )
        for n in range(4)
    ]
    events.append(make_event(action="doc.edited", entity={"type": "doc", "id": "other"}))
    await seed(pg, events)
    expected = [str(e.id) for e in events[:4]]
    body = await get_json(api, f"{BASE}/entity/doc/a%2Fb%201", admin)
    assert [e["id"] for e in body["items"]] == expected
    body = await get_json(api, f"{BASE}/user/carol@example.com", admin, limit="3")
    assert [e["id"] for e in body["items"]] == expected[::-1][:3]
    rest = await get_json(
        api, f"{BASE}/user/carol@example.com", admin, limit="3", cursor=body["next_cursor"]
    )
    assert [e["id"] for e in rest["items"]] == expected[:1]
    assert rest["next_cursor"] is None


async def test_search_takes_the_filters_as_json_with_lists(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    events = data_set()
    await seed(pg, events)
    i = [str(e.id) for e in events]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"action": ["auth.login", "config.deleted"]}, [i[3], i[0]]),
        ({"severity": ["warning", "critical"], "tenant": "globex"}, [i[3], i[2]]),
        ({"actor_id": ["alice", "svc-billing"], "outcome": "failure"}, [i[4], i[1]]),
        ({"entity_type": ["invoice"], "order": "asc"}, [i[4]]),
        ({"tenant": ["acme", "globex"], "q": "flamingo"}, [i[0]]),
        ({"actor_id": INJECTION}, []),
    ]
    for body, expected in cases:
        async with api.post(f"{BASE}/search", headers=admin, json=body) as response:
            assert response.status == 200, await response.text()
            assert [e["id"] for e in (await response.json())["items"]] == expected, body
    page = await (await api.post(f"{BASE}/search", headers=admin, json={"limit": 2})).json()
    assert len(page["items"]) == 2
    rest = await api.post(
        f"{BASE}/search", headers=admin, json={"limit": 2, "cursor": page["next_cursor"]}
    )
    assert [e["id"] for e in (await rest.json())["items"]] == [i[2], i[1]]


async def test_injection_is_only_data(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed(pg, data_set())
    for name in ("action", "action_prefix", "category", "actor_id", "entity_type", "entity_id"):
        assert await ids(api, admin, {name: INJECTION}) == [], name
    for name in ("tenant", "request_id", "q"):
        assert await ids(api, admin, {name: INJECTION}) == [], name
    async with api.get(f"{BASE}/entity/{INJECTION}/{INJECTION}", headers=admin) as response:
        assert (await response.json())["items"] == []
    assert await pg.fetchval("SELECT count(*) FROM audit_log") == 5


# Errors.


async def test_bad_values_are_400_naming_the_parameter(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed(pg, data_set())
    page = await get_json(api, BASE, admin, limit="2")
    body, _, signature = page["next_cursor"].partition(".")
    payload = json.loads(cursors._unb64(body))
    payload["ts"] = "2099-01-01T00:00:00Z"  # forged: moved, signature kept
    forged = cursors._b64(json.dumps(payload).encode()) + "." + signature
    cases = [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-45"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": page["next_cursor"][:-3] + "AAA"}, "cursor"),
        ({"cursor": forged}, "cursor"),
        ({"order": "sideways"}, "order"),
        ({"severity": "fatal"}, "severity"),
        ({"outcome": "maybe"}, "outcome"),
        ({"ip": "10.0.0.300"}, "ip"),
        ({"q": "x" * 2000}, "q"),
        ([("tenant", "a"), ("outcome", "success"), ("outcome", "failure")], "outcome"),
    ]
    for params, name in cases:
        async with api.get(BASE, headers=admin, params=params) as response:
            assert f"`{name}`" in await error(response, 400), params
    async with api.get(f"{BASE}/not-a-uuid", headers=admin) as response:
        assert "`id`" in await error(response, 400)
    async with api.get(f"{BASE}/export", headers=admin, params={"format": "xml"}) as response:
        assert "`format`" in await error(response, 400)
    for params, name in [({"since": "x"}, "since"), ({"until": "0001-01-05"}, "until")]:
        async with api.get(f"{BASE}/statistics", headers=admin, params=params) as response:
            assert f"`{name}`" in await error(response, 400)
    async with api.get(
        f"{BASE}/statistics", headers=admin, params={"since": "1990-01-01"}
    ) as response:
        assert "`since`" in await error(response, 400)  # a window of decades
    bodies: list[tuple[Any, str]] = [
        ({"limit": "10"}, "limit"),  # JSON has types: a string is not a number
        ({"action": 5}, "action"),
        ({"severity": ["info", "fatal"]}, "severity"),
        ({"since": "not a time"}, "since"),
        ({"bogus": 1}, "bogus"),
        ([1, 2], "body"),
    ]
    for body, name in bodies:
        async with api.post(f"{BASE}/search", headers=admin, json=body) as response:
            assert f"`{name}`" in await error(response, 400), body
    async with api.post(
        f"{BASE}/search", headers=admin | {"Content-Type": "application/json"}, data=b"{nope"
    ) as response:
        assert "`body`" in await error(response, 400)


async def test_search_content_type_and_size(
    api: TestClient[Any, Any], admin: dict[str, str]
) -> None:
    async with api.post(f"{BASE}/search", headers=admin, data="action=auth.login") as response:
        await error(response, 415)
    big = io.BytesIO(json.dumps({"q": "x" * (3 * 1024 * 1024)}).encode())
    async with api.post(
        f"{BASE}/search", headers=admin | {"Content-Type": "application/json"}, data=big
    ) as response:
        await error(response, 413)


async def test_tokens_guard_every_route(
    api: TestClient[Any, Any],
    admin: dict[str, str],
    reader: dict[str, str],
    pg: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The token check kept by this replica is looked up again after 0.5 s (5 s in production):
    # the recheck is what is tested, not its period.
    monkeypatch.setattr(revocations, "RECHECK_AFTER_S", 0.5)
    async with api.get(BASE) as response:
        await error(response, 401)
    async with api.get(BASE, headers={"Authorization": "Bearer aq_unknown"}) as response:
        await error(response, 401)
    ingest = await create_token(pg, name="ingester", role="ingest")
    async with api.get(BASE, headers={"Authorization": f"Bearer {ingest}"}) as response:
        await error(response, 403)
    async with api.get(BASE, headers=reader) as response:
        assert response.status == 200
    # A reader reads with GET only: a search by POST is refused.
    async with api.post(f"{BASE}/search", headers=reader, json={}) as response:
        await error(response, 403)
    async with api.post(f"{BASE}/search", headers=admin, json={}) as response:
        assert response.status == 200
    assert await revoke_token(pg, "test-reader")

    async def refused() -> bool:
        async with api.get(BASE, headers=reader) as response:
            return response.status == 401

    await wait_for(refused, within_s=30.0, interval=0.25)  # the recheck above


# Export.


async def queued_actions(redis: aioredis.Redis, queue: str) -> list[dict[str, Any]]:
    """The events waiting in the queue (the API audits admin actions through it)."""
    events = []
    for task_id in await redis.zrange(queue, 0, -1):
        job = json.loads(await redis.get(b"arq:job:" + task_id))
        payload = json.loads(job["a"][0])
        events += payload if isinstance(payload, list) else [payload]
    return events


async def test_export_streams_every_row_as_csv_and_jsonl(
    api: TestClient[Any, Any],
    admin: dict[str, str],
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    t0 = datetime.now(UTC) - timedelta(days=1)
    # Three of the export's server-side cursor fetches: rows streamed chunk after chunk, as
    # 20,000 showed, in a sixth of the time.
    bulk = 3 * export.EXPORT_CHUNK_ROWS
    events = [
        make_event(
            action="file.downloaded",
            ts=(t0 + timedelta(milliseconds=n)).isoformat(),
            tenant="bulk",
            actor={"id": f"user-{n % 50}", "type": "user"},
            metadata={"n": n},
        )
        for n in range(bulk)
    ]
    hostile = make_event(
        action="profile.updated",
        tenant="bulk",
        actor={"id": "mallory", "type": "user", "name": '=HYPERLINK("http://x","y")'},
        entity={"type": "user", "id": "+1-555", "name": "@SUM(A1)"},
        source="-2+3",
        metadata={"note": "=1+1", "multi": "line\nbreak"},
    )
    await seed(pg, [*events, hostile])
    await seed(pg, [make_event(action="file.downloaded", tenant="elsewhere")])

    async with api.get(
        f"{BASE}/export", headers=admin, params={"format": "csv", "tenant": "bulk"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in response.headers["Content-Disposition"]
        assert response.headers.get("Transfer-Encoding") == "chunked"
        text = await response.text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(export.CSV_HEADER)
    assert len(rows) == 1 + bulk + 1
    header = rows[0]
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:]}
    assert len(by_id) == bulk + 1
    cells = by_id[str(hostile.id)]
    assert cells["actor_name"] == '\'=HYPERLINK("http://x","y")'
    assert cells["entity_id"] == "'+1-555"
    assert cells["entity_name"] == "'@SUM(A1)"
    assert cells["source"] == "'-2+3"
    assert json.loads(cells["metadata"]) == {"note": "=1+1", "multi": "line\nbreak"}

    async with api.get(
        f"{BASE}/export", headers=admin, params={"format": "jsonl", "tenant": "bulk"}
    ) as response:
        assert response.status == 200
        lines = (await response.read()).splitlines()
    assert len(lines) == bulk + 1
    items = [json.loads(line) for line in lines]
    assert {entry["id"] for entry in items} == set(by_id)
    assert items[0]["id"] == str(hostile.id)  # newest first, as the list

    exported = await admin_events(pg, "audit.exported")  # in PostgreSQL, before the export
    assert [e["metadata"]["format"] for e in exported] == ["csv", "jsonl"]
    assert exported[0]["metadata"]["filters"]["tenant"] == ["bulk"]
    assert exported[0]["actor_id"] == "test-admin"


# Statistics.


async def test_statistics_shape_and_counts(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection
) -> None:
    await seed(pg, data_set())
    stats = await get_json(
        api, f"{BASE}/statistics", admin, since="2025-03-01T00:00:00Z", until="2025-03-05T00:00:00Z"
    )
    assert set(stats) == {"per_day", "top_actors", "top_actions", "by_severity", "by_outcome"}
    assert stats["per_day"] == [
        {"day": "2025-03-01", "count": 2},
        {"day": "2025-03-02", "count": 1},
        {"day": "2025-03-03", "count": 1},
        {"day": "2025-03-04", "count": 1},
        {"day": "2025-03-05", "count": 0},
    ]
    assert stats["top_actors"][:2] == [
        {"actor_id": "alice", "actor_name": "Alice", "count": 2},
        {"actor_id": "bob", "actor_name": None, "count": 2},
    ]
    assert {"action": "auth.login", "count": 1} in stats["top_actions"]
    assert stats["by_severity"] == {"info": 2, "notice": 1, "warning": 1, "critical": 1}
    assert stats["by_outcome"] == {"success": 3, "failure": 2}
    acme = await get_json(
        api, f"{BASE}/statistics", admin, since="2025-03-01", until="2025-03-05", tenant="acme"
    )
    assert acme["by_outcome"] == {"success": 1, "failure": 1}
    recent = await get_json(api, f"{BASE}/statistics", admin)  # the last 30 days: none of these
    assert len(recent["per_day"]) == 31
    assert sum(day["count"] for day in recent["per_day"]) == 0


# The live tail.


async def next_event(response: Any, within_s: float = 15.0) -> tuple[str, dict[str, Any]]:
    """Read SSE lines until one whole event with data; fail after `within_s` seconds."""
    event_id, data = "", None
    async with asyncio.timeout(within_s):
        while True:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            if line.startswith("id: "):
                event_id = line[4:].strip()
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "\n" and data is not None:
                return event_id, data


async def stored_by_the_worker(redis: aioredis.Redis, queue: str, events: list[AuditEvent]) -> None:
    """Queue `events` as any producer would; the running worker stores them."""
    await redis.eval(ENQUEUE_SCRIPT, 1, queue, msgspec.json.encode(events))


async def test_stream_sends_rows_stored_after_connecting(
    api: TestClient[Any, Any],
    admin: dict[str, str],
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    queue = settings.queue
    async with running_worker(settings):
        await stored_by_the_worker(redis, queue, [make_event(action="auth.login", tenant="live")])
        await wait_for(lambda: _queue_drained(redis, queue))  # stored before: not sent
        async with api.get(f"{BASE}/stream", headers=admin, params={"tenant": "live"}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert (await response.content.readline()).startswith(b"retry:")
            other = make_event(action="auth.login", tenant="elsewhere")
            first = make_event(action="auth.logout", tenant="live")
            await stored_by_the_worker(redis, queue, [other, first])
            event_id, data = await next_event(response)
            assert data["id"] == str(first.id)
            assert data["received_at"] and data["received_via"] == f"redis:{queue}"
        # A reconnect with Last-Event-ID resumes after that row, with what came meanwhile.
        second = make_event(action="auth.login", tenant="live")
        await stored_by_the_worker(redis, queue, [second])
        await wait_for(lambda: _queue_drained(redis, queue))
        async with api.get(
            f"{BASE}/stream", headers=admin | {"Last-Event-ID": event_id}, params={"tenant": "live"}
        ) as response:
            _, data = await next_event(response)
            assert data["id"] == str(second.id)
    async with api.get(f"{BASE}/stream", headers=admin | {"Last-Event-ID": "forged"}) as response:
        assert "`Last-Event-ID`" in await error(response, 400)


async def test_a_row_of_a_long_transaction_is_not_skipped(
    api: TestClient[Any, Any], admin: dict[str, str], pg: asyncpg.Connection, database_url: str
) -> None:
    """A write that commits long after later ones were sent still reaches the tail."""
    from service.queue.keys import live_key
    from service.queue.live import live_entry

    slow, quick = (
        make_event(action="auth.login", tenant="long"),
        make_event(action="auth.logout", tenant="long"),
    )
    redis = api.app[REDIS]
    key = live_key(api.app[SETTINGS].queue)
    async with api.get(f"{BASE}/stream", headers=admin, params={"tenant": "long"}) as response:
        assert (await response.content.readline()).startswith(b"retry:")
        held = await asyncpg.connect(database_url)
        try:
            transaction = held.transaction()
            await transaction.start()
            result = await write_events(held, [slow], received_via="redis:test", keyed=True)
            await seed(pg, [quick])  # begun later, committed first
            written = await pg.fetch("SELECT seq, ts FROM audit_log WHERE id = $1", quick.id)
            await redis.xadd(key, live_entry([(r["seq"], r["ts"]) for r in written]))
            _, data = await next_event(response)
            assert data["id"] == str(quick.id)
            await asyncio.sleep(3)  # longer than the old tail's hold-back window
            await transaction.commit()
            assert result.inserted
            await redis.xadd(key, live_entry(result.inserted))
        finally:
            await held.close()
        _, data = await next_event(response)
        assert data["id"] == str(slow.id)


async def _queue_drained(redis: aioredis.Redis, queue: str) -> bool:
    return int(await redis.zcard(queue)) == 0


async def test_a_token_holds_a_bounded_number_of_open_streams(
    api: TestClient[Any, Any], reader: dict[str, str]
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            response = await stack.enter_async_context(api.get(f"{BASE}/stream", headers=reader))
            assert response.status == 200
            assert (await response.content.readline()).startswith(b"retry:")
        async with api.get(f"{BASE}/stream", headers=reader) as response:
            assert "4 open streams" in await error(response, 429)


async def test_a_revoked_tokens_stream_ends(
    api: TestClient[Any, Any], pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.api.audit_logs import stream

    monkeypatch.setattr(stream, "TOKEN_RECHECK_S", 0.5)  # 10 s in production
    token = await create_token(pg, name="soon-revoked", role="reader")
    async with api.get(f"{BASE}/stream", headers={"Authorization": f"Bearer {token}"}) as r:
        assert (await r.content.readline()).startswith(b"retry:")
        assert await revoke_token(pg, "soon-revoked")
        async with asyncio.timeout(15):
            while await r.content.readline():
                pass  # the server ends the stream: readline returns b""


async def test_shutdown_ends_open_streams(settings: Settings, admin: dict[str, str]) -> None:
    server = TestServer(create_app(settings))
    client = TestClient(server)
    await client.start_server()
    try:
        async with client.get(f"{BASE}/stream", headers=admin) as response:
            assert (await response.content.readline()).startswith(b"retry:")
            async with asyncio.timeout(5):  # not aiohttp's 60 s wait for open requests
                await server.close()
    finally:
        await client.close()


async def test_an_export_whose_client_stops_reading_lets_go_of_its_database_connection(
    api: TestClient[Any, Any],
    admin: dict[str, str],
    pg: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(export, "WRITE_TIMEOUT_S", 1.0)  # 30 s in production
    big = {"note": "x" * 2000}
    for _ in range(6):  # 6,000 rows of 2 KB: more than the sockets between them can hold
        await seed(pg, [make_event(action="bulk.row", metadata=big) for _ in range(1000)])

    async def exports_open() -> int:
        n: int = await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM audit_log%'"
            " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        )
        return n

    params = {"format": "jsonl", "action": "bulk.row"}
    response = await api.get(f"{BASE}/export", headers=admin, params=params)
    try:
        assert response.status == 200
        await response.content.read(1024)  # then stops reading: the socket fills up
        await wait_for(lambda: _is(exports_open, 1), within_s=30)
        # The server gives up on the writes and ends the export's transaction.
        await wait_for(lambda: _is(exports_open, 0), within_s=30)
    finally:
        response.close()


async def _is(count: Any, n: int) -> bool:
    return bool(await count() == n)

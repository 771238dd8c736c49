"""Hostile events under load: timestamps at the edges of time, and poison of every kind."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from service.events import MAX_FUTURE_S, AuditEvent, Entity, new_event_id
from service.producer.client import AuditClient
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.settings import Settings
from service.store.partitions import LIST_PARTITIONS, month_start, partition_name
from tests.faults.harness import (
    Ledger,
    Load,
    api_in_process,
    auditq_process,
    good_event_json,
    ingest_token,
    reckon,
    start_producers,
)
from tests.faults.report import FaultReport

pytestmark = pytest.mark.faults

LOAD_S = 3.0  # seconds of steady load the hostile events are mixed into
TICK_S = 0.1  # seconds between hostile events of one kind of producer


def edge_timestamps(now: datetime) -> list[datetime]:
    """Times far in the past and future, odd offsets, and this and next month (the far-future
    ones beyond AUDITQ_MAX_FUTURE_S are refused with their reason, never stored)."""
    next_month = month_start(now.date(), 1)
    return [
        datetime(1, 1, 2, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=14))),
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=timezone(timedelta(hours=-12))),
        now,
        datetime(next_month.year, next_month.month, 1, 0, 0, 1, tzinfo=UTC),
        now + timedelta(days=5 * 366),
        datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),  # the last storable instant
    ]


async def send_timestamps(
    client: AuditClient,
    lua: Any,
    queue: str,
    http: tuple[str, str],
    ledger: Ledger,
    expected: dict[str, datetime],
    stop: asyncio.Event,
) -> None:
    """Send each edge timestamp through capture, capture_nowait, Lua and HTTP, in turn."""
    stamps = itertools.cycle(edge_timestamps(datetime.now(UTC)))
    headers = {"Authorization": f"Bearer {http[1]}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        while not stop.is_set():
            ts = next(stamps)
            ids = [str(new_event_id()) for _ in range(4)]
            ahead = ts - datetime.now(UTC) > timedelta(seconds=MAX_FUTURE_S)
            for event_id in ids:
                if ahead:  # refused wherever it enters; through Lua it is a dead letter
                    ledger.poison[event_id] = "ts ahead of the clock"
                else:
                    expected[event_id] = ts
            ledger.offered += 4
            events = [
                AuditEvent(
                    id=uuid.UUID(event_id),
                    action="clock.edge",
                    ts=ts,
                    entity=Entity(type="clock", id=event_id),
                )
                for event_id in ids[:2]
            ]
            if await client.capture(events[0]) is not None:
                ledger.accept(ids[0], "capture")
            elif not ahead:
                ledger.refused += 1
            ledger.nowait[ids[1]] = asyncio.get_running_loop().time()
            client.capture_nowait(events[1])
            raw = {"action": "clock.edge", "ts": ts.isoformat()}
            try:
                await lua(keys=[queue], args=[json.dumps([{**raw, "id": ids[2]}])])
                ledger.accept(ids[2], "lua")
            except Exception:
                ledger.refused += 1
            body = {"events": [{**raw, "id": ids[3]}]}
            async with session.post(f"{http[0]}/api/v1/events", json=body) as response:
                if response.status == 202 and ids[3] in (await response.json())["accepted"]:
                    ledger.accept(ids[3], "http")
                else:
                    ledger.refused += 1
            await asyncio.sleep(TICK_S)


async def check_partitions(
    database_url: str, expected: dict[str, datetime]
) -> tuple[str, list[str]]:
    """Each edge event stored with its exact ts, in its month's partition or the default one."""
    conn = await asyncpg.connect(database_url)
    try:
        partitions = {row["relname"] for row in await conn.fetch(LIST_PARTITIONS)}
        rows = await conn.fetch(
            "SELECT id::text AS id, ts, tableoid::regclass::text AS part FROM audit_log "
            "WHERE id = ANY($1::uuid[])",
            list(expected),
        )
    finally:
        await conn.close()
    problems = []
    placed = {"monthly": 0, "default": 0}
    for row in rows:
        ts = expected[row["id"]].astimezone(UTC)
        if row["ts"] != ts:
            problems.append(f"event {row['id']} stored with ts {row['ts']}, sent {ts}")
        month = partition_name(month_start(ts.date()))
        want = month if month in partitions else "audit_log_default"
        if row["part"] != want:
            problems.append(f"event at {ts} is in {row['part']}, not {want}")
        placed["default" if row["part"] == "audit_log_default" else "monthly"] += 1
    note = (
        f"{len(rows)} edge events: {placed['monthly']} in their month's partition, "
        f"{placed['default']} in the default one; every ts exact"
    )
    return note, problems


async def test_timestamps_far_in_the_past_or_future(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    client = AuditClient.from_settings(settings)
    lua_redis = aioredis.Redis.from_url(settings.redis_url or "")
    lua = lua_redis.register_script(ENQUEUE_SCRIPT)
    token = await ingest_token(database_url)
    load = Load(ledger)
    expected: dict[str, datetime] = {}
    try:
        async with (
            auditq_process("worker", settings, tmp_path / "worker.log"),
            api_in_process(settings) as (api_url, _),
        ):
            start_producers(load, client, redis_url=settings.redis_url or "", queue=settings.queue)
            load.run(
                send_timestamps(
                    client, lua, settings.queue, (api_url, token), ledger, expected, load.stopping
                )
            )
            await asyncio.sleep(LOAD_S)
            await load.stop()
            await client.aclose()
            figures = await reckon(
                "timestamps", ledger, database_url=database_url, redis=redis, queue=settings.queue
            )
    finally:
        await lua_redis.aclose()
    figures.notes, problems = await check_partitions(database_url, expected)
    figures.problems += problems
    fault_report.add(figures)
    assert not figures.problems, figures


# --- Poison ------------------------------------------------------------------------------------

# Each makes one bad event, with an id so that its fate can be followed; (kind, event).
POISON: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("wrong type", lambda i: {"id": i, "action": "a.b", "severity": 5}),
    ("unknown field", lambda i: {"id": i, "action": "a.b", "colour": "red"}),
    ("invalid action", lambda i: {"id": i, "action": "Not An Action"}),
    ("invalid ip", lambda i: {"id": i, "action": "a.b", "request": {"ip": "999.1.1.1"}}),
    ("ts out of range", lambda i: {"id": i, "action": "a.b", "ts": "9999-12-31T23:59:59-12:00"}),
    # asyncpg would write PostgreSQL's `infinity` for it: refused rather than altered.
    ("ts at infinity", lambda i: {"id": i, "action": "a.b", "ts": "9999-12-31T23:59:59.999999Z"}),
    ("oversized", lambda i: {"id": i, "action": "file.uploaded", "metadata": {"b": "x" * 70_000}}),
    ("NUL in metadata", lambda i: {"id": i, "action": "a.b", "metadata": {"note": "a\u0000b"}}),
    (
        "NUL in a text column",
        lambda i: {"id": i, "action": "a.b", "entity": {"type": "doc", "id": "a\u0000b"}},
    ),
    ("id not a UUID", lambda i: {"id": f"not-a-uuid-{i}", "action": "a.b"}),
]
# Whole payloads the Lua script takes and the worker cannot read at all.
BAD_PAYLOADS: list[tuple[str, bytes]] = [
    ("invalid UTF-8", b'[{"action": "a.b", "metadata": {"x": "\xff\xfe"}}]'),
    ("bad JSON", b'[{"action": "auth.login",'),
    ("not an event", b'"just a string"'),
    ("NUL byte in the JSON text", b'{"action": "a.b", "source": "x\x00y"}'),
]


async def poison_through_lua(lua: Any, queue: str, ledger: Ledger, kind: str, bad: Any) -> None:
    """A bad event in an array with good ones: the bad one must be set aside alone."""
    good = [good_event_json("lua") for _ in range(5)]
    ledger.offered += 6
    ledger.poison[str(bad["id"])] = kind
    try:
        await lua(keys=[queue], args=[json.dumps([*good[:3], bad, *good[3:]])])
    except Exception:
        ledger.refused += 6
        return
    for event in [*good, bad]:
        ledger.accept(str(event["id"]), "lua")


async def poison_through_http(
    session: aiohttp.ClientSession, url: str, ledger: Ledger, kind: str, bad: Any
) -> None:
    """Refused at the door, unless only PostgreSQL can tell (NUL bytes)."""
    ledger.offered += 2
    ledger.poison[str(bad["id"])] = kind
    body = {"events": [good_event_json("http"), bad]}
    async with session.post(f"{url}/api/v1/events", json=body) as response:
        result = await response.json() if response.status == 202 else None
    if result is None:
        ledger.refused += 2
        return
    for event_id in result["accepted"]:
        ledger.accept(event_id, "http")
    ledger.refused += len(result["rejected"])


async def poison_through_capture(
    client: AuditClient, ledger: Ledger, kind: str, data: dict[str, Any]
) -> None:
    """NUL bytes pass the producer's checks: PostgreSQL alone refuses them."""
    event_id = uuid.UUID(data["id"])
    event = AuditEvent(
        id=event_id,
        action=data["action"],
        entity=Entity(**data["entity"]) if "entity" in data else None,
        metadata=data.get("metadata"),
    )
    ledger.offered += 1
    ledger.poison[str(event_id)] = kind
    if await client.capture(event) is not None:
        ledger.accept(str(event_id), "capture")
    else:
        ledger.refused += 1


async def bad_payload_through_lua(
    lua: Any, queue: str, ledger: Ledger, what: str, raw: bytes
) -> None:
    """A whole payload the worker cannot read: its task must end in the dead letter."""
    ledger.offered += 1
    try:
        task_id = await lua(keys=[queue], args=[raw])
    except Exception:
        ledger.refused += 1
    else:
        ledger.poison_tasks[task_id.decode()] = what


async def send_poison(
    client: AuditClient,
    lua: Any,
    queue: str,
    http: tuple[str, str],
    ledger: Ledger,
    stop: asyncio.Event,
) -> None:
    """Bad events mixed with good ones through Lua, HTTP and capture; bad payloads via Lua."""
    kinds = itertools.cycle(POISON)
    payloads = itertools.cycle(BAD_PAYLOADS)
    headers = {"Authorization": f"Bearer {http[1]}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for tick in itertools.count():
            if stop.is_set():
                return
            kind, make = next(kinds)
            await poison_through_lua(lua, queue, ledger, kind, make(str(new_event_id())))
            await poison_through_http(session, http[0], ledger, kind, make(str(new_event_id())))
            if kind.startswith("NUL"):
                await poison_through_capture(client, ledger, kind, make(str(new_event_id())))
            if tick % 3 == 0:
                await bad_payload_through_lua(lua, queue, ledger, *next(payloads))
            await asyncio.sleep(TICK_S)


async def test_poison_mixed_into_the_load(
    settings: Settings,
    redis: aioredis.Redis,
    database_url: str,
    ledger: Ledger,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    client = AuditClient.from_settings(settings)
    lua_redis = aioredis.Redis.from_url(settings.redis_url or "")
    lua = lua_redis.register_script(ENQUEUE_SCRIPT)
    token = await ingest_token(database_url)
    load = Load(ledger)
    try:
        async with (
            auditq_process("worker", settings, tmp_path / "worker.log"),
            api_in_process(settings) as (api_url, _),
        ):
            start_producers(load, client, redis_url=settings.redis_url or "", queue=settings.queue)
            load.run(
                send_poison(client, lua, settings.queue, (api_url, token), ledger, load.stopping)
            )
            await asyncio.sleep(LOAD_S)
            await load.stop()
            await client.aclose()
            figures = await reckon(
                "poison", ledger, database_url=database_url, redis=redis, queue=settings.queue
            )
    finally:
        await lua_redis.aclose()
    kinds = sorted({ledger.poison[i] for i in ledger.bad_ids()} | set(ledger.poison_tasks.values()))
    figures.notes = f"{len(kinds)} kinds dead-lettered: {', '.join(kinds)}"
    fault_report.add(figures)
    assert not figures.problems, figures

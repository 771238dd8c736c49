"""What the console's searches ask of the API, on real servers: metadata conditions by
containment (the same rows as the text comparison, through the GIN index), an actor's name by
prefix, suggestions, hourly statistics with named top actors, and the list of erasures
(admins only: a reader learns no pseudonym from it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from service.api.audit_logs.query import AuditLogQuery
from service.events import AuditEvent
from service.settings import Settings
from service.store.items import where_of
from tests.api.test_audit_logs import BASE, error, get_json, ids, make_event, seed
from tests.support.admin_api import Tokens
from tests.support.polling import wait_for
from tests.support.worker import running_worker

NOW = datetime.now(UTC).replace(microsecond=0)


def metadata_rows() -> list[AuditEvent]:
    values: list[Any] = [
        {"plan": "pro", "n": 5, "flag": True},
        {"plan": "free", "n": "5", "geo": {"country": "FR"}},
        {"plan": "pro", "n": 5.0, "tags": ["a", "b"], "obj": {"x": 1}},
        {"plan": "PRO", "empty": None, "quote": 'say "hi"', "0": "zero"},
        None,
    ]
    return [
        make_event(action="doc.viewed", metadata=m, ts=(NOW - timedelta(minutes=i)).isoformat())
        for i, m in enumerate(values)
    ]


async def test_metadata_conditions_find_what_the_text_comparison_finds(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    events = metadata_rows()
    await seed(pg, events)
    i = [str(e.id) for e in events]
    cases: list[tuple[str | list[str], list[str]]] = [
        ("plan=pro", [i[0], i[2]]),  # case matters: not PRO
        ("n=5", [i[0], i[1]]),  # the number 5 and the string "5"; 5.0 reads as "5.0"
        ("n=5.0", [i[2]]),
        ("flag=true", [i[0]]),
        ("geo.country=FR", [i[1]]),
        ('obj={"x": 1}', [i[2]]),  # an object, as jsonb writes it
        ("tags.0=a", [i[2]]),  # an array index: compared as text, no containment
        ("0=zero", [i[3]]),
        ('quote=say "hi"', [i[3]]),
        ("empty=null", []),  # a JSON null has no text
        ("plan", [i[0], i[1], i[2], i[3]]),  # the key alone
        (["plan=pro", "n=5"], [i[0]]),  # every condition holds
        ("plan=pro\x00", []),
        ("n=NaN", []),
        ('n="\\u0000"', []),
    ]
    for match, expected in cases:
        assert await ids(api, tokens.reader, {"metadata": match}) == expected, match
        # The text comparison alone, as the filter was before the index: the same rows.
        matches = match if isinstance(match, list) else [match]
        if any("\x00" in m for m in matches):
            continue
        conditions, args = [], []
        for one in matches:
            key, sep, value = one.partition("=")
            if sep:
                conditions.append(f"metadata #>> ${len(args) + 1}::text[] = ${len(args) + 2}")
                args += [key.split("."), value]
            else:
                conditions.append(f"metadata #> ${len(args) + 1}::text[] IS NOT NULL")
                args.append(key.split("."))
        rows = await pg.fetch(
            f"SELECT id FROM audit_log WHERE {' AND '.join(conditions)} ORDER BY ts DESC", *args
        )
        assert [str(r["id"]) for r in rows] == expected, match


async def test_the_indexes_serve_a_metadata_condition_and_an_actor_name(
    pg: asyncpg.Connection,
) -> None:
    await seed(pg, metadata_rows())
    await pg.execute("SET enable_seqscan = off")  # few rows: ask whether an index can serve it
    for query, parent in (
        (AuditLogQuery(metadata=["geo.country=FR"]), "audit_log_metadata_idx"),
        (AuditLogQuery(actor_name="Ada"), "audit_log_actor_name_idx"),
    ):
        # The partition's own index made from the parent's.
        own = await pg.fetchval(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass AND c.relname LIKE 'audit_log_default%'",
            parent,
        )
        where = where_of(query)
        explained = await pg.fetch(f"EXPLAIN SELECT id FROM audit_log {where.sql()}", *where.args)
        plan = "\n".join(r[0] for r in explained)
        assert f"Index Scan on {own}" in plan or f"Index Scan using {own}" in plan, plan


async def test_an_actors_name_finds_its_rows_by_prefix_in_any_case(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    people = [
        ("u-1", "Ada Lovelace"),
        ("u-2", "Adam Smith"),
        ("u-3", "Émile Zola"),
        ("u-4", "50% off_bot"),
        ("u-5", None),
    ]
    events = [
        make_event(
            action="doc.viewed",
            actor={"id": actor, "type": "user", **({"name": name} if name else {})},
            ts=(NOW - timedelta(minutes=n)).isoformat(),
        )
        for n, (actor, name) in enumerate(people)
    ]
    await seed(pg, events)
    i = [str(e.id) for e in events]
    for name, expected in (
        ("ada", [i[0], i[1]]),
        ("ADA L", [i[0]]),
        ("Ada Lovelace", [i[0]]),
        ("émile", [i[2]]),
        ("ÉMILE", [i[2]]),
        ("50%", [i[3]]),  # no pattern characters: % and _ are themselves
        ("5_%", []),
        ("%", []),
        ("Lovelace", []),  # a prefix of the name, not a word inside it
        ("u-1", []),  # the name, not the id
        ("zz\x00", []),
    ):
        assert await ids(api, tokens.reader, {"actor_name": name}) == expected, name
    body = await (
        await api.post(f"{BASE}/search", json={"actor_name": "adam"}, headers=tokens.admin)
    ).json()
    assert [e["id"] for e in body["items"]] == [i[1]]


async def test_suggestions_offer_stored_actions_entity_types_and_ids(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    events = [
        make_event(action=action, entity={"type": kind, "id": entity})
        for action, kind, entity in (
            ("doc.viewed", "document", "d-1"),
            ("doc.viewed", "document", "d-2"),
            ("doc.updated", "document", "d-10"),
            ("doc.updated", "project", "p-1"),
            ("auth.login", "user", "u-1"),
            ("auth.logout", "user", "u-2"),
        )
    ]
    await seed(pg, events)
    path = f"{BASE}/suggestions"

    async def values(**params: Any) -> list[str]:
        found: list[str] = (await get_json(api, path, tokens.reader, **params))["values"]
        return found

    assert await values(field="action") == [
        "auth.login",
        "auth.logout",
        "doc.updated",
        "doc.viewed",
    ]
    assert await values(field="action", prefix="auth.") == ["auth.login", "auth.logout"]
    assert await values(field="action", prefix="doc.", limit=1) == ["doc.updated"]
    assert await values(field="action", prefix="zzz") == []
    assert await values(field="entity_type") == ["document", "project", "user"]
    assert await values(field="entity_type", prefix="u") == ["user"]
    assert await values(field="entity_id", entity_type="document") == ["d-1", "d-10", "d-2"]
    assert await values(field="entity_id", entity_type="document", prefix="d-1") == ["d-1", "d-10"]
    assert await values(field="entity_id", entity_type="user", prefix="d") == []
    assert await values(field="action", prefix="a\x00") == []
    missing = await api.get(path, params={"field": "entity_id"}, headers=tokens.reader)
    assert "entity_type" in await error(missing, 400)
    wrong = await api.get(path, params={"field": "actor_email"}, headers=tokens.reader)
    assert "field" in await error(wrong, 400)


async def test_statistics_by_hour_count_every_hour_and_name_the_top_actors(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    start = datetime(2025, 3, 1, 22, 0, tzinfo=UTC)
    offsets = [10, 20, 65, 65, 130, 300]  # minutes after 22:00
    events = [
        make_event(
            action="doc.viewed",
            actor={"id": "u-1", "type": "user", "name": "Old Name" if n < 3 else "Ada Lovelace"},
            ts=(start + timedelta(minutes=m)).isoformat(),
        )
        for n, m in enumerate(offsets)
    ]
    events.append(
        make_event(
            action="doc.viewed", actor={"id": "svc", "type": "service"}, ts=start.isoformat()
        )
    )
    await seed(pg, events)
    until = start + timedelta(hours=4, minutes=30)
    stats = await get_json(
        api,
        f"{BASE}/statistics",
        tokens.reader,
        since=start.isoformat(),
        until=until.isoformat(),
        bucket="hour",
    )
    assert stats["per_hour"] == [
        {"hour": "2025-03-01T22:00:00Z", "count": 3},
        {"hour": "2025-03-01T23:00:00Z", "count": 2},
        {"hour": "2025-03-02T00:00:00Z", "count": 1},
        {"hour": "2025-03-02T01:00:00Z", "count": 0},
        {"hour": "2025-03-02T02:00:00Z", "count": 0},
    ]  # 300 minutes (03:00) is after the window
    assert stats["per_day"] == [
        {"day": "2025-03-01", "count": 5},
        {"day": "2025-03-02", "count": 1},
    ]
    assert stats["top_actors"] == [
        {"actor_id": "u-1", "actor_name": "Ada Lovelace", "count": 5},  # its latest name
        {"actor_id": "svc", "actor_name": None, "count": 1},
    ]
    by_day = await get_json(
        api, f"{BASE}/statistics", tokens.reader, since=start.isoformat(), until=until.isoformat()
    )
    assert "per_hour" not in by_day
    week = await api.get(
        f"{BASE}/statistics",
        params={"bucket": "hour", "since": "2025-03-01T00:00:00Z", "until": "2025-03-09T00:00:00Z"},
        headers=tokens.reader,
    )
    assert "bucket=hour" in await error(week, 400)
    default = await get_json(api, f"{BASE}/statistics", tokens.reader, bucket="hour")
    assert len(default["per_hour"]) in (24, 25)  # the last 24 hours: 25 hours touched, or 24


async def test_the_erasure_list_shows_admins_pseudonyms_and_readers_nothing(
    settings: Settings, api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    path = "/api/v1/admin/subjects"
    assert (await get_json(api, path, tokens.admin))["items"] == []
    subject, name = "u-erase-42", "Grace Hopper"
    async with running_worker(settings):
        await seed(
            pg,
            [make_event(action="auth.login", actor={"id": subject, "name": name, "type": "user"})],
        )
        response = await api.post(f"{path}/{subject}/anonymise", headers=tokens.admin)
        pseudonym = (await response.json())["pseudonym"]

        async def done() -> bool:
            items = (await get_json(api, path, tokens.admin))["items"]
            return bool(items and items[0]["state"] == "done")

        await wait_for(done)
    (erasure,) = (await get_json(api, path, tokens.admin))["items"]
    assert erasure["pseudonym"] == pseudonym and erasure["rows"] == 1
    assert erasure["finished_at"] >= erasure["requested_at"]
    for headers in (tokens.reader, tokens.ingest):
        for variant in (path, f"{path}/", f"{path}?limit=1"):
            answer = await api.get(variant, headers=headers)
            body = await answer.text()
            assert answer.status in (403, 404), (variant, answer.status)
            assert pseudonym not in body and subject not in body
    # Nor does a reader find the subject again by name, or among the suggestions, by id.
    assert await ids(api, tokens.reader, {"actor_name": name[:5]}) == []
    suggested = await get_json(
        api, f"{BASE}/suggestions", tokens.reader, field="entity_id", entity_type="user"
    )
    assert subject not in suggested["values"]

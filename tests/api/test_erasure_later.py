"""Events that arrive after an erasure are stored cleared of the subject wherever it stands
(contract §9): another actor's metadata, entity name, request path and presentation params,
in the worker's fast path (finalized jobs) and its per-event path; and a dead letter written
afterwards (an invalid job's raw text) is cleared when it is written, also when its bytes
are not UTF-8 (kept base64-encoded), and so is such a letter written before. Real Valkey,
PostgreSQL, worker and API; the worker learns the values only as keyed digests (the key is a
file)."""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.events import Actor, AuditEvent, Entity, Presentation, RequestInfo
from service.integrity.keys import load_or_create_private_key
from service.integrity.verify import verify
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.queue.jobs import RAW_BYTES_PREFIX, deserialize_job
from service.settings import Settings
from service.store.seals import seal_once
from tests.support.admin_api import Tokens, enqueue, queued_payloads
from tests.support.polling import wait_for
from tests.support.stores import redis_as_text
from tests.support.worker import running_worker

SUBJECT = "zq-user-4417"
NAME = "Zelda Quixote"
EMAIL = "zelda.q@example.org"


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, sealing=False, capture_timeout_s=5.0)


async def _anonymise(api: TestClient[Any, Any], tokens: Tokens, subject: str = SUBJECT) -> str:
    """Erase `subject` through the API and wait until it is done; its pseudonym."""
    response = await api.post(f"/api/v1/admin/subjects/{subject}/anonymise", headers=tokens.admin)
    assert response.status == 202
    pseudonym: str = (await response.json())["pseudonym"]

    async def done() -> bool:
        answer = await api.get(
            f"/api/v1/admin/subjects/{subject}/anonymisation", headers=tokens.admin
        )
        return bool((await answer.json())["state"] == "done")

    await wait_for(done)
    return pseudonym


async def test_later_events_and_dead_letters_are_stored_cleared(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    api: TestClient[Any, Any],
    tokens: Tokens,
) -> None:
    settings = quiet_settings
    me = Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)
    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            assert await client.capture(AuditEvent(action="auth.login", actor=me))

        async def stored() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM audit_log") == 1)

        await wait_for(stored)
        pseudonym = await _anonymise(api, tokens)
        # A reader cannot ask for the pseudonym of an id.
        answer = await api.get(
            f"/api/v1/admin/subjects/{SUBJECT}/anonymisation", headers=tokens.reader
        )
        assert answer.status == 403

        other = Actor(id="u-1", type="user", name="Una One")
        later = [
            AuditEvent(action="auth.login", actor=other, metadata={"login": EMAIL.upper()}),
            AuditEvent(
                action="page.viewed",
                actor=other,
                entity=Entity(type="page", id="p-1", name=f"https://app.example.com/u/{SUBJECT}/x"),
                request=RequestInfo(path=f"/customers/{EMAIL}/orders/9"),
                presentation=Presentation(code="x.y", params={"who": f"{NAME} ({SUBJECT})"}),
            ),
            AuditEvent(action="note.added", actor=other, metadata={"t": "Zelda Quixotes, malice"}),
        ]
        async with AuditClient.from_settings(settings) as client:
            for event in later:
                assert await client.capture(event)
        # An invalid job (raw text) naming the subject: dead-lettered after the erasure.
        await enqueue(redis, settings.queue, f'{{"broken": "{EMAIL} {SUBJECT} {NAME}"')

        async def all_in() -> bool:
            rows = await pg.fetchval("SELECT count(*) FROM audit_log WHERE actor_id = 'u-1'")
            return rows == 3 and bool(await dead_letter.list_ids(redis, settings.queue))

        await wait_for(all_in)
    rows = {
        r["action"]: r for r in await pg.fetch("SELECT * FROM audit_log WHERE actor_id = 'u-1'")
    }
    assert rows["auth.login"]["metadata"] == {"login": "[erased]"}
    viewed = rows["page.viewed"]
    # Cleared to [erased], the id too: a text someone else chose never shows the pseudonym.
    assert viewed["entity_name"] == "https://app.example.com/u/[erased]/x"
    assert viewed["path"] == "/customers/[erased]/orders/9"
    assert viewed["presentation"]["params"] == {"who": "[erased] ([erased])"}
    assert viewed["actor_name"] == "Una One"  # the other actor keeps her own name
    assert rows["note.added"]["metadata"] == {"t": "Zelda Quixotes, malice"}  # longer words
    everything = "\n".join(r[0] for r in await pg.fetch("SELECT t::text FROM audit_log t"))
    everything += await redis_as_text(redis)
    for value in (SUBJECT, EMAIL, NAME):  # as whole words ("Zelda Quixotes" is not her)
        assert not re.search(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", everything, re.I), value
    assert "[erased] [erased] [erased]" in everything  # the invalid job's raw text
    assert all(pseudonym not in str(dict(r)) for r in rows.values())
    # The store holds no value of the subject, only keyed digests.
    digests = await pg.fetch("SELECT * FROM erased_mention")
    assert digests and all(len(r["digest"]) == 16 for r in digests)
    assert await pg.fetchval("SELECT count(*) FROM erasure_value") == 0
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key) is not None:
        pass
    lines: list[str] = []
    report = await verify(pg, key.public_key(), emit=lines.append)
    assert report.findings == 0, lines


async def test_a_numeric_id_and_a_shared_address_stay_in_other_peoples_rows_and_jobs(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    api: TestClient[Any, Any],
    tokens: Tokens,
) -> None:
    settings = quiet_settings
    nat = "203.0.113.9"
    me = Actor(id="42", type="user", name="Quentin Zarathustra")
    neighbour = Actor(id="u-43", type="user", name="Nia Neighbour")
    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            for actor in (me, neighbour):
                assert await client.capture(
                    AuditEvent(
                        action="cart.updated",
                        actor=actor,
                        request=RequestInfo(ip=nat, path="/carts/42"),
                        metadata={"items": "42 items", "from": nat},
                    )
                )

        async def stored() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM audit_log") == 2)

        await wait_for(stored)
    # Waiting in the queue (no worker runs): the neighbour's job, and one of the subject's.
    for actor in (neighbour, me):
        event = AuditEvent(
            action="cart.viewed",
            actor=actor,
            request=RequestInfo(ip=nat),
            metadata={"n": "42", "via": nat},
        )
        await enqueue(redis, settings.queue, msgspec.json.encode([event]))
    jobs_before = await queued_payloads(redis, settings.queue)
    assert len(jobs_before) == 2 and all(nat.encode() in j for j in jobs_before)
    # A job whose field names a person holds the id whole: cleared there only.
    by_id = AuditEvent(action="cart.shared", actor=Actor(id="u-44", type="user"),
                       metadata={"user_id": "42", "n": "42"})  # fmt: skip
    await enqueue(redis, settings.queue, msgspec.json.encode([by_id]))
    theirs = "SELECT t::text FROM audit_log t WHERE actor_id = 'u-43'"
    before = await pg.fetch(theirs)

    await _anonymise(api, tokens, "42")
    assert before == await pg.fetch(theirs)  # byte-identical
    jobs_after = await queued_payloads(redis, settings.queue)
    neighbours = [j for j in jobs_after if b"u-43" in j]
    assert neighbours == [j for j in jobs_before if b"u-43" in j]  # untouched in Redis too
    shared = [j for j in jobs_after if b"u-44" in j]
    assert len(shared) == 1 and b'user_id\\":\\"anon_' in shared[0], shared
    assert b'n\\":\\"42' in shared[0], shared
    mine = [j for j in jobs_after if b"u-43" not in j and b"u-44" not in j]
    assert len(mine) == 1 and nat.encode() not in mine[0] and b"Quentin" not in mine[0]
    own = await pg.fetchrow("SELECT * FROM audit_log WHERE actor_name IS NULL")
    assert own["ip"] is None and own["actor_id"].startswith("anon_")
    assert own["metadata"]["from"] == "[erased]"
    # Later events: '42' and the address stay in other people's text, and leave only a
    # field naming a person that holds the id whole.
    later = AuditEvent(
        action="cart.shared",
        actor=Actor(id="u-45", type="user"),
        request=RequestInfo(ip=nat, path="/carts/42"),
        metadata={"user_id": 42, "owner": {"id": "42"}, "count": 42, "text": "42 items"},
    )
    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            assert await client.capture(later)

        async def later_in() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM audit_log WHERE actor_id = 'u-45'"))

        await wait_for(later_in)
    row = await pg.fetchrow("SELECT * FROM audit_log WHERE actor_id = 'u-45'")
    assert row["metadata"] == {
        "user_id": "[erased]", "owner": {"id": "[erased]"}, "count": 42, "text": "42 items"
    }  # fmt: skip
    assert str(row["ip"]) == nat and row["path"] == "/carts/42"


async def test_no_reader_route_maps_an_erased_id_to_its_pseudonym(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    api: TestClient[Any, Any],
    tokens: Tokens,
) -> None:
    me = Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)
    other = Actor(id="u-1", type="user", name="Una One")
    async with running_worker(quiet_settings):
        async with AuditClient.from_settings(quiet_settings) as client:
            assert await client.capture(AuditEvent(action="auth.login", actor=me))
            assert await client.capture(
                AuditEvent(
                    action="user.viewed",
                    actor=other,
                    entity=Entity(type="user", id=SUBJECT, name=NAME),
                    request=RequestInfo(path=f"/users/{SUBJECT}/profile"),
                )
            )

        async def stored() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM audit_log") == 2)

        await wait_for(stored)
    pseudonym = await _anonymise(api, tokens)
    by_id = [
        f"/api/v1/admin/audit-logs?actor_id={SUBJECT}",
        f"/api/v1/admin/audit-logs?entity_type=user&entity_id={SUBJECT}",
        f"/api/v1/admin/audit-logs?q={SUBJECT}",
        f"/api/v1/admin/audit-logs?q={EMAIL}",
        f"/api/v1/admin/audit-logs?q={NAME}",
        f"/api/v1/admin/audit-logs/user/{SUBJECT}",
        f"/api/v1/admin/audit-logs/entity/user/{SUBJECT}",
        f"/api/v1/admin/audit-logs/export?actor_id={SUBJECT}",
        f"/api/v1/admin/audit-logs/export?q={SUBJECT}",
        f"/api/v1/admin/audit-logs?actor_name={NAME}",
        f"/api/v1/admin/audit-logs?actor_name={NAME.lower()[:3]}",
        f"/api/v1/admin/audit-logs/suggestions?field=entity_id&entity_type=user&prefix={SUBJECT}",
    ]
    for path in by_id:  # asked with the id, a reader learns nothing of the pseudonym
        answer = await api.get(path, headers=tokens.reader)
        body = await answer.text()
        assert answer.status == 200, (path, body)
        assert pseudonym not in body and SUBJECT not in body, path
    for path in (
        f"/api/v1/admin/subjects/{SUBJECT}/anonymisation",
        "/api/v1/admin/subjects",  # the list of erasures: admins only
        "/api/v1/admin/subjects?limit=1000",
    ):
        answer = await api.get(path, headers=tokens.reader)
        assert answer.status == 403, path
        assert pseudonym not in await answer.text()
    answer = await api.post(f"/api/v1/admin/subjects/{SUBJECT}/anonymise", headers=tokens.reader)
    assert answer.status == 403 and pseudonym not in await answer.text()
    # What a reader sees by pseudonym is the history, with no id, name or email in it.
    for path in (
        f"/api/v1/admin/audit-logs?q={pseudonym}",
        f"/api/v1/admin/audit-logs/user/{pseudonym}",
        "/api/v1/admin/audit-logs?action_prefix=subject",
        "/api/v1/admin/audit-logs/statistics",
        "/api/v1/admin/tasks",
    ):
        answer = await api.get(path, headers=tokens.reader)
        body = await answer.text()
        assert answer.status == 200, (path, body)
        for value in (SUBJECT, EMAIL, NAME):
            assert value not in body, (path, value)


def _raw_bytes(letter: dead_letter.DeadLetter | None) -> bytes:
    assert letter is not None and isinstance(letter.payload, str)
    assert letter.payload.startswith(RAW_BYTES_PREFIX), letter.payload
    return base64.b64decode(letter.payload.removeprefix(RAW_BYTES_PREFIX), validate=True)


async def test_bytes_that_are_not_utf8_are_cleared_of_the_subject_wherever_redis_keeps_them(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    api: TestClient[Any, Any],
    tokens: Tokens,
) -> None:
    """A segment that is not UTF-8 is dead-lettered with its exact bytes, base64-encoded:
    base64 hides the subject from a scrub of text, and a job of such bytes is not JSON a
    strict reader takes. A letter written before the erasure, a job waiting in the queue
    during it and a letter written after all lose the subject's id, name and email (found
    as the words they are, also beside a byte that is not UTF-8), and keep every other byte
    exactly; another job of such bytes stays byte-identical."""
    settings = quiet_settings
    me = Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)

    def malformed(marker: str) -> bytes:
        head = f'[{{"action": "note.added", "metadata": {{"who": "{EMAIL}", "id": "{SUBJECT}"'
        tail = f', "kept": "Una One, malice, {marker}, \u00e9t\u00e9"}}}}]'
        by = b', "by": "\xfe' + NAME.upper().encode() + b'\xff"'  # beside bytes not UTF-8
        return head.encode() + by + tail.encode()

    def cleared(raw: bytes, id_as: str) -> bytes:
        for value, replacement in ((EMAIL, "[erased]"), (NAME.upper(), "[erased]")):
            raw = raw.replace(value.encode(), replacement.encode())
        return raw.replace(SUBJECT.encode(), id_as.encode())

    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            assert await client.capture(AuditEvent(action="auth.login", actor=me))
        before_id = await enqueue(redis, settings.queue, malformed("before"))

        async def first_in() -> bool:
            rows = await pg.fetchval("SELECT count(*) FROM audit_log")
            return rows == 1 and await dead_letter.get(redis, settings.queue, before_id) is not None

        await wait_for(first_in)
    assert SUBJECT.encode() in _raw_bytes(await dead_letter.get(redis, settings.queue, before_id))
    # Waiting in the queue (no worker runs): one naming the subject, one of someone else.
    queued_id = await enqueue(redis, settings.queue, malformed("queued"))
    theirs_id = await enqueue(redis, settings.queue, b'[{"action": "a.b", "source": "\xfe x"}]')
    theirs_before = await redis.get(f"arq:job:{theirs_id}")
    pseudonym = await _anonymise(api, tokens)
    assert theirs_before and await redis.get(f"arq:job:{theirs_id}") == theirs_before
    waiting = await redis.get(f"arq:job:{queued_id}")
    (segment,) = deserialize_job(waiting)["a"]  # as the worker reads it
    assert segment.startswith(RAW_BYTES_PREFIX)
    assert base64.b64decode(segment.removeprefix(RAW_BYTES_PREFIX)) == cleared(
        malformed("queued"), pseudonym
    )
    async with running_worker(settings):
        after_id = await enqueue(redis, settings.queue, malformed("after"))

        async def rest_in() -> bool:
            ids = (queued_id, theirs_id, after_id)
            return all([await dead_letter.get(redis, settings.queue, i) for i in ids])

        await wait_for(rest_in)
    before, queued, after = [
        _raw_bytes(await dead_letter.get(redis, settings.queue, i))
        for i in (before_id, queued_id, after_id)
    ]
    # Every other byte is kept: the bytes that are not UTF-8, the other person's words.
    assert before == cleared(malformed("before"), pseudonym), before
    assert queued == cleared(malformed("queued"), pseudonym), queued
    assert after == cleared(malformed("after"), "[erased]"), after
    for raw in (before, queued, after):
        text = raw.decode("utf-8", "replace")
        for value in (SUBJECT, EMAIL, NAME):
            assert value.lower() not in text.lower(), (value, raw)
    key = load_or_create_private_key(settings.seal_key_path)
    while await seal_once(pg, key) is not None:
        pass
    lines: list[str] = []
    report = await verify(pg, key.public_key(), emit=lines.append)
    assert report.findings == 0, lines

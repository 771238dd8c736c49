"""Erasure of a data subject (contract §9) on real servers: rows, Redis, exports, the API.

One subject acts (with name, email, address, user agent), is the entity of an admin's
events, is named in another actor's metadata and presentation params, has an invalid event
in the dead letter, an event still queued when the erasure is asked and one sent after.
Afterwards none of its values is found anywhere auditq keeps data; its history groups under
the pseudonym; unrelated rows are byte-identical; `auditq verify` exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.events import Actor, AuditEvent, Change, Entity, Presentation, RequestInfo
from service.integrity.keys import load_or_create_private_key
from service.integrity.verify import verify
from service.ops import subjects
from service.producer.client import AuditClient
from service.queue import dead_letter
from service.settings import Settings
from service.store import db
from service.store import subjects as sql
from service.store.seals import seal_once
from tests.support.admin_api import Tokens, enqueue
from tests.support.cli import run_cli
from tests.support.polling import wait_for
from tests.support.stores import redis_as_text
from tests.support.worker import running_worker

SUBJECT = "u-zq-4417"
NAME = "Zelda Quixote"
EMAIL = "zelda.quixote@example.org"
IP = "198.51.100.231"
AGENT = "ZeldaBrowser/9.4"
VALUES = (SUBJECT, NAME, EMAIL, IP, AGENT)
ADMIN = Actor(id="adm-1", type="user", name="Ada Admin", email="ada@example.org")


def _subject_events() -> list[AuditEvent]:
    me = Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)
    request = RequestInfo(ip=IP, user_agent=AGENT, method="POST", path=f"/users/{SUBJECT}/login")
    as_actor = [
        AuditEvent(
            action="auth.login",
            actor=me,
            request=request,
            metadata={"email": EMAIL, "note": f"{NAME} signed in", "attempt": i},
        )
        for i in range(3)
    ]
    as_entity = [
        AuditEvent(
            action="user.updated",
            actor=ADMIN,
            entity=Entity(type="user", id=SUBJECT, name=NAME),
            request=RequestInfo(ip="203.0.113.9", user_agent="AdminConsole/1"),
            changes=[Change(field="email", old="zq@old.example.org", new=EMAIL)],
        )
        for _ in range(2)
    ]
    return as_actor + as_entity


def _mentions() -> list[AuditEvent]:
    other = Actor(id="u-other", type="user", name="Otto Other")
    return [
        AuditEvent(action="doc.shared", actor=other, metadata={"shared_with": NAME, "doc": "d-1"}),
        AuditEvent(
            action="doc.shared",
            actor=other,
            presentation=Presentation(code="doc.shared", params={"to": EMAIL}),
        ),
    ]


def _unrelated() -> list[AuditEvent]:
    return [
        AuditEvent(
            action="project.updated",
            actor=Actor(id=f"u-{i}", type="user", name=f"Person {i}", email=f"p{i}@example.org"),
            entity=Entity(type="project", id=f"p-{i}", name=f"Project {i}"),
            request=RequestInfo(ip="192.0.2.1", user_agent="Other/1"),
            metadata={"seats": i, "plan": "pro"},
        )
        for i in range(5)
    ]


async def _count(pg: asyncpg.Connection, sql: str, *args: Any) -> int:
    n: int = await pg.fetchval(sql, *args)
    return n


async def _seal_all(pg: asyncpg.Connection, key_path: Path) -> None:
    key = load_or_create_private_key(key_path)
    while await seal_once(pg, key) is not None:
        pass


def _absent(text: str, where: str) -> None:
    lowered = text.lower()
    for value in VALUES:
        assert value.lower() not in lowered, f"{value!r} found in {where}"


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    """The test's settings with a worker that does not seal: the test seals when it checks.

    The client here shares its event loop with the API and the worker, whose erasure work can
    hold the loop past the default 0.25 s bound on a loaded machine; that bound is
    tests/producer's subject, so these clients wait longer.
    """
    return dataclasses.replace(settings, sealing=False, capture_timeout_s=5.0)


async def test_a_subject_is_erased_everywhere_and_the_record_still_verifies(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    api: TestClient[Any, Any],
    tokens: Tokens,
    cli_env: None,
) -> None:
    settings = quiet_settings
    queue = settings.queue
    mine, mentions, unrelated = _subject_events(), _mentions(), _unrelated()
    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            for event in mine + mentions + unrelated:
                assert await client.capture(event) is not None
        bad = {"action": "Not An Action", "actor": {"id": SUBJECT, "type": "user", "name": NAME}}
        await enqueue(redis, queue, json.dumps(bad))
        stored = len(mine) + len(mentions) + len(unrelated)

        async def all_in() -> bool:
            rows = await _count(pg, "SELECT count(*) FROM audit_log")
            return rows == stored and bool(await dead_letter.list_ids(redis, queue))

        await wait_for(all_in)
    await _seal_all(pg, settings.seal_key_path)
    unrelated_ids = [e.actor.id for e in unrelated if e.actor]
    before = await pg.fetch(
        "SELECT id, t::text AS row FROM audit_log t WHERE actor_id = ANY($1) ORDER BY id",
        unrelated_ids,
    )
    # One more of the subject's events waits in the queue (no worker runs) when it is asked.
    queued = AuditEvent(
        action="auth.logout", actor=Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)
    )
    await enqueue(redis, queue, msgspec.json.encode(queued))
    assert NAME in await redis_as_text(redis)

    response = await api.post(
        f"/api/v1/admin/subjects/{SUBJECT}/anonymise",
        json={"reason": f"GDPR request of {NAME}"},
        headers=tokens.admin,
    )
    assert response.status == 202, await response.text()
    pseudonym = (await response.json())["pseudonym"]
    assert pseudonym.startswith("anon_") and SUBJECT not in pseudonym

    async def done() -> bool:
        answer = await api.get(
            f"/api/v1/admin/subjects/{SUBJECT}/anonymisation", headers=tokens.admin
        )
        assert answer.status == 200
        return bool((await answer.json())["state"] == "done")

    await wait_for(done)
    answer = await api.get(f"/api/v1/admin/subjects/{SUBJECT}/anonymisation", headers=tokens.admin)
    state = await answer.json()
    assert state == {"state": "done", "pseudonym": pseudonym, "rows": 7, "dead_letters": 1}

    async with running_worker(settings):  # the queued event, the audit event, one sent after
        async with AuditClient.from_settings(settings) as client:
            later = AuditEvent(
                action="auth.login",
                actor=Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL),
                request=RequestInfo(ip=IP, user_agent=AGENT),
                metadata={"contact": EMAIL},
            )
            assert await client.capture(later) is not None
        await enqueue(redis, queue, json.dumps(bad))  # invalid again: its dead letter is clear

        async def rest_in() -> bool:
            rows = await _count(pg, "SELECT count(*) FROM audit_log")
            return rows == stored + 3 and len(await dead_letter.list_ids(redis, queue)) == 2

        await wait_for(rest_in)
    await _seal_all(pg, settings.seal_key_path)

    # No row, no column, holds a value; the subject's history groups under the pseudonym.
    everything = "\n".join(r["t"] for r in await pg.fetch("SELECT t::text FROM audit_log t"))
    _absent(everything, "audit_log")
    assert await _count(pg, "SELECT count(*) FROM audit_log WHERE actor_id = $1", pseudonym) == 5
    assert (
        await _count(
            pg,
            "SELECT count(*) FROM audit_log WHERE entity_type = 'user' AND entity_id = $1",
            pseudonym,
        )
        == 2
    )
    after = await pg.fetch(
        "SELECT id, t::text AS row FROM audit_log t WHERE actor_id = ANY($1) ORDER BY id",
        unrelated_ids,
    )
    assert after == before
    assert await _count(pg, "SELECT count(*) FROM audit_log WHERE metadata->>'doc' = 'd-1'") == 1
    event = await pg.fetchrow("SELECT * FROM audit_log WHERE action = 'subject.anonymised'")
    assert event["actor_id"] == "test-admin" and event["entity_id"] == pseudonym
    assert event["metadata"]["pseudonym"] == pseudonym and event["metadata"]["rows"] == 7
    assert event["metadata"]["reason"] == "GDPR request of [erased]"
    actions = event["metadata"]["store_actions"]
    assert (
        await _count(
            pg,
            "SELECT count(DISTINCT seq) FROM row_replacement WHERE action_id BETWEEN $1 AND $2",
            actions["first"],
            actions["last"],
        )
        == 7
    )
    _absent(await redis_as_text(redis), "Redis")

    # Exports and the API.
    for fmt in ("jsonl", "csv"):
        export = await api.get(
            f"/api/v1/admin/audit-logs/export?format={fmt}", headers=tokens.admin
        )
        assert export.status == 200
        text = await export.text()
        assert pseudonym in text
        _absent(text, f"the {fmt} export")
    listing = await api.get("/api/v1/admin/audit-logs?limit=1000", headers=tokens.reader)
    _absent(await listing.text(), "the audit-log list")
    history = await api.get(f"/api/v1/admin/audit-logs/user/{pseudonym}", headers=tokens.reader)
    assert len((await history.json())["items"]) == 5
    for value in VALUES:
        found = await api.get(
            "/api/v1/admin/audit-logs", params={"q": value}, headers=tokens.reader
        )
        assert (await found.json())["items"] == [], value
    for value in (SUBJECT, EMAIL):
        by_actor = await api.get(f"/api/v1/admin/audit-logs/user/{value}", headers=tokens.reader)
        assert (await by_actor.json())["items"] == []
    tasks = await api.get("/api/v1/admin/tasks?limit=1000", headers=tokens.admin)
    for task in (await tasks.json())["items"]:
        shown = await api.get(f"/api/v1/admin/tasks/{task['id']}", headers=tokens.admin)
        _absent(await shown.text(), f"task {task['id']}")

    # verify passes and names the erased rows with the admin action.
    assert await run_cli("verify") == 0

    # Asking again is harmless.
    again = await api.post(f"/api/v1/admin/subjects/{SUBJECT}/anonymise", headers=tokens.admin)
    assert again.status == 202 and (await again.json())["pseudonym"] == pseudonym
    await wait_for(done)
    unchanged = await pg.fetch(
        "SELECT id, t::text AS row FROM audit_log t WHERE actor_id = ANY($1) ORDER BY id",
        unrelated_ids,
    )
    assert unchanged == before
    answer = await api.get(f"/api/v1/admin/subjects/{SUBJECT}/anonymisation", headers=tokens.admin)
    assert (await answer.json())["rows"] == 7
    assert await run_cli("verify") == 0


async def test_verify_reports_the_erased_rows_with_the_admin_action(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = quiet_settings
    async with running_worker(settings):
        async with AuditClient.from_settings(settings) as client:
            for event in _subject_events() + _unrelated():
                assert await client.capture(event) is not None

        async def stored() -> bool:
            return await _count(pg, "SELECT count(*) FROM audit_log") == 10

        await wait_for(stored)
    await _seal_all(pg, settings.seal_key_path)
    capsys.readouterr()
    assert await run_cli("anonymise", SUBJECT, "--reason", "ticket 12") == 0
    printed, logged = capsys.readouterr()
    assert logged == ""  # the counts are printed once, with no log line between them
    assert "rows: 5" in printed and SUBJECT not in printed
    first, last = (int(n) for n in printed.split("store actions: ")[1].split()[0].split("-"))
    await _seal_all(pg, settings.seal_key_path)
    assert await run_cli("verify") == 0
    lines = capsys.readouterr().out.splitlines()
    changed = [line for line in lines if "changed by anonymisation (action" in line]
    # A count per action, not a line per row.
    assert sum(int(line.split()[0]) for line in changed) == 5
    assert len(changed) <= last - first + 1
    for line in changed:
        assert first <= int(line.rsplit("(action ", 1)[1].rstrip(")")) <= last
    assert "0 findings" in lines[-1] and "5 changed by anonymisation" in lines[-1]
    assert await run_cli("anonymise", "") == 2


async def test_a_run_cut_short_resumes_when_asked_again(
    quiet_settings: Settings, pg: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    async with running_worker(quiet_settings):
        async with AuditClient.from_settings(quiet_settings) as client:
            for event in _subject_events() * 3 + _mentions():
                assert await client.capture(event) is not None

        async def stored() -> bool:
            return await _count(pg, "SELECT count(*) FROM audit_log") == 17

        await wait_for(stored)
    await _seal_all(pg, quiet_settings.seal_key_path)
    name = subjects.pseudonym_of(quiet_settings, SUBJECT)
    await subjects.register(pg, redis, quiet_settings.queue, name)
    # A run that stopped after a few steps of 4 rows (the mentions, then 4 of its own 15).
    changed = 0
    while changed < 6:
        step, done, _ = await sql.erase_step(
            pg,
            subject_id=SUBJECT,
            pseudonym=name,
            reason=None,
            dead_letters=0,
            by={"actor": {"id": "x", "type": "system"}},
            limit=4,
        )
        assert not done
        changed += step
    state = await subjects.state(pg, quiet_settings, SUBJECT)
    assert state is not None and state.state == "running" and state.rows == 6
    pool = await db.create_pool(quiet_settings.database_url or "", size=2)
    try:
        outcome = await subjects.anonymise(pool, redis, quiet_settings, SUBJECT)
    finally:
        await pool.close()
    assert outcome is not None and outcome.rows == 15 + 2  # the counts add up over runs
    everything = "\n".join(r["t"] for r in await pg.fetch("SELECT t::text FROM audit_log t"))
    _absent(everything, "audit_log")
    assert await _count(pg, "SELECT count(*) FROM audit_log WHERE actor_id = $1", name) == 9
    await _seal_all(pg, quiet_settings.seal_key_path)
    lines: list[str] = []
    key = load_or_create_private_key(quiet_settings.seal_key_path)
    report = await verify(pg, key.public_key(), emit=lines.append)
    assert report.findings == 0, lines
    assert report.anonymised == 17


async def test_the_routes_check_roles_and_input(api: TestClient[Any, Any], tokens: Tokens) -> None:
    path = f"/api/v1/admin/subjects/{SUBJECT}"
    assert (await api.post(f"{path}/anonymise")).status == 401
    assert (await api.post(f"{path}/anonymise", headers=tokens.reader)).status == 403
    # An id's pseudonym is for admins only (re-identification by enumeration).
    assert (await api.get(f"{path}/anonymisation", headers=tokens.reader)).status == 403
    assert (await api.get(f"{path}/anonymisation", headers=tokens.admin)).status == 404
    bad = await api.post(f"{path}/anonymise", json={"why": "x"}, headers=tokens.admin)
    assert bad.status == 400
    long = await api.post(f"{path}/anonymise", json={"reason": "x" * 2000}, headers=tokens.admin)
    assert long.status == 400 and "reason" in (await long.json())["error"]["message"]
    pseudonymous = "anon_" + "0" * 32
    again = await api.post(f"/api/v1/admin/subjects/{pseudonymous}/anonymise", headers=tokens.admin)
    assert again.status == 400 and "subject_id" in (await again.json())["error"]["message"]
    nul = await api.get("/api/v1/admin/subjects/u%00x/anonymisation", headers=tokens.admin)
    assert nul.status == 400


async def test_events_arriving_during_the_erasure_are_stored_pseudonymised(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    api: TestClient[Any, Any],
    tokens: Tokens,
) -> None:
    me = Actor(id=SUBJECT, type="user", name=NAME, email=EMAIL)
    sent = 0
    async with running_worker(quiet_settings):
        async with AuditClient.from_settings(quiet_settings) as client:
            for _ in range(20):
                assert await client.capture(AuditEvent(action="auth.login", actor=me))
            sent += 20
            response = await api.post(
                f"/api/v1/admin/subjects/{SUBJECT}/anonymise", headers=tokens.admin
            )
            assert response.status == 202
            while True:  # keep sending while the erasure runs, and a few after
                assert await client.capture(AuditEvent(action="auth.login", actor=me))
                sent += 1
                answer = await api.get(
                    f"/api/v1/admin/subjects/{SUBJECT}/anonymisation", headers=tokens.admin
                )
                if (await answer.json())["state"] == "done" and sent >= 40:
                    break

        async def stored() -> bool:
            n = await _count(pg, "SELECT count(*) FROM audit_log WHERE action = 'auth.login'")
            return n == sent

        await wait_for(stored)
    everything = "\n".join(r["t"] for r in await pg.fetch("SELECT t::text FROM audit_log t"))
    _absent(everything, "audit_log")
    # Rows changed before they were sealed verify too (the seal holds their first digest).
    await _seal_all(pg, quiet_settings.seal_key_path)
    lines: list[str] = []
    key = load_or_create_private_key(quiet_settings.seal_key_path)
    report = await verify(pg, key.public_key(), emit=lines.append)
    assert report.findings == 0, lines


async def test_anonymise_of_an_id_with_no_data_warns(
    quiet_settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo erases nothing: the command says so instead of only printing zero counts."""
    async with running_worker(quiet_settings):
        async with AuditClient.from_settings(quiet_settings) as client:
            for event in _subject_events():
                assert await client.capture(event) is not None

        async def stored() -> bool:
            return await _count(pg, "SELECT count(*) FROM audit_log") == len(_subject_events())

        await wait_for(stored)
    capsys.readouterr()
    assert await run_cli("anonymise", f"{SUBJECT}-typo") == 0
    printed, warned = capsys.readouterr()
    assert "rows: 0" in printed
    assert "warning: nothing held" in warned and f"{SUBJECT}-typo" in warned
    assert await run_cli("anonymise", SUBJECT) == 0
    printed, warned = capsys.readouterr()
    assert "warning" not in warned


async def test_a_finished_cron_jobs_marker_does_not_hold_the_erasure(
    quiet_settings: Settings, pg: asyncpg.Connection, redis: aioredis.Redis
) -> None:
    """arq keeps a cron job's in-progress marker after the job finished (so it does not run
    twice), and the job id can stand in the queue again: no job runs, so the erasure does not
    wait the job timeout for it. A job that does run is still waited for."""
    finished = "maintain:1796598058634"
    await redis.set(f"arq:in-progress:{finished}", b"1", px=600_000)
    await redis.zadd(quiet_settings.queue, {finished: 1})  # no arq:job:… key: not running
    pool = await db.create_pool(quiet_settings.database_url or "", size=2)
    try:
        run = subjects.anonymise(pool, redis, quiet_settings, "u-nobody-at-all")
        outcome = await asyncio.wait_for(run, timeout=quiet_settings.job_timeout_s / 2)
    finally:
        await pool.close()
    assert outcome is not None and outcome.rows == 0

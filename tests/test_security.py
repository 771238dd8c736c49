"""Security checks on real servers: tokens at rest, every route's auth, body limits, CSV
injection, and secrets planted through every entry point that must never come out."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from service.cli import serve
from service.events import Actor, AuditEvent, Change, Entity
from service.producer.client import AuditClient
from service.settings import Settings
from service.store.pages import CSV_HEADER, FORMULA_START
from service.store.tokens import create_token, revoke_token
from tests.support.admin_api import Tokens, enqueue, error_of
from tests.support.cli import run_cli
from tests.support.polling import wait_for
from tests.support.stores import database_as_text, redis_as_text
from tests.support.worker import running_worker

ADMIN = "/api/v1/admin/"
EVENTS = "/api/v1/events"
TASKS = "/api/v1/admin/tasks"
MB = 1024 * 1024


# Tokens at rest.


async def test_tokens_are_hashed_at_rest_whatever_made_them(
    cli_env: None,
    settings: Settings,
    pg: asyncpg.Connection,
    redis: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = [
        await create_token(pg, name=f"direct-{role}", role=role) for role in ("admin", "reader")
    ]
    assert await run_cli("tokens", "create", "--name", "from-cli", "--role", "ingest") == 0
    made.append(capsys.readouterr().out.strip().splitlines()[-1])
    made.append(await serve.ensure_dev_admin_token(settings))
    assert (settings.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    async with running_worker(settings):  # store the token.created events the CLI queued
        await wait_for(lambda: _rows_with(pg, "token.created", 2))

    rows = [row["row"] for row in await pg.fetch("SELECT t::text AS row FROM api_token t")]
    assert len(rows) == 4
    everything = await database_as_text(pg)
    redis_values = await redis_as_text(
        redis, (f"auditq:{settings.queue}*", f"{settings.queue}*", "arq:*")
    )
    for token in made:
        assert token.startswith("aq_")
        secret_part = token[3:]
        assert secret_part not in "\n".join(rows)
        assert secret_part not in everything, "a token's plaintext is stored in PostgreSQL"
        assert secret_part not in redis_values, "a token's plaintext is stored in Redis"
        # Stored as SHA-256 (32 bytes): the bytea text form is its hex.
        digest = await pg.fetchval(
            "SELECT encode(token_hash, 'hex') FROM api_token WHERE token_hash = sha256($1)",
            token.encode(),
        )
        assert digest is not None and len(digest) == 64


async def _rows_with(pg: asyncpg.Connection, action: str, n: int) -> bool:
    return int(await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = $1", action)) >= n


# Every route of the router: 401 without a valid token, 403 for the wrong role.

PARAM_VALUES = {
    "entity_type": "document",
    "entity_id": "doc-42",
    "actor_id": "user-1",
    "subject_id": "user-1",
    "name": "some-token",
    "view": "audit-logs",
}


def _concrete_path(resource: web.AbstractResource) -> str:
    canonical = resource.canonical
    values = dict(PARAM_VALUES)
    # A task id for task routes, an event id for audit-log routes.
    values["id"] = "1735689600000-1" if canonical.startswith(TASKS) else str(uuid.uuid4())
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values[m.group(1)], canonical)


def protected_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route behind a token, read from the app's router."""
    routes = []
    for route in app.router.routes():
        path = _concrete_path(route.resource) if route.resource is not None else ""
        if path.startswith(ADMIN) or path == EVENTS:
            routes.append((route.method, path))
    return routes


def _app(api: TestClient[Any, Any]) -> web.Application:
    app = api.app
    assert isinstance(app, web.Application)
    return app


async def _status(api: TestClient[Any, Any], method: str, path: str, headers: Any) -> int:
    body: Any = {} if method == "POST" else None
    async with api.request(method, path, headers=headers, json=body) as response:
        # Ingest answers a request it accepted nothing of with 400 and its result body.
        refused_events = path == EVENTS and response.status == 400
        if method != "HEAD" and response.status >= 400 and not refused_events:
            await error_of(response, response.status)  # the envelope, whatever the status
        return response.status


async def test_every_route_refuses_missing_forged_revoked_and_wrong_role_tokens(
    api: TestClient[Any, Any], tokens: Tokens, pg: asyncpg.Connection
) -> None:
    app = _app(api)
    routes = protected_routes(app)
    methods = {method for method, _ in routes}
    assert len(routes) >= 15 and {"GET", "HEAD", "POST"} <= methods, routes
    assert ("POST", EVENTS) in routes

    revoked = await create_token(pg, name="revoked-admin", role="admin")
    assert await revoke_token(pg, "revoked-admin")
    admin_token = tokens.admin["Authorization"].removeprefix("Bearer ")
    stored_hash = await pg.fetchval(
        "SELECT encode(token_hash, 'hex') FROM api_token WHERE name = 'test-admin'"
    )
    unauthenticated: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {admin_token}"},  # a good token under the wrong scheme
        {"Authorization": f"Bearer aq_{secrets.token_urlsafe(32)}"},  # forged
        {"Authorization": f"Bearer {admin_token[:-1]}"},  # a near miss
        {"Authorization": f"Bearer {admin_token}x"},
        {"Authorization": f"Bearer {stored_hash}"},  # the hash is not the token
        {"Authorization": f"Bearer {revoked}"},
        {"X-Api-Key": admin_token},  # only the Authorization header counts
    ]
    failures: list[tuple[str, str, object, int]] = []
    for method, path in routes:
        for headers in unauthenticated:
            status = await _status(api, method, path, headers)
            if status != 401:
                failures.append((method, path, headers, status))
        mutation = method not in ("GET", "HEAD")
        # An id's pseudonym, and the list of erasures, are shown to admins only
        # (re-identification by enumeration).
        admin_only = mutation or path.endswith(("/anonymisation", "/admin/subjects"))
        if path == EVENTS or admin_only:
            if (status := await _status(api, method, path, tokens.reader)) != 403:
                failures.append((method, path, "reader", status))
        if path != EVENTS and (status := await _status(api, method, path, tokens.ingest)) != 403:
            failures.append((method, path, "ingest", status))
        if "/stream" not in path:  # the live tail would not end; its auth is checked above
            allowed = tokens.ingest if path == EVENTS else tokens.admin
            if (status := await _status(api, method, path, allowed)) in (401, 403):
                failures.append((method, path, "allowed role", status))
            if not admin_only and path != EVENTS:
                if (status := await _status(api, method, path, tokens.reader)) in (401, 403):
                    failures.append((method, path, "reader GET", status))
    assert not failures, failures


async def test_path_tricks_do_not_slip_past_the_token_check(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    variants = set()
    for method, path in protected_routes(_app(api)):
        tail = path.removeprefix("/api/v1/")
        variants |= {
            (method, path + "/"),
            (method, "/api/v1//" + tail),
            (method, "/api/v1/./" + tail),
            (method, "/api/v1/x/../" + tail),
            (method, "/api/v1/" + tail.replace("/", "%2F", 1)),
            (method, "/api/v1/" + tail.replace("a", "%61", 1)),
            (method, path.upper()),
            (method, path + "?token=" + tokens.admin["Authorization"][7:]),
        }
    for method, path in sorted(variants):
        async with api.request(method, path, allow_redirects=False) as response:
            assert response.status >= 400, (method, path, response.status)


# Body size and nesting.


def _peak_rss_reset() -> bool:
    """Reset the process's peak RSS (VmHWM) so the next read shows this test's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


async def _chunks(total: int, chunk: bytes = b"[" * MB) -> AsyncIterator[bytes]:
    for _ in range(total // len(chunk)):
        yield chunk


JSON_ROUTES = (
    EVENTS,
    "/api/v1/admin/audit-logs/search",
    "/api/v1/admin/tasks/retry-failed",
    "/api/v1/admin/tasks/cleanup",
)


async def test_a_huge_body_is_413_quickly_without_buffering_it(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    json_type = {"Content-Type": "application/json"}
    resettable = _peak_rss_reset()
    before = _rss_mb("VmRSS")
    for path in JSON_ROUTES:
        for sized in (True, False):  # with Content-Length, and chunked without one
            started = time.monotonic()
            data: Any = _chunks(50 * MB)
            headers = {**tokens.admin, **json_type}
            if sized:
                data = io.BytesIO(b"[" * (50 * MB))
            try:
                async with api.post(path, data=data, headers=headers) as response:
                    assert response.status == 413, (path, sized, await response.text())
                    await error_of(response, 413)
            except (ConnectionError, OSError) as exc:
                # The server may close the connection on the rest of the upload; it must
                # have answered 413 first, which aiohttp's client cannot always read then.
                pytest.fail(f"{path}: connection broken before a 413: {exc!r}")
            del data
            assert time.monotonic() - started < 10, path
    grown = (_rss_mb("VmHWM") if resettable else _rss_mb("VmRSS")) - before
    # The 50 MB bodies the client itself builds count here: 100 MB is the bound for both.
    assert grown < 100, f"the process grew by {grown:.0f} MB"


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["list", "object"])
async def test_json_nested_100000_deep_is_400_not_500(
    api: TestClient[Any, Any], tokens: Tokens, kind: str
) -> None:
    resettable = _peak_rss_reset()
    before = _rss_mb("VmRSS")
    bodies = [
        _deep(100_000, kind),
        b'{"action": "a.b", "metadata": {"x": ' + _deep(100_000, kind) + b"}}",
        b'{"events": [{"action": "a.b", "metadata": {"x": ' + _deep(900, kind) + b"}}]}",
    ]
    for path in JSON_ROUTES:
        for body in bodies:
            async with api.post(
                path,
                data=body,
                headers={**tokens.admin, "Content-Type": "application/json"},
            ) as response:
                text = await response.text()
                if path == EVENTS and body is bodies[2]:
                    # Decodable, but deeper than an event may nest: that event is refused.
                    assert response.status == 400, text  # nothing accepted
                    result = json.loads(text)
                    assert result["accepted"] == [] and "nests deeper" in text
                else:
                    assert response.status == 400, (path, text[:300])
                    await error_of(response, 400)
    grown = (_rss_mb("VmHWM") if resettable else _rss_mb("VmRSS")) - before
    assert grown < 100, f"the process grew by {grown:.0f} MB"


@pytest.mark.parametrize(
    "body", [b'{"action": "a.\x80b"}', b'{"\xff": 1}', b"\xff\xfe{}", b'["\xed\xa0\x80"]']
)
async def test_a_body_that_is_not_utf8_is_400_not_500(
    api: TestClient[Any, Any], tokens: Tokens, body: bytes
) -> None:
    for path in JSON_ROUTES:
        async with api.post(
            path, data=body, headers={**tokens.admin, "Content-Type": "application/json"}
        ) as response:
            await error_of(response, 400)


async def test_deep_payloads_from_a_foreign_producer_fail_visibly(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
) -> None:
    """Through the Lua script: the tasks listing, the task and the worker all hold."""
    too_deep = (b'{"action": "a.b", "metadata": {"x": ' + _deep(100_000, "list") + b"}}").decode()
    deep = '[{"action": "a.b", "metadata": {"x": ' + _deep(900, "object").decode() + "}}"
    deep += ', {"action": "deep.neighbour"}]'
    ids = [await enqueue(redis, settings.queue, payload) for payload in (too_deep, deep)]
    async with api.get(TASKS, headers=tokens.reader) as response:
        assert response.status == 200, await response.text()
    for task_id in ids:
        async with api.get(f"{TASKS}/{task_id}", headers=tokens.reader) as response:
            assert response.status == 200, await response.text()
    async with running_worker(settings):
        await wait_for(lambda: _rows_with(pg, "deep.neighbour", 1))
        await wait_for(lambda: _failed_count(api, tokens, 2))
    for task_id in ids:
        async with api.get(f"{TASKS}/{task_id}", headers=tokens.reader) as response:
            assert response.status == 200, await response.text()
            task = await response.json()
        assert task["status"] == "failed" and task["failure"]["classification"] == "invalid"


async def _failed_count(api: TestClient[Any, Any], tokens: Tokens, n: int) -> bool:
    async with api.get(TASKS, params={"status": "failed"}, headers=tokens.reader) as response:
        return len((await response.json())["items"]) >= n


# CSV export: planted formulas through ingest → worker → export.

FORMULAS = ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1+1", "\r=1+1", '=HYPERLINK("http://x")']


async def test_csv_export_neutralises_formulas_planted_through_the_pipeline(
    api: TestClient[Any, Any], tokens: Tokens, settings: Settings, pg: asyncpg.Connection
) -> None:
    planted = []
    for n, formula in enumerate(FORMULAS):
        planted.append(
            {
                "action": "profile.updated",
                "category": formula,
                "tenant": "csv",
                "actor": {"id": formula, "type": "user", "name": formula, "email": formula},
                "entity": {"type": formula, "id": f"{formula}{n}", "name": formula},
                "request": {"id": formula, "user_agent": formula, "path": formula},
                "source": formula,
                "metadata": {"note": formula},
                "changes": [{"field": formula, "old": formula, "new": formula}],
            }
        )
    async with api.post(EVENTS, json={"events": planted}, headers=tokens.ingest) as response:
        assert response.status == 202, await response.text()
        assert len((await response.json())["accepted"]) == len(FORMULAS)
    async with running_worker(settings):
        await wait_for(lambda: _rows_with(pg, "profile.updated", len(FORMULAS)))
    async with api.get(
        "/api/v1/admin/audit-logs/export",
        params={"format": "csv", "tenant": "csv"},
        headers=tokens.reader,
    ) as response:
        assert response.status == 200
        text = await response.text()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(CSV_HEADER)
    assert len(rows) == 1 + len(FORMULAS)
    planted_columns = {
        "category",
        "tenant",
        "actor_id",
        "actor_name",
        "actor_email",
        "entity_type",
        "entity_id",
        "entity_name",
        "request_id",
        "user_agent",
        "path",
        "source",
    }
    for row in rows[1:]:
        cells = dict(zip(rows[0], row, strict=True))
        for column, cell in cells.items():
            assert not cell.startswith(FORMULA_START), (column, cell)
        formula = cells["source"][1:]
        assert formula in FORMULAS
        for column in planted_columns - {"tenant", "entity_id"}:
            assert cells[column] == "'" + formula, (column, cells[column])
        assert cells["entity_id"].startswith("'" + formula)
        # Nested values are JSON text: they start with { or [, never with a formula.
        assert json.loads(cells["metadata"]) == {"note": formula}


# Secrets planted through every entry point must not come out anywhere.


class _Secrets:
    def __init__(self) -> None:
        self.by_entry = {
            name: f"Zq9{name}{uuid.uuid4().hex}"
            for name in (
                "capture",
                "nowait",
                "lua",
                "http",
                "http_rejected",
                "failure",
                "failure_nowait",
                "postgres",
                "query",
            )
        }

    def __getitem__(self, name: str) -> str:
        return self.by_entry[name]

    def found_in(self, where: str, text: str) -> list[str]:
        return [f"{name} in {where}" for name, s in self.by_entry.items() if s in text]


def _secret_metadata(secret: str) -> dict[str, Any]:
    return {
        "password": secret,
        "nested": [{"API-Key": secret}, {"deeper": {"Client_Secret": secret}}],
        "headers": {"Authorization": f"Bearer {secret}"},
        "note": f"login failed for token={secret}",
        "dsn": f"redis://default:{secret}@cache:6379/0",
    }


def _secret_changes(secret: str) -> list[Change]:
    return [Change(field="api_key", old=secret, new=secret)]


async def test_secrets_from_every_entry_point_never_come_out(
    api: TestClient[Any, Any],
    tokens: Tokens,
    settings: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    s = _Secrets()
    outputs: dict[str, str] = {}
    assert settings.redis_url

    # Python producer: awaited capture and capture_nowait.
    client = AuditClient.from_url(settings.redis_url, queue=settings.queue)
    assert await client.capture(
        AuditEvent(
            action="secret.captured",
            actor=Actor(id="u-1", type="user"),
            entity=Entity(type="user", id="u-1"),
            metadata=_secret_metadata(s["capture"]),
            changes=_secret_changes(s["capture"]),
        )
    )
    client.capture_nowait(
        AuditEvent(
            action="secret.buffered",
            metadata=_secret_metadata(s["nowait"]),
            changes=_secret_changes(s["nowait"]),
        )
    )
    # An event PostgreSQL rejects (a NUL in JSON text): it ends in the dead letter.
    assert await client.capture(
        AuditEvent(
            action="secret.rejected_by_postgres",
            metadata={**_secret_metadata(s["postgres"]), "bad": "nul\x00byte"},
            changes=_secret_changes(s["postgres"]),
        )
    )
    await client.aclose()

    # A capture that fails with a Redis URL holding a password in its error message.
    failing = AuditClient.from_url(settings.redis_url, queue=settings.queue)

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        message = f"Error connecting to redis://default:{s['failure']}@cache:6379/0"
        raise RedisConnectionError(message + f" (password={s['failure_nowait']})")

    failing._enqueue_once = refuse  # type: ignore[method-assign]
    assert (
        await failing.capture(
            AuditEvent(action="secret.failed", metadata=_secret_metadata(s["failure"]))
        )
        is None
    )
    failing.capture_nowait(
        AuditEvent(action="secret.failed_nowait", metadata=_secret_metadata(s["failure_nowait"]))
    )
    await failing.aclose()
    assert failing.failed == 2

    # Another language, over Redis: nothing redacted by the producer.
    lua_event = {
        "action": "secret.from_lua",
        "metadata": _secret_metadata(s["lua"]),
        "changes": [{"field": "password", "old": s["lua"], "new": s["lua"]}],
    }
    lua_task = await enqueue(redis, settings.queue, json.dumps([lua_event]))
    lua_broken = await enqueue(redis, settings.queue, json.dumps(lua_event)[:-1])  # not JSON

    # HTTP ingest, with a rejected event whose error would quote its value.
    batch = {
        "events": [
            {"action": "secret.over_http", "metadata": _secret_metadata(s["http"])},
            {"action": "secret.bad", "request": {"ip": f"password={s['http_rejected']}"}},
            {"action": "secret.bad", "severity": f"token={s['http_rejected']}"},
        ]
    }
    async with api.post(EVENTS, json=batch, headers=tokens.ingest) as response:
        outputs["ingest response"] = await response.text()
        assert response.status == 202, outputs["ingest response"]
    # Error bodies that would echo a parameter.
    for params in ({"since": f"password={s['query']}"}, {"ip": f"token={s['query']}"}):
        async with api.get(
            "/api/v1/admin/audit-logs", params=params, headers=tokens.reader
        ) as response:
            outputs[f"error body {params}"] = await response.text()
            assert response.status == 400

    # The queued tasks, as admins see them before the worker ran.
    outputs |= await _task_views(api, tokens, "queued")
    assert lua_task in outputs["tasks queued"] and lua_broken in outputs["tasks queued"]

    async with running_worker(settings):
        await wait_for(lambda: _rows_with(pg, "secret.over_http", 1))
        await wait_for(lambda: _rows_with(pg, "secret.from_lua", 1))
        await wait_for(lambda: _failed_count(api, tokens, 2))
        await wait_for(lambda: _queue_empty(redis, settings.queue))

    stored = await pg.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'secret.%'")
    assert stored == 4  # captured, buffered, from_lua, over_http; the NUL one is set aside
    outputs |= await _task_views(api, tokens, "done")
    assert any("secret.rejected_by_postgres" in text for text in outputs.values())
    for path in ("/metrics", "/api/v1/admin/queue/stats"):
        async with api.get(path, headers=tokens.reader) as response:
            outputs[path] = await response.text()
    for export_format in ("csv", "jsonl"):
        async with api.get(
            "/api/v1/admin/audit-logs/export",
            params={"format": export_format},
            headers=tokens.reader,
        ) as response:
            outputs[f"export {export_format}"] = await response.text()
    async with api.get(
        "/api/v1/admin/audit-logs", params={"limit": "1000"}, headers=tokens.reader
    ) as response:
        outputs["audit-log list"] = await response.text()
    letters = [key async for key in redis.scan_iter(match=f"auditq:{settings.queue}:dead:*")]
    assert len(letters) == 2
    outputs["dead letters in Redis"] = repr(await redis.mget(letters))
    outputs["PostgreSQL"] = await database_as_text(pg)
    # aiohttp's access log (on in the test server, off in `auditq api`) shows query strings.
    outputs["logs"] = "\n".join(
        f"{record.name} {record.getMessage()} {record.__dict__!r}"
        for record in caplog.records
        if record.name != "aiohttp.access"
    )
    assert "[AuditLog] Failed to queue audit event:" in outputs["logs"]

    leaks = [leak for where, text in outputs.items() for leak in s.found_in(where, text)]
    assert not leaks, leaks


async def _task_views(api: TestClient[Any, Any], tokens: Tokens, label: str) -> dict[str, str]:
    async with api.get(TASKS, params={"limit": "1000"}, headers=tokens.reader) as response:
        listing = await response.text()
    views = {f"tasks {label}": listing}
    for task in json.loads(listing)["items"]:
        async with api.get(f"{TASKS}/{task['id']}", headers=tokens.reader) as response:
            views[f"task {task['id']} {label}"] = await response.text()
    return views


async def _queue_empty(redis: aioredis.Redis, queue: str) -> bool:
    await asyncio.sleep(0)
    return int(await redis.zcard(queue)) == 0

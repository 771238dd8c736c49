"""Red team: secrets planted in realistic shapes through every entry point (the Redis
contract, HTTP ingest, the Python client), then searched for in every store auditq has.

Each secret has a distinctive core (random letters and digits); a core found anywhere,
whatever its case (the full-text column lowercases), is a leak. The figures are printed:
`planted N, found M`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
import socket
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from service.api.app import create_app
from service.events import AuditEvent, Entity
from service.ops import dead_letter
from service.producer.client import AuditClient
from service.queue import serialize_job
from service.settings import Settings
from tests.admin_api import Tokens, enqueue
from tests.conftest import running_worker, wait_for
from tests.stores import database_as_text, redis_as_text
from workers.job import redact_waiting_job

EXTRA_KEY = "employee_badge"  # AUDITQ_REDACT_EXTRA_KEYS of this test's stack
ADMIN = "/api/v1/admin"
ALNUM = string.ascii_letters + string.digits


def _random(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Planted:
    """The secrets planted so far, by a name that says where and in which shape."""

    def __init__(self) -> None:
        self.cores: dict[str, str] = {}

    def core(self, name: str, n: int = 24, alphabet: str = ALNUM, prefix: str = "Zq9") -> str:
        value = prefix + _random(n, alphabet)
        assert name not in self.cores
        self.cores[name] = value
        return value

    def found_in(self, where: str, text: str) -> list[str]:
        low = text.lower()
        return [f"{name} in {where}" for name, core in self.cores.items() if core.lower() in low]


def _jwt(planted: Planted, name: str) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    body = {"sub": "u-1", "sid": _random(12)}
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    planted.cores[f"{name} (payload)"] = payload
    signature = planted.core(f"{name} (signature)", 40, ALNUM + "-_")
    return f"{header}.{payload}.{signature}"


def _pem(planted: Planted, name: str) -> str:
    body = planted.core(name, 60, ALNUM + "+/", prefix="MIIEow")
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n{_random(60)}\n-----END RSA PRIVATE KEY-----"


def _basic(planted: Planted, name: str) -> str:
    password = _random(16)
    encoded = base64.b64encode(f"svc:{password}".encode()).decode()
    planted.cores[name] = encoded
    return encoded


def shapes(planted: Planted, tag: str) -> list[dict[str, Any]]:
    """Events carrying secrets in every shape the rules know, each with a new secret."""

    def s(shape: str, n: int = 24) -> str:
        return planted.core(f"{tag}: {shape}", n)

    def fmt(shape: str, prefix: str, n: int, alphabet: str = ALNUM) -> str:
        return planted.core(f"{tag}: {shape}", n, alphabet, prefix=prefix)

    upper = string.ascii_uppercase + string.digits
    aws_id = fmt("aws access key id", "AKIA", 16, upper)
    aws_pair_id = fmt("aws id of a pair", "AKIA", 16, upper)
    aws_pair_secret = fmt("aws secret of a pair", "", 40, ALNUM + "/+")
    return [
        {  # compound and plural keys, at any depth of metadata
            "action": "secret.keys",
            "tenant": tag,
            "metadata": {
                "tokens": [s("tokens")],
                "secrets": {"primary": s("secrets")},
                "passwords": s("passwords"),
                "cookies": s("cookies"),
                "credential": s("credential"),
                "config": {
                    "secret_key": s("secret_key"),
                    "aws_secret_access_key": s("aws_secret_access_key"),
                    "private_key_pem": s("private_key_pem"),
                    "db_password": s("db_password"),
                },
                "user": {"userPassword": s("userPassword"), "password2": s("password2")},
                "headers": {"x-api-key": s("x-api-key"), "Cookie": f"sid={s('cookie header')}"},
                "form": {
                    "password_confirmation": s("password_confirmation"),
                    "passphrase": s("passphrase"),
                    "pwd": s("pwd"),
                },
                "session_id": s("session_id"),
                "jwt": s("jwt key"),
                "otp": s("otp"),
                "two_factor_backup_codes": [s("backup code 1"), s("backup code 2")],
                "2fa_secret": s("2fa_secret"),
                EXTRA_KEY: s("extra key"),
                "token_count": 12,  # a descriptor: kept
            },
        },
        {  # change diffs naming a secret, and presentation params
            "action": "secret.changes",
            "tenant": tag,
            "changes": [
                {"field": "password2", "old": s("diff password2 old"), "new": s("diff new")},
                {"field": "user.passwordHash", "old": s("diff hash old"), "new": None},
                {"field": "note", "old": f"token={s('diff text pair')}", "new": "ok"},
            ],
            "presentation": {
                "code": "audit.secret.changes",
                "params": {"api_key": s("params key"), "text": f"password: {s('params text')}"},
            },
        },
        {  # every top-level string, values only
            "action": "secret.values",
            "tenant": f"acme access_token={s('tenant pair')}",
            "source": f"billing api_key: {s('source pair')}",
            "actor": {
                "id": fmt("actor id (aq_ token)", "aq_", 43, ALNUM + "-_"),
                "type": "user",
                "name": f"bob password={s('actor name pair')}",
            },
            "entity": {
                "type": "repository",
                "id": fmt("entity id (github token)", "ghp_", 36),
                "name": f"postgresql://app:{s('entity name userinfo')}@db:5432/app",
            },
            "request": {
                "path": f"/login?user=bob&token={s('path query token')}&next=/",
                "user_agent": f"deploy-bot/1.0 (Authorization: Bearer {s('user agent bearer')})",
                "method": "POST",
            },
        },
        {  # well-known credential formats in free text
            "action": "secret.formats",
            "tenant": tag,
            "metadata": {
                "note": f"used {aws_id} for the upload",
                "aws": f"{aws_pair_id}:{aws_pair_secret}",
                "github": " ".join(
                    [
                        fmt("gho token", "gho_", 36),
                        fmt("github_pat", "github_pat_", 60, ALNUM + "_"),
                    ]
                ),
                "gitlab": fmt("gitlab token", "glpat-", 20),
                "slack": [fmt("slack bot", "xoxb-", 30), fmt("slack user", "xoxp-", 30)],
                "stripe": {"live": fmt("stripe sk", "sk_live_", 24)},
                "stripe_restricted": f"key {fmt('stripe rk', 'rk_live_', 24)} rotated",
                "google": fmt("google api key", "AIza", 35, ALNUM + "-_"),
                "jwt_in_text": f"session started with {_jwt(planted, f'{tag}: jwt')}",
                "pem": _pem(planted, f"{tag}: pem body"),
                "basic": f"Authorization: Basic {_basic(planted, f'{tag}: basic auth')}",
                "body": json.dumps({"password": s("json in text")}),
                "redirect": f"https%3A%2F%2Fx%2Fcb%3Ftoken%3D{s('url-encoded query')}%26n%3D1",
                "dsn": f"redis://default:{s('redis url userinfo')}@cache:6379/0",
            },
        },
    ]


def _invalid_events(planted: Planted) -> tuple[str, list[dict[str, Any]]]:
    """A payload that is not JSON, and a batch whose first event is invalid."""
    raw = f'[{{"action": "secret.raw", "metadata": {{"password": "{planted.core("raw json")}"'
    batch = [
        {
            "action": "secret.invalid",
            "severity": "loud",  # not a severity: this event goes to the dead letter
            "request": {"path": f"/cb?access_token={planted.core('invalid event path')}"},
            "metadata": {"api_key": planted.core("invalid event key")},
        },
        {"action": "secret.valid_neighbour"},
    ]
    return raw, batch


@pytest.fixture
def stack(settings: Settings) -> Settings:
    return dataclasses.replace(settings, redact_extra_keys=frozenset({EXTRA_KEY}))


@pytest.fixture
async def api(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(stack))) as client:
        yield client


async def test_planted_secrets_are_found_nowhere(
    api: TestClient[Any, Any],
    tokens: Tokens,
    stack: Settings,
    redis: aioredis.Redis,
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = Planted()
    outputs: dict[str, str] = {}
    assert stack.redis_url

    # 1. The Redis contract, as another language sends it: nothing redacted.
    lua_events = shapes(planted, "lua")
    await enqueue(redis, stack.queue, json.dumps(lua_events))
    raw, invalid_batch = _invalid_events(planted)
    await enqueue(redis, stack.queue, raw)
    await enqueue(redis, stack.queue, json.dumps(invalid_batch))

    # 2. HTTP ingest, with rejected events whose errors would quote their values.
    http_events = shapes(planted, "http")
    rejected = [
        {"action": "secret.bad", "severity": f"token={planted.core('http rejected severity')}"},
        {
            "action": "secret.bad",
            "request": {"ip": planted.core("http rejected ip", prefix="ghp_")},
        },
    ]
    async with api.post(
        "/api/v1/events", json={"events": http_events + rejected}, headers=tokens.ingest
    ) as response:
        outputs["ingest answer"] = await response.text()
        assert response.status == 202, outputs["ingest answer"]
        assert len((await response.json())["rejected"]) == 2

    # 3. The Python client: awaited, buffered, and a capture that fails.
    client = AuditClient.from_settings(stack)
    shapes_sent = shapes(planted, "client")
    client_events = [msgspec.convert(e, AuditEvent) for e in shapes_sent]
    for event in client_events[:2]:
        assert await client.capture(event) is not None
    for event in client_events[2:]:
        client.capture_nowait(event)
    # PostgreSQL refuses a NUL in JSON text: this event ends in the dead letter.
    nul = {"action": "secret.nul", "metadata": {"bad": "a\x00b", "token": planted.core("nul")}}
    assert await client.capture(msgspec.convert(nul, AuditEvent)) is not None
    # Built without validation, as code does: refused by capture, logged as a failure.
    entity = Entity(type="t", id=planted.core("failed capture entity", 36, prefix="ghp_"))
    assert await client.capture(AuditEvent(action="Not An Action", entity=entity)) is None
    await client.aclose()

    # Error bodies that would echo a parameter.
    outputs_sent: list[dict[str, str]] = []
    for params in (
        {"since": f"password={planted.core('error body since')}"},
        {"ip": planted.core("error body ip", 36, prefix="ghp_")},
        {"limit": f"api_key: {planted.core('error body limit')}"},
    ):
        outputs_sent.append(params)
        async with api.get(f"{ADMIN}/audit-logs", params=params, headers=tokens.reader) as resp:
            outputs[f"error body {list(params)}"] = await resp.text()
            assert resp.status == 400

    outputs |= await _task_views(api, tokens, "queued")
    # The search sees every secret where it was planted (so "found 0" below means something).
    sent = [lua_events, raw, invalid_batch, http_events, rejected, shapes_sent, nul, entity.id]
    inputs = json.dumps(sent, default=str) + repr(outputs_sent)
    seen = {found.removesuffix(" in inputs") for found in planted.found_in("inputs", inputs)}
    assert seen == set(planted.cores), set(planted.cores) - seen

    valid = len(lua_events) + 1 + len(http_events) + len(client_events) + 1  # +neighbour, NUL
    async with running_worker(stack):

        async def settled() -> bool:
            letters = await dead_letter.list_ids(redis, stack.queue)
            rows = await pg.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'secret.%'")
            return rows == valid - 1 and len(letters) == 3 and not await redis.zcard(stack.queue)

        await wait_for(settled)

    outputs |= await _task_views(api, tokens, "done")
    outputs |= await _api_answers(api, tokens)
    outputs["PostgreSQL (every column of every row)"] = await database_as_text(pg)
    outputs["Redis (every key)"] = await redis_as_text(redis)
    outputs["files of the data directory"] = "\n".join(
        p.read_bytes().decode(errors="replace") for p in stack.data_dir.rglob("*") if p.is_file()
    )
    outputs["logs"] = "\n".join(
        f"{record.name} {record.getMessage()} {record.__dict__!r}"
        for record in caplog.records
        # aiohttp's access log is on in the test server only (off in `auditq api`).
        if record.name != "aiohttp.access"
    )
    assert "[AuditLog] Failed to queue audit event:" in outputs["logs"]
    # The shapes really were stored and shown (not dropped): the kept descriptor is there.
    assert '"token_count":12' in outputs["export jsonl"].replace(" ", "")

    leaks = [leak for where, text in outputs.items() for leak in planted.found_in(where, text)]
    print(f"\nred team: planted {len(planted.cores)}, found {len(leaks)}")
    assert len(planted.cores) >= 60
    assert not leaks, leaks


async def _task_views(api: TestClient[Any, Any], tokens: Tokens, label: str) -> dict[str, str]:
    async with api.get(f"{ADMIN}/tasks", params={"limit": "1000"}, headers=tokens.reader) as r:
        listing = await r.text()
    views = {f"tasks {label}": listing}
    for task in json.loads(listing)["items"]:
        async with api.get(f"{ADMIN}/tasks/{task['id']}", headers=tokens.reader) as response:
            views[f"task {task['id']} {label}"] = await response.text()
    return views


async def _api_answers(api: TestClient[Any, Any], tokens: Tokens) -> dict[str, str]:
    answers = {}
    gets = {
        "audit-log list": (f"{ADMIN}/audit-logs", {"limit": "1000"}),
        "export csv": (f"{ADMIN}/audit-logs/export", {"format": "csv"}),
        "export jsonl": (f"{ADMIN}/audit-logs/export", {"format": "jsonl"}),
        "statistics": (f"{ADMIN}/audit-logs/statistics", {}),
        "queue stats": (f"{ADMIN}/queue/stats", {}),
        "metrics": ("/metrics", {}),
    }
    for name, (path, params) in gets.items():
        async with api.get(path, params=params, headers=tokens.reader) as response:
            assert response.status == 200, await response.text()
            answers[name] = await response.text()
    for item in json.loads(answers["audit-log list"])["items"]:
        async with api.get(f"{ADMIN}/audit-logs/{item['id']}", headers=tokens.reader) as response:
            answers[f"audit log {item['id']}"] = await response.text()
    async with api.post(
        f"{ADMIN}/audit-logs/search", json={"limit": 1000}, headers=tokens.reader
    ) as response:
        answers["search"] = await response.text()
    return answers


@pytest.mark.unit
def test_a_failed_arq_result_keeps_no_raw_secret() -> None:
    """arq keeps a failed job's argument in its result (a timeout, its own failure)."""
    planted = Planted()
    events = shapes(planted, "arq")
    result = {
        "t": 1,
        "f": "store_events",
        "a": [json.dumps(events)],
        "k": {},
        "s": False,
        "r": TimeoutError(f"password={planted.core('arq failure message')}"),
    }
    text = serialize_job(result, frozenset({EXTRA_KEY})).decode()
    assert json.loads(text)["a"]  # kept for the task view, redacted
    assert not planted.found_in("failed arq result", text)
    raw = {**result, "a": [json.dumps(events)[:-3]]}  # not JSON: redacted as text
    assert not planted.found_in(
        "failed arq result", serialize_job(raw, frozenset({EXTRA_KEY})).decode()
    )


async def test_a_job_tried_again_waits_in_redis_redacted(
    stack: Settings, redis: aioredis.Redis, pg: asyncpg.Connection
) -> None:
    """A foreign producer's job that the worker must try again (PostgreSQL away, say) keeps
    no raw secret in its arq:job key meanwhile; the next try stores the same events."""
    planted = Planted()
    payload = json.dumps(shapes(planted, "retried"))
    task_id = await enqueue(redis, stack.queue, payload)
    before = json.loads(await redis.get(f"arq:job:{task_id}"))
    await redact_waiting_job(redis, task_id, payload, stack)
    after_raw = (await redis.get(f"arq:job:{task_id}")).decode()
    assert not planted.found_in("arq:job", after_raw)
    after = json.loads(after_raw)
    assert {k: v for k, v in after.items() if k != "a"} == {
        k: v for k, v in before.items() if k != "a"
    }
    async with running_worker(stack):

        async def stored() -> bool:
            rows = await pg.fetchval("SELECT count(*) FROM audit_log WHERE tenant = 'retried'")
            return int(rows) == 3  # the events whose tenant was not a secret

        await wait_for(stored)
    assert not planted.found_in("PostgreSQL", await database_as_text(pg))


async def test_the_spool_keeps_no_secret(stack: Settings, tmp_path: Path) -> None:
    """Events Redis did not take wait on disk: redacted, as they would have been sent."""
    planted = Planted()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed}/0",
        queue=stack.queue,
        spool_dir=tmp_path / "spool",
        redact_extra_keys=stack.redact_extra_keys,
    )
    events = [msgspec.convert(e, AuditEvent) for e in shapes(planted, "spool")]
    ids = [await client.capture(event) for event in events]
    await client.aclose()
    assert None not in ids and client.spooled == len(events)
    files = "\n".join(p.read_text() for p in (tmp_path / "spool").iterdir() if p.is_file())
    assert "secret.keys" in files
    leaks = planted.found_in("spool", files)
    print(f"\nspool: planted {len(planted.cores)}, found {len(leaks)}")
    assert not leaks, leaks

"""Request context: the aiohttp middleware, client IP behind proxies, and capture picking it up."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from service.events import Actor
from service.producer.client import AuditClient, AuditEvent
from service.producer.context import (
    AuditContext,
    _classify_address,
    audit_context,
    client_ip,
    parse_ip,
    sane_request_id,
    set_actor,
    trusted_networks,
)
from service.producer.middleware import context_middleware
from tests.support.queue import queued_events
from tests.support.servers import Servers

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.fixture
async def client(
    servers: Servers, redis: aioredis.Redis, queue_name: str
) -> AsyncIterator[AuditClient]:
    client = AuditClient.from_url(servers.redis_url, queue=queue_name)
    yield client
    await client.aclose()
    task_ids = await redis.zrange(queue_name, 0, -1)
    if task_ids:
        await redis.delete(*(b"arq:job:" + task_id for task_id in task_ids))
    await redis.delete(queue_name)


def make_app(client: AuditClient, **options: Any) -> web.Application:
    async def update_settings(request: web.Request) -> web.Response:
        set_actor(Actor(id="u-42", type="user", name="Ada"))
        event_id = await client.capture(AuditEvent(action="config.updated"))
        client.capture_nowait(AuditEvent(action="config.viewed"))
        return web.json_response({"id": event_id})

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application(middlewares=[context_middleware(**options)])
    app.router.add_post("/settings", update_settings)
    app.router.add_get("/missing", missing)
    return app


async def post_settings(app: web.Application, headers: dict[str, str]) -> tuple[str, str]:
    """POST through a real server; return the captured event id and the echoed request id."""
    async with TestClient(TestServer(app)) as http:
        response = await http.post("/settings?token=s3cr3t", headers=headers)
        assert response.status == 200
        body = await response.json()
        return body["id"], response.headers["X-Request-ID"]


async def stored(redis: aioredis.Redis, queue: str, action: str) -> dict[str, Any]:
    (event,) = [e for e in await queued_events(redis, queue) if e["action"] == action]
    return event


async def test_event_gets_request_id_ip_user_agent_and_actor_behind_a_trusted_proxy(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    app = make_app(client, trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    headers = {
        "X-Request-ID": "req-abc-123",
        "X-Forwarded-For": "198.51.100.9, 203.0.113.7, 10.1.2.3",
        "User-Agent": "pytest-agent/1.0",
    }
    event_id, echoed = await post_settings(app, headers)
    assert echoed == "req-abc-123"
    event = await stored(redis, queue_name, "config.updated")
    assert event["id"] == event_id
    assert event["request"] == {
        "id": "req-abc-123",
        "ip": "203.0.113.7",  # the right-most hop no trusted proxy vouches for
        "user_agent": "pytest-agent/1.0",
        "method": "POST",
        "path": "/settings",  # no query string: it may carry secrets
    }
    assert event["actor"] == {"id": "u-42", "type": "user", "name": "Ada"}
    await client.aclose()  # flush the capture_nowait event
    viewed = await stored(redis, queue_name, "config.viewed")
    assert viewed["request"]["id"] == "req-abc-123"
    assert viewed["actor"]["id"] == "u-42"


async def test_forwarded_headers_are_ignored_from_an_untrusted_peer(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    app = make_app(client)
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8"}
    _, echoed = await post_settings(app, headers)
    event = await stored(redis, queue_name, "config.updated")
    assert event["request"]["ip"] == "127.0.0.1"
    assert event["request"]["id"] == echoed
    assert len(echoed) == 32 and int(echoed, 16) >= 0  # a fresh uuid4 hex


async def test_insane_request_id_is_replaced_and_errors_echo_it(client: AuditClient) -> None:
    app = make_app(client)
    async with TestClient(TestServer(app)) as http:
        response = await http.get("/missing", headers={"X-Request-ID": "x" * 129})
        assert response.status == 404
        echoed = response.headers["X-Request-ID"]
    assert echoed != "x" * 129 and len(echoed) == 32


async def test_actor_resolver_and_context_reset(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    seen: list[AuditContext | None] = []

    async def whoami(request: web.Request) -> web.Response:
        seen.append(audit_context.get())
        return web.json_response({"id": await client.capture(AuditEvent(action="auth.login"))})

    def resolver(request: web.Request) -> Actor | None:
        return Actor(id=request.headers["X-User"], type="api_token")

    def broken_resolver(request: web.Request) -> Actor | None:
        raise KeyError("X-User")

    for resolve in (resolver, broken_resolver):
        app = web.Application(middlewares=[context_middleware(actor_resolver=resolve)])
        app.router.add_get("/whoami", whoami)
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/whoami", headers={"X-User": "tok-1"})
            assert response.status == 200  # a broken resolver does not break the request
    first, second = seen
    assert first is not None and first.actor == Actor(id="tok-1", type="api_token")
    assert second is not None and second.actor is None
    assert audit_context.get() is None
    (event,) = [e for e in await queued_events(redis, queue_name) if "actor" in e]
    assert event["actor"] == {"id": "tok-1", "type": "api_token"}


async def test_set_actor_outside_a_request(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    token = audit_context.set(None)
    try:
        set_actor(Actor(id="cron", type="system"))
        event_id = await client.capture(AuditEvent(action="retention.applied"))
    finally:
        audit_context.reset(token)
    (event,) = await queued_events(redis, queue_name)
    assert event["id"] == event_id
    assert event["actor"] == {"id": "cron", "type": "system"}
    assert "request" not in event


@pytest.mark.unit
@pytest.mark.parametrize(
    ("peer", "forwarded", "real", "expected"),
    [
        ("127.0.0.1", "203.0.113.7, 10.0.0.2", None, "203.0.113.7"),
        ("127.0.0.1", "203.0.113.7:5555, [2001:db8::1]:443", None, "2001:db8::1"),
        ("127.0.0.1", "10.0.0.3, 10.0.0.2", "203.0.113.8", "203.0.113.8"),
        ("127.0.0.1", "not-an-ip, 10.0.0.2", None, "127.0.0.1"),
        ("127.0.0.1", None, "203.0.113.8", "203.0.113.8"),
        ("127.0.0.1", None, "garbage", "127.0.0.1"),
        ("192.0.2.1", "203.0.113.7", "203.0.113.8", "192.0.2.1"),
        ("::ffff:10.0.0.9", "203.0.113.7", None, "203.0.113.7"),
        (None, "203.0.113.7", None, None),
    ],
)
def test_client_ip(
    peer: str | None, forwarded: str | None, real: str | None, expected: str | None
) -> None:
    assert client_ip(peer, forwarded, real, TRUSTED) == expected


@pytest.mark.unit
def test_request_id_sanity_and_ip_parsing() -> None:
    assert sane_request_id(" abc-1 ") == "abc-1"
    assert sane_request_id("x" * 128) == "x" * 128
    for bad in (None, "", "x" * 129, "bad\x00id", "ünïcode"):
        assert sane_request_id(bad) is None
    assert str(parse_ip("[::1]:80")) == "::1"
    assert parse_ip("example.com") is None


@given(
    value=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses().map(str),
        st.from_regex(r"\A[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(:[0-9]{1,5})?\Z"),
        st.text(max_size=20),
    )
)
def test_the_fast_address_reading_agrees_with_the_ipaddress_module(value: str) -> None:
    trusted = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.0.2.7/32", "fd00::/8"))
    address = parse_ip(value)
    expected = (
        (None, False)
        if address is None
        else (str(address), any(address.version == n.version and address in n for n in trusted))
    )
    assert _classify_address(value, trusted) == expected


@pytest.mark.unit
def test_each_set_of_trusted_proxies_remembers_addresses_on_its_own() -> None:
    # The same peer, through middlewares that trust different proxies: no answer leaks
    # from one's memory into the other's.
    loose, strict = trusted_networks(["10.0.0.0/8"]), trusted_networks("192.0.2.1")
    for _ in range(2):
        assert client_ip("10.0.0.5", "203.0.113.7", None, loose) == "203.0.113.7"
        assert client_ip("10.0.0.5", "203.0.113.7", None, strict) == "10.0.0.5"
        assert client_ip("10.0.0.5", "203.0.113.7", None, TRUSTED) == "203.0.113.7"

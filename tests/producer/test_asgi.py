"""The ASGI middleware under a real FastAPI app: what each request's events carry, once stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from service.client import AuditClient, AuditEvent
from service.events import Actor
from service.producer.asgi import AuditContextMiddleware
from service.producer.context import audit_context, set_actor
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import running_worker

PROXY_PEER = ("10.0.0.5", 51000)  # a load balancer in the trusted network
STRANGER_PEER = ("203.0.113.50", 51000)  # anyone on the internet


@pytest.fixture
async def audit(settings: Settings) -> AsyncIterator[AuditClient]:
    client = AuditClient.from_settings(settings)
    client.bind_loop()  # as an app's startup does: sync endpoints capture from a thread pool
    yield client
    await client.aclose()


def current_user(request: Request) -> str:
    """A sync dependency, as FastAPI auth often is: FastAPI runs it in a thread pool."""
    user = request.headers.get("X-User", "")
    if user:
        set_actor(Actor(id=user, type="user", name=user.title()))
    return user


def make_app(audit: AuditClient, **options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuditContextMiddleware, **options)
    spawned: set[asyncio.Task[None]] = set()

    async def after_response() -> None:
        await audit.capture(AuditEvent(action="settings.background_checked"))

    async def later() -> None:
        await asyncio.sleep(0.01)
        await audit.capture(AuditEvent(action="settings.task_checked"))

    @app.post("/settings")
    async def update_settings(
        user: Annotated[str, Depends(current_user)], background: BackgroundTasks
    ) -> dict[str, str | None]:
        event_id = await audit.capture(AuditEvent(action="settings.updated"))
        background.add_task(after_response)
        task = asyncio.create_task(later())  # outlives the request: keeps its context
        spawned.add(task)
        task.add_done_callback(spawned.discard)
        return {"id": event_id, "user": user}

    @app.get("/plain")
    def plain() -> dict[str, str | None]:
        context = audit_context.get()
        audit.capture_nowait(AuditEvent(action="settings.viewed"))
        return {"request_id": context.request_id if context else None}

    app.state.spawned = spawned
    return app


def http(app: FastAPI, peer: tuple[str, int]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://service.test")


async def stored_rows(settings: Settings, database_url: str, count: int) -> list[asyncpg.Record]:
    """Run the worker until `count` rows are stored; return them by action."""

    async def enough() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM audit_log")) >= count
        finally:
            await conn.close()

    async with running_worker(settings):
        await wait_for(enough)
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT action, request_id, host(ip) AS ip, user_agent, method, path,"
                " actor_id, actor_type, actor_name FROM audit_log ORDER BY action"
            )
        )
    finally:
        await conn.close()


async def test_a_fastapi_request_stores_its_events_with_the_full_context(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    app = make_app(audit, trusted_proxies=["10.0.0.0/8"])
    async with http(app, PROXY_PEER) as client:
        response = await client.post(
            "/settings?token=s3cr3t",
            headers={
                "X-Request-ID": "req-7f3a",
                "X-Forwarded-For": "198.51.100.9, 10.0.0.7",
                "User-Agent": "curl/8.5",
                "X-User": "ada",
            },
        )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-7f3a"
    assert response.json()["id"]
    await asyncio.gather(*app.state.spawned)

    rows = await stored_rows(settings, database_url, 3)
    assert [row["action"] for row in rows] == [
        "settings.background_checked",  # a BackgroundTasks task, after the response
        "settings.task_checked",  # a task the handler started
        "settings.updated",
    ]
    for row in rows:
        assert dict(row) | {"action": None} == {
            "action": None,
            "request_id": "req-7f3a",
            "ip": "198.51.100.9",  # the client the trusted proxy names
            "user_agent": "curl/8.5",
            "method": "POST",
            "path": "/settings",  # never the query string and its token
            "actor_id": "ada",  # set in a sync dependency, in a thread-pool thread
            "actor_type": "user",
            "actor_name": "Ada",
        }


async def test_a_stranger_cannot_choose_the_ip_it_is_recorded_under(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    app = make_app(audit, trusted_proxies=["10.0.0.0/8"])
    async with http(app, STRANGER_PEER) as client:
        response = await client.get(
            "/plain", headers={"X-Forwarded-For": "10.0.0.1", "X-Real-IP": "127.0.0.1"}
        )
    assert response.status_code == 200
    (row,) = await stored_rows(settings, database_url, 1)
    assert row["ip"] == "203.0.113.50"
    assert row["actor_id"] is None


@pytest.mark.parametrize(
    "header",
    [None, b"", b"x" * 129, b"evil\r\nSet-Cookie: a=b", "naïve".encode()],
    ids=["absent", "empty", "too-long", "header-injection", "non-ascii"],
)
async def test_a_missing_or_unfit_request_id_is_replaced_by_a_new_one_and_echoed(
    audit: AuditClient, header: bytes | None
) -> None:
    app = make_app(audit, trusted_proxies=[])
    headers = {} if header is None else {"X-Request-ID": header}
    async with http(app, STRANGER_PEER) as client:
        first = await client.get("/plain", headers=headers)
        second = await client.get("/plain", headers=headers)
    for response in (first, second):
        echoed = response.headers["X-Request-ID"]
        assert echoed == response.json()["request_id"]
        assert len(echoed) == 32 and echoed.isalnum()
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_the_actor_resolver_reads_the_user_that_auth_middleware_put_in_the_scope(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
            return AuthCredentials(["authenticated"]), SimpleUser(conn.headers["X-User"])

    def scope_user(scope: Any) -> Actor | None:
        user = scope.get("user")
        return Actor(id=user.username, type="user") if user and user.is_authenticated else None

    app = make_app(audit, trusted_proxies=[], actor_resolver=scope_user)
    # Added last, so it runs after (inside) the audit middleware: the resolver is asked at
    # the first capture, when the scope has its user.
    app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())
    async with http(app, STRANGER_PEER) as client:
        assert (await client.get("/plain", headers={"X-User": "grace"})).status_code == 200
    (row,) = await stored_rows(settings, database_url, 1)
    assert (row["actor_id"], row["actor_type"]) == ("grace", "user")


async def test_a_failing_actor_resolver_costs_the_actor_not_the_request(
    audit: AuditClient, settings: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(scope: Any) -> Actor | None:
        raise KeyError("user")

    app = make_app(audit, trusted_proxies=[], actor_resolver=broken)
    async with http(app, STRANGER_PEER) as client:
        assert (await client.get("/plain")).status_code == 200
    (row,) = await stored_rows(settings, database_url, 1)
    assert row["actor_id"] is None
    assert "audit actor resolver failed" in caplog.text


async def test_concurrent_requests_never_see_each_others_context(audit: AuditClient) -> None:
    app = make_app(audit, trusted_proxies=[])
    seen: list[tuple[str, str | None]] = []

    @app.get("/who")
    async def who(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
        await asyncio.sleep(0.01)  # interleave with the other requests
        context = audit_context.get()
        assert context is not None
        actor = context.current_actor()
        seen.append((user, actor.id if actor else None))
        return {"request_id": context.request_id or ""}

    async with http(app, STRANGER_PEER) as client:
        users = [f"u{n}" if n % 2 else "" for n in range(20)]
        responses = await asyncio.gather(
            *(client.get("/who", headers={"X-User": user}) for user in users)
        )
    assert sorted(seen) == sorted((user, user or None) for user in users)
    assert len({r.headers["X-Request-ID"] for r in responses}) == len(users)
    assert audit_context.get() is None  # nothing left behind in the caller


async def test_trusted_proxies_default_to_the_environment(
    audit: AuditClient, settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITQ_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    app = make_app(audit)
    async with http(app, PROXY_PEER) as client:
        response = await client.get("/plain", headers={"X-Forwarded-For": "198.51.100.23"})
    assert response.status_code == 200
    (row,) = await stored_rows(settings, database_url, 1)
    assert row["ip"] == "198.51.100.23"


def test_a_bad_trusted_proxy_in_the_environment_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.errors import ConfigError

    monkeypatch.setenv("AUDITQ_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match=r"AUDITQ_TRUSTED_PROXIES.*not-a-network"):
        AuditContextMiddleware(FastAPI())


async def test_a_lifespan_scope_passes_through_without_a_context() -> None:
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], audit_context.get()))

    await AuditContextMiddleware(app, trusted_proxies=[])({"type": "lifespan"}, None, None)
    assert seen == [("lifespan", None)]


async def test_the_context_is_the_request_as_it_came_in_though_the_app_rewrites_the_scope() -> None:
    seen: list[tuple[str | None, str | None, str | None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # A router inside rewrites the scope before the endpoint's first capture.
        scope["path"], scope["method"], scope["client"] = "/inner", "GET", ("203.0.113.9", 1)
        context = audit_context.get()
        assert context is not None
        seen.append((context.path, context.method, context.ip))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(
        app=AuditContextMiddleware(app, trusted_proxies=[]), client=STRANGER_PEER
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://service.test") as client:
        response = await client.put("/outer/7")
    assert response.status_code == 204 and len(response.headers["X-Request-ID"]) == 32
    assert seen == [("/outer/7", "PUT", "203.0.113.50")]

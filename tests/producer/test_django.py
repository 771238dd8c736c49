"""The Django middleware under Django's own test clients, sync and async: what gets stored."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import django
import pytest
from django.conf import settings as django_settings
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path

from service.client import AuditClient, AuditEvent
from service.events import Actor
from service.producer.background import capture_sync, start_client, stop_client
from service.producer.context import set_actor
from service.settings import Settings
from tests.support.polling import wait_for
from tests.support.worker import running_worker

_DB_DIR = tempfile.mkdtemp(prefix="auditq-django-")

if not django_settings.configured:
    django_settings.configure(
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "service.producer.django.AuditContextMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(_DB_DIR) / "app.sqlite3"),
            }
        },
        AUDITQ_TRUSTED_PROXIES=["127.0.0.1"],  # the test client's peer is the proxy
        USE_TZ=True,
    )
    django.setup()

_audit: dict[str, AuditClient] = {}


def sync_view(request: HttpRequest) -> JsonResponse:
    audit = _audit["client"]
    event_id = capture_sync(audit, AuditEvent(action="settings.updated"))
    audit.capture_nowait(AuditEvent(action="settings.viewed"))
    return JsonResponse({"id": event_id})


async def async_view(request: HttpRequest) -> JsonResponse:
    event_id = await _audit["client"].capture(AuditEvent(action="report.exported"))
    return JsonResponse({"id": event_id})


def api_key_view(request: HttpRequest) -> JsonResponse:
    # An app's own auth (an API key here) names the actor itself.
    set_actor(Actor(id="svc-billing", type="api_token"))
    _audit["client"].capture_nowait(AuditEvent(action="invoice.created"))
    return JsonResponse({})


urlpatterns = [
    path("settings", sync_view),
    path("report", async_view),
    path("invoices", api_key_view),
]


@pytest.fixture(scope="module")
def django_db() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@pytest.fixture
def audit(settings: Settings, django_db: None) -> Iterator[AuditClient]:
    client = start_client(settings)
    _audit["client"] = client
    yield client
    stop_client(client)


@pytest.fixture
def ada(django_db: None) -> Any:
    from django.contrib.auth.models import User

    user, _ = User.objects.get_or_create(username="ada", defaults={"email": "ada@example.org"})
    return user


async def stored(settings: Settings, database_url: str, count: int) -> list[dict[str, Any]]:
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
        rows = await conn.fetch(
            "SELECT action, request_id, host(ip) AS ip, user_agent, method, path,"
            " actor_id, actor_type, actor_name, actor_email FROM audit_log ORDER BY action"
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def sync_post(user: Any, url: str, **headers: str) -> Any:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client.post(url, headers=headers)


async def test_a_sync_view_stores_its_events_with_the_logged_in_user_and_request(
    audit: AuditClient, ada: Any, settings: Settings, database_url: str
) -> None:
    response = await asyncio.to_thread(
        sync_post,
        ada,
        "/settings?password=hunter2",
        **{"X-Request-ID": "dj-1", "X-Forwarded-For": "198.51.100.4", "User-Agent": "ua/1"},
    )
    assert response.status_code == 200
    assert response["X-Request-ID"] == "dj-1"
    assert response.json()["id"]
    rows = await stored(settings, database_url, 2)
    expected = {
        "request_id": "dj-1",
        "ip": "198.51.100.4",
        "user_agent": "ua/1",
        "method": "POST",
        "path": "/settings",
        "actor_id": str(ada.pk),
        "actor_type": "user",
        "actor_name": "ada",
        "actor_email": "ada@example.org",
    }
    assert rows == [
        {"action": "settings.updated", **expected},
        {"action": "settings.viewed", **expected},
    ]


async def test_an_async_view_under_the_async_stack_stores_its_event_with_context(
    audit: AuditClient, ada: Any, settings: Settings, database_url: str
) -> None:
    client = AsyncClient()
    await client.aforce_login(ada)
    response = await client.get("/report", headers={"User-Agent": "ua/2"})
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    (row,) = await stored(settings, database_url, 1)
    assert row == {
        "action": "report.exported",
        "request_id": request_id,
        "ip": "127.0.0.1",
        "user_agent": "ua/2",
        "method": "GET",
        "path": "/report",
        "actor_id": str(ada.pk),
        "actor_type": "user",
        "actor_name": "ada",
        "actor_email": "ada@example.org",
    }


async def test_an_async_view_under_the_sync_stack_keeps_the_context(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    response = await asyncio.to_thread(sync_post, None, "/report", **{"X-Request-ID": "dj-3"})
    assert response.status_code == 200
    (row,) = await stored(settings, database_url, 1)
    assert (row["request_id"], row["path"], row["actor_id"]) == ("dj-3", "/report", None)


async def test_the_app_sets_the_actor_of_its_own_auth(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    response = await asyncio.to_thread(sync_post, None, "/invoices")
    assert response.status_code == 200
    (row,) = await stored(settings, database_url, 1)
    assert (row["actor_id"], row["actor_type"]) == ("svc-billing", "api_token")


async def test_an_untrusted_peer_cannot_choose_its_recorded_ip(
    audit: AuditClient, settings: Settings, database_url: str
) -> None:
    def from_stranger() -> Any:
        return Client(REMOTE_ADDR="203.0.113.8").post(
            "/settings", headers={"X-Forwarded-For": "10.0.0.1", "X-Real-IP": "10.0.0.2"}
        )

    assert (await asyncio.to_thread(from_stranger)).status_code == 200
    rows = await stored(settings, database_url, 2)
    assert {row["ip"] for row in rows} == {"203.0.113.8"}

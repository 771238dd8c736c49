"""AUDITQ_REDIS_URL: the forms read, the errors given, and WAIT for replicas at capture."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.connections import parse_redis_url, redact_url, redis_client
from service.errors import ConfigError
from service.events import AuditEvent
from service.producer.client import FAILURE_PREFIX, AuditClient
from service.settings import Settings
from tests.support.queue import queued_events
from tests.support.servers import Servers
from workers.arq_redis import arq_settings


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db", "ssl"),
    [
        ("redis+sentinel://10.0.0.1:26379/mymaster", [("10.0.0.1", 26379)], "mymaster", 0, False),
        (
            "redis+sentinel://a:1,b:2,c/audit-q/3",
            [("a", 1), ("b", 2), ("c", 26379)],
            "audit-q",
            3,
            False,
        ),
        (
            "rediss+sentinel://s.example:5000/prod.main/",
            [("s.example", 5000)],
            "prod.main",
            0,
            True,
        ),
        (
            "redis+sentinel://[::1]:26380,[fe80::2]/svc",
            [("::1", 26380), ("fe80::2", 26379)],
            "svc",
            0,
            False,
        ),
        ("REDIS+SENTINEL://h/svc", [("h", 26379)], "svc", 0, False),
    ],
)
def test_sentinel_urls(
    url: str, sentinels: list[tuple[str, int]], service: str, db: int, ssl: bool
) -> None:
    target = parse_redis_url(url)
    assert target.is_sentinel
    assert list(target.sentinels) == sentinels
    assert (target.service_name, target.db, target.ssl) == (service, db, ssl)
    assert target.username is None and target.password is None


@pytest.mark.unit
def test_sentinel_credentials_are_read_and_never_shown() -> None:
    target = parse_redis_url("redis+sentinel://app:s%40cret@h1:1,h2:2/svc/1")
    assert (target.username, target.password) == ("app", "s@cret")
    assert "s%40cret" not in repr(target) and "s@cret" not in repr(target)
    assert target.display == "redis+sentinel://***@h1:1,h2:2/svc/1"
    only_password = parse_redis_url("redis+sentinel://:pw@h/svc")
    assert (only_password.username, only_password.password) == (None, "pw")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "db", "ssl"),
    [
        ("redis://127.0.0.1:6379/0", 0, False),
        ("redis://user:pw@cache:6380/5", 5, False),
        ("rediss://cache.example/2", 2, True),
        ("unix:///run/redis.sock", 0, False),
    ],
)
def test_direct_urls(url: str, db: int, ssl: bool) -> None:
    target = parse_redis_url(url)
    assert not target.is_sentinel
    assert (target.db, target.ssl, target.url) == (db, ssl, url)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379/0", "must start with redis://"),
        ("cache:6379", "must start with redis://"),
        ("redis+sentinel://h:26379", "must end in /SERVICE_NAME"),
        ("redis+sentinel://h:26379/", "must end in /SERVICE_NAME"),
        ("redis+sentinel://h:26379/svc/0/extra", "must end in /SERVICE_NAME"),
        ("redis+sentinel://h:26379/bad name", "must end in /SERVICE_NAME"),
        ("redis+sentinel://h:26379/svc/x", "the database must be a number"),
        ("redis+sentinel://h:99999/svc", "is not a Sentinel HOST:PORT"),
        ("redis+sentinel://h:1,,h:2/svc", "is not a Sentinel HOST:PORT"),
        ("redis+sentinel:///svc", "is not a Sentinel HOST:PORT"),
        ("redis+sentinel://h:port/svc", "is not a Sentinel HOST:PORT"),
        ("redis+sentinel://bad host:1/svc", "is not a Sentinel HOST:PORT"),
        ("redis+sentinel://h/svc?db=1", "takes no query options"),
        ("redis://h:notaport/0", "is malformed"),
        ("redis:///0", "names no host"),
        ("redis://h/zero", "the database must be a number"),
        ("unix://", "names no socket path"),
    ],
)
def test_bad_urls_are_one_clear_sentence(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        parse_redis_url(url)
    assert "\n" not in str(caught.value)


@pytest.mark.unit
def test_a_bad_url_never_shows_its_password() -> None:
    for url in ("redis+sentinel://u:hunter2@h:1/bad name", "redis://u:hunter2@h:x/0"):
        with pytest.raises(ConfigError) as caught:
            parse_redis_url(url)
        assert "hunter2" not in str(caught.value)
    assert redact_url("rediss://u:hunter2@h:1/0") == "rediss://***@h:1/0"


@pytest.mark.unit
def test_settings_reject_a_bad_url_when_read() -> None:
    with pytest.raises(ConfigError, match="SERVICE_NAME"):
        Settings.from_env({"AUDITQ_REDIS_URL": "redis+sentinel://h:1"}, published=False)
    settings = Settings.from_env(
        {"AUDITQ_REDIS_URL": "redis+sentinel://h:1/svc", "AUDITQ_REDIS_WAIT_REPLICAS": "2"},
        published=False,
    )
    assert settings.redis_wait_replicas == 2
    with pytest.raises(ConfigError, match="AUDITQ_REDIS_WAIT_REPLICAS"):
        Settings.from_env({"AUDITQ_REDIS_WAIT_REPLICAS": "-1"}, published=False)


@pytest.mark.unit
def test_arq_settings_for_sentinel() -> None:
    settings = arq_settings("rediss+sentinel://:pw@a:1,b:2/svc/4")
    assert settings.sentinel and settings.sentinel_master == "svc"
    assert settings.host == [("a", 1), ("b", 2)]
    assert (settings.database, settings.password, settings.ssl) == (4, "pw", True)
    direct = arq_settings("redis://h:6390/2")
    assert (direct.sentinel, direct.host, direct.port, direct.database) == (False, "h", 6390, 2)


@pytest.mark.unit
async def test_a_sentinel_client_is_made_without_io() -> None:
    client: aioredis.Redis = redis_client("redis+sentinel://127.0.0.1:1/svc", timeout=0.1)
    assert "svc" in repr(client.connection_pool)
    await client.aclose()


def events_named(action: str) -> AuditEvent:
    return AuditEvent(action=action)


async def test_capture_waits_for_a_replica_and_refuses_what_none_confirmed(
    servers: Servers,
    queue_name: str,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The suite's Valkey has no replica: WAIT 1 is never confirmed, so capture says None."""
    client = AuditClient.from_url(servers.redis_url, queue=queue_name, wait_replicas=1)
    with caplog.at_level(logging.ERROR, logger="auditq"):
        assert await client.capture(events_named("auth.login")) is None
    await client.aclose()
    line = next(r.getMessage() for r in caplog.records if r.name == "auditq")
    assert line.startswith(FAILURE_PREFIX) and "NotReplicated" in line
    # The primary has it (it may well be stored): only the promise was not given.
    assert [e["action"] for e in await queued_events(redis, queue_name)] == ["auth.login"]


async def test_what_no_replica_confirmed_is_spooled_and_kept(
    servers: Servers, queue_name: str, tmp_path: Path
) -> None:
    client = AuditClient.from_url(
        servers.redis_url, queue=queue_name, wait_replicas=1, spool_dir=tmp_path
    )
    event_id = await client.capture(events_named("auth.login"))
    assert event_id is not None
    assert client.spooled == 1
    await client.aclose()
    # Not deleted: the replay cannot have been confirmed by a replica either.
    assert event_id.encode() in spooled_bytes(tmp_path)


def spooled_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.glob("seg-*.jsonl"))


async def test_without_wait_nothing_changes(servers: Servers, queue_name: str) -> None:
    async with AuditClient.from_url(servers.redis_url, queue=queue_name) as client:
        assert await client.capture(events_named("auth.login")) is not None

"""The producer against a real Valkey: ids, batching, bounded failure, threads, closing."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from service import events
from service.events import Actor, Entity, RequestInfo, new_event_id
from service.producer.client import FAILURE_PREFIX, AuditClient, AuditEvent
from service.queue.jobs import deserialize_job
from service.settings import Settings
from service.store import db
from tests.faults.proxy import TcpProxy
from tests.support.polling import wait_for
from tests.support.producer import CAPTURE_BOUND
from tests.support.queue import queued_events
from tests.support.servers import Servers
from tests.support.worker import running_worker

FAILURE_KEYS = [
    "action",
    "entityType",
    "entityId",
    "userId",
    "requestId",
    "errorName",
    "errorMessage",
]


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "auditq" and r.levelno == logging.ERROR]


def parse_failure(record: logging.LogRecord) -> dict[str, Any]:
    """Check the failure line's fixed shape and return its payload."""
    text = record.getMessage()
    assert text.startswith(FAILURE_PREFIX)
    payload: dict[str, Any] = json.loads(text[len(FAILURE_PREFIX) :])
    assert list(payload) == FAILURE_KEYS
    assert record.exc_info is None
    assert "Traceback" not in logging.Formatter().format(record)
    assert record.audit_failure == payload  # type: ignore[attr-defined]
    return payload


@pytest.fixture
async def cleanup(redis: aioredis.Redis, queue_name: str) -> AsyncIterator[None]:
    """Delete this test's queue and jobs afterwards: the server is shared."""
    yield
    task_ids = await redis.zrange(queue_name, 0, -1)
    if task_ids:
        await redis.delete(*(b"arq:job:" + task_id for task_id in task_ids))
    await redis.delete(queue_name)


@pytest.fixture
async def client(servers: Servers, queue_name: str, cleanup: None) -> AsyncIterator[AuditClient]:
    client = AuditClient.from_url(servers.redis_url, queue=queue_name)
    yield client
    await client.aclose()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A port that accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_capture_returns_the_id_and_enqueues_one_job(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    before = await redis.zcard(queue_name)
    event_id = await client.capture(
        AuditEvent(
            action="config.updated",
            actor=Actor(id="u-1", type="user"),
            entity=Entity(type="project", id="p-9"),
            metadata={"password": "hunter2", "nested": {"api_key": "k-123"}, "plan": "pro"},
        )
    )
    assert isinstance(event_id, str)
    assert await redis.zcard(queue_name) == before + 1
    (task_id,) = await redis.zrange(queue_name, 0, -1)
    job = deserialize_job(await redis.get(b"arq:job:" + task_id))
    assert job["f"] == "store_events"
    (stored,) = json.loads(job["a"][0])
    assert stored["id"] == event_id
    assert stored["category"] == "config"
    assert stored["presentation"] == {"code": "audit.config.updated"}
    assert stored["ts"].endswith("Z")
    assert stored["metadata"] == {
        "password": "[REDACTED]",
        "nested": {"api_key": "[REDACTED]"},
        "plan": "pro",
    }
    assert client.sent == 1 and client.failed == 0


async def test_from_settings_uses_the_queue_and_options(
    servers: Servers, redis: aioredis.Redis, queue_name: str, cleanup: None
) -> None:
    settings = Settings(
        redis_url=servers.redis_url, queue=queue_name, redact_extra_keys=frozenset({"pin"})
    )
    client = AuditClient.from_settings(settings)
    try:
        event_id = await client.capture(AuditEvent(action="auth.login", metadata={"PIN": "1234"}))
    finally:
        await client.aclose()
    (stored,) = await queued_events(redis, queue_name)
    assert stored["id"] == event_id
    assert stored["metadata"] == {"PIN": "[REDACTED]"}


async def test_nowait_from_concurrent_tasks_is_batched_and_complete(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    per_task = 400

    async def produce(worker: int) -> None:
        for i in range(per_task):
            client.capture_nowait(AuditEvent(action="doc.viewed", metadata={"w": worker, "i": i}))
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the other producers and the sender run

    await asyncio.gather(*(produce(worker) for worker in range(5)))
    await wait_for(lambda: client.sent == 5 * per_task, what="every event to be sent")
    events = await queued_events(redis, queue_name)
    assert len({event["id"] for event in events}) == len(events) == 5 * per_task
    jobs = await redis.zcard(queue_name)
    assert jobs <= 5 * per_task // 50, f"{jobs} jobs for {5 * per_task} events: not batched"
    assert client.failed == client.dropped == 0


async def test_concurrent_captures_share_jobs(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    results = await asyncio.gather(
        *(client.capture(AuditEvent(action="doc.viewed")) for _ in range(300))
    )
    assert all(results) and len(set(results)) == 300
    events = await queued_events(redis, queue_name)
    assert {event["id"] for event in events} == set(results)
    # Group commit: captures that arrive while a send is in flight go together in the next.
    assert await redis.zcard(queue_name) < 300 // 10


@pytest.mark.unit
@pytest.mark.parametrize("password", [None, "hunter2secret"])
async def test_unreachable_redis_returns_none_quickly_with_one_failure_line(
    closed_port: int, caplog: pytest.LogCaptureFixture, password: str | None
) -> None:
    auth = f":{password}@" if password else ""
    client = AuditClient.from_url(f"redis://{auth}127.0.0.1:{closed_port}/0", queue="q")
    caplog.set_level(logging.ERROR, logger="auditq")
    try:
        started = time.monotonic()
        result = await client.capture(
            AuditEvent(
                action="auth.login",
                actor=Actor(id="u-7", type="user"),
                entity=Entity(type="session", id="s-1"),
                request=RequestInfo(id="req-1"),
            )
        )
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert result is None
    assert elapsed < CAPTURE_BOUND
    (record,) = failure_lines(caplog)
    payload = parse_failure(record)
    assert payload["action"] == "auth.login"
    assert payload["entityType"] == "session" and payload["entityId"] == "s-1"
    assert payload["userId"] == "u-7" and payload["requestId"] == "req-1"
    assert payload["errorName"] == "ConnectionError"
    assert "hunter2secret" not in caplog.text
    assert client.failed == 1


@pytest.mark.unit
async def test_blackholed_redis_times_out_within_the_bound(
    blackhole_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = AuditClient.from_url(f"redis://127.0.0.1:{blackhole_port}/0", queue="q")
    caplog.set_level(logging.ERROR, logger="auditq")
    try:
        started = time.monotonic()
        result = await client.capture(AuditEvent(action="auth.login"))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert result is None
    assert elapsed < CAPTURE_BOUND
    (record,) = failure_lines(caplog)
    # The batch went out to a server that took the connection: it might yet run it.
    assert parse_failure(record)["errorName"] == "DeliveryUncertain"
    assert client.sent == 0 and client.uncertain == 1 and client.failed == 0


@pytest.mark.parametrize(
    ("bad", "action"),
    [
        ({"action": "auth.login"}, "auth.login"),
        (AuditEvent(action="Not A Valid Action"), "Not A Valid Action"),
        (AuditEvent(action="file.uploaded", metadata={"blob": "x" * 70_000}), "file.uploaded"),
        (AuditEvent(action="auth.login", request=RequestInfo(status=42)), "auth.login"),
        # Redacted, then validated once: by the redaction's own decode.
        (
            AuditEvent(
                action="auth.login", request=RequestInfo(status=42), metadata={"token": "t0k"}
            ),
            "auth.login",
        ),
    ],
    ids=["dict", "invalid-action", "oversized", "invalid-field", "invalid-field-redacted"],
)
async def test_capture_never_raises_for_bad_input(
    client: AuditClient, caplog: pytest.LogCaptureFixture, bad: Any, action: str
) -> None:
    caplog.set_level(logging.ERROR, logger="auditq")
    assert await client.capture(bad) is None
    client.capture_nowait(bad)
    first, second = failure_lines(caplog)
    for record in (first, second):
        payload = parse_failure(record)
        assert payload["errorName"] == "InvalidEvent"
        assert payload["action"] == action
    assert client.failed == 2 and client.sent == 0


@pytest.mark.unit
async def test_an_event_is_decoded_once_on_its_way_into_the_buffer(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    # Validating is a decode, the costliest step after redaction: an event the redaction
    # changed was decoded by it, and must not be decoded again; one it left must be.
    decoded: list[bytes] = []
    decoder = events._decoder

    class CountingDecoder:
        def decode(self, data: bytes) -> AuditEvent:
            decoded.append(data)
            return decoder.decode(data)

    monkeypatch.setattr(events, "_decoder", CountingDecoder())
    client = AuditClient.from_url(f"redis://127.0.0.1:{closed_port}/0", queue="q")
    try:
        client.capture_nowait(AuditEvent(action="auth.login", metadata={"password": "hunter2"}))
        client.capture_nowait(AuditEvent(action="auth.login", metadata={"note": "plain"}))
        buffered = [item[0] for item in client._buffer]
    finally:
        client._buffer.clear()  # nothing to send: the port is closed
        await client.aclose(timeout_s=0.01)
    assert decoded == buffered
    assert b"hunter2" not in buffered[0] and b"[REDACTED]" in buffered[0]


async def test_capture_after_aclose_returns_none(
    client: AuditClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert await client.capture(AuditEvent(action="auth.login")) is not None
    await client.aclose()
    caplog.set_level(logging.ERROR, logger="auditq")
    assert await client.capture(AuditEvent(action="auth.logout")) is None
    client.capture_nowait(AuditEvent(action="auth.logout"))
    records = failure_lines(caplog)
    assert [parse_failure(r)["errorName"] for r in records] == ["ClientClosed", "ClientClosed"]


@pytest.mark.unit
async def test_nowait_full_buffer_drops_and_counts(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue="q", buffer_max_events=5
    )
    caplog.set_level(logging.ERROR, logger="auditq")
    started = time.monotonic()
    for i in range(50):
        client.capture_nowait(AuditEvent(action="doc.viewed", metadata={"i": i}))  # never raises
    elapsed = time.monotonic() - started
    assert client.dropped == 45
    names = [parse_failure(r)["errorName"] for r in failure_lines(caplog)]
    assert names == ["BufferFull"] * 45
    await client.aclose()
    # The five buffered events failed on the dead Redis, each reported once.
    assert client.failed == 5 and client.sent == 0
    names = [parse_failure(r)["errorName"] for r in failure_lines(caplog)]
    assert names == ["BufferFull"] * 45 + ["ConnectionError"] * 5
    assert elapsed < 2.0  # seconds: a safety net against a call that blocks, not a speed claim


async def test_capture_from_a_thread_with_its_own_loop(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    assert await client.capture(AuditEvent(action="auth.login")) is not None  # binds our loop
    thread_loop_ids: list[str | None] = []

    def in_thread() -> None:
        thread_loop_ids.append(asyncio.run(client.capture(AuditEvent(action="report.exported"))))

    await asyncio.to_thread(in_thread)
    (event_id,) = thread_loop_ids
    assert event_id is not None
    ids = {event["id"] for event in await queued_events(redis, queue_name)}
    assert event_id in ids


async def test_capture_nowait_from_a_plain_thread(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    assert await client.capture(AuditEvent(action="auth.login")) is not None  # binds our loop
    thread = threading.Thread(
        target=lambda: [client.capture_nowait(AuditEvent(action="doc.viewed")) for _ in range(50)]
    )
    thread.start()
    await wait_for(lambda: not thread.is_alive(), what="the thread to finish")
    await wait_for(lambda: client.sent == 51, what="the thread's events to be sent")
    assert len(await queued_events(redis, queue_name)) == 51


async def test_aclose_flushes_the_buffer(
    servers: Servers, redis: aioredis.Redis, queue_name: str, cleanup: None
) -> None:
    # A long linger: only aclose can be what sends these.
    client = AuditClient.from_url(servers.redis_url, queue=queue_name, flush_interval_s=60.0)
    for i in range(100):
        client.capture_nowait(AuditEvent(action="doc.viewed", metadata={"i": i}))
    await client.aclose()
    events = await queued_events(redis, queue_name)
    assert len({event["id"] for event in events}) == 100
    assert client.sent == 100


async def test_redis_restart_is_survived_by_the_retry(
    client: AuditClient, redis: aioredis.Redis, queue_name: str
) -> None:
    assert await client.capture(AuditEvent(action="auth.login")) is not None
    # Kill the client's one pooled connection, as a server restart would; found by a name
    # so no other connection on a shared server is touched.
    name = f"auditq-{queue_name}"
    await client._redis.client_setname(name)
    (victim,) = [c for c in await redis.client_list() if c["name"] == name]
    assert await redis.client_kill_filter(_id=victim["id"]) == 1
    assert await client.capture(AuditEvent(action="auth.logout")) is not None
    assert client.failed == 0 and client.sent == 2


@pytest.fixture
async def slow_redis(servers: Servers) -> AsyncIterator[TcpProxy]:
    """The suite's Redis behind a proxy whose `reply_delay` makes its answers late."""
    target = urlsplit(servers.redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379, target.password)
    await proxy.start()
    yield proxy
    await proxy.close()


def _named_event() -> AuditEvent:
    """An event whose entity id is its own id, so its failure line names it."""
    event_id = new_event_id()
    return AuditEvent(id=event_id, action="invoice.paid", entity=Entity(type="i", id=str(event_id)))


async def test_capture_timing_out_while_its_batch_is_on_the_wire_is_uncertain_and_arrives(
    slow_redis: TcpProxy,
    settings: Settings,
    redis: aioredis.Redis,
    queue_name: str,
    database_url: str,
    cleanup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="auditq")
    client = AuditClient.from_url(slow_redis.url(), queue=queue_name)
    on_wire, waiting = _named_event(), _named_event()
    try:
        assert await client.capture(AuditEvent(action="auth.login")) is not None  # connected
        slow_redis.reply_delay = 0.6  # seconds: Redis runs the script at once, answers late
        sent = asyncio.create_task(client.capture(on_wire))
        await asyncio.sleep(0)  # the capture runs up to its wait: its event is buffered
        assert client._buffer
        await wait_for(lambda: not client._buffer, what="the sender took the first batch")
        held = asyncio.create_task(client.capture(waiting))  # behind it, in the buffer
        started = time.monotonic()
        assert await sent is None and await held is None
        assert time.monotonic() - started < CAPTURE_BOUND
        slow_redis.reply_delay = 0.0
        # The late reply behind which a new one would queue on the same connection.
        await wait_for(lambda: slow_redis.held == 0, what="the late replies were delivered")
        # Sent after both, in order: once it is queued, the sender is done with the others.
        assert await client.capture(AuditEvent(action="auth.logout")) is not None
    finally:
        await client.aclose()

    lines = {p["entityId"]: p for p in map(parse_failure, failure_lines(caplog))}
    assert lines.keys() == {str(on_wire.id), str(waiting.id)}
    assert lines[str(on_wire.id)]["errorName"] == "DeliveryUncertain"
    assert str(on_wire.id) in lines[str(on_wire.id)]["errorMessage"]
    assert lines[str(waiting.id)]["errorName"] == "TimeoutError"
    assert client.uncertain == 1 and client.failed == 1
    queued = [event["id"] for event in await queued_events(redis, queue_name)]
    assert str(on_wire.id) in queued  # "it may still be stored": it is on its way
    assert str(waiting.id) not in queued  # a plain failure still means never sent

    conn = await db.connect(database_url)
    try:

        async def three_stored() -> bool:
            n: int = await conn.fetchval("SELECT count(DISTINCT id) FROM audit_log")
            return n == 3

        async with running_worker(settings):
            await wait_for(three_stored)
        rows = await conn.fetchval("SELECT count(*) FROM audit_log WHERE id = $1", on_wire.id)
    finally:
        await conn.close()
    assert rows == 1  # delivered more than once (redis-py resent it), stored once

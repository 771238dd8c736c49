"""The client's spooler on its own: it knows the client only through the enqueue and failure
functions it is given, and owns its spool, replay task and counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from service.events import AuditEvent, Entity, finalize
from service.producer.client import AuditClient
from service.producer.failures import SpoolFull
from service.producer.spool import Spool
from service.producer.spooler import Item, Spooler
from tests.support.polling import wait_for

pytestmark = pytest.mark.unit


def items(start: int, stop: int) -> list[Item]:
    """Finalized events as the client buffers them, each with a capture awaiting it."""
    batch: list[Item] = []
    for n in range(start, stop):
        event, data = finalize(AuditEvent(action="spool.test", entity=Entity(type="n", id=str(n))))
        batch.append((data, event, asyncio.get_running_loop().create_future()))
    return batch


class FakeRedis:
    """The two functions a spooler is given, over a Redis that answers only when told."""

    def __init__(self) -> None:
        self.answers = False
        self.jobs: list[tuple[bytes, str]] = []
        self.failures: list[tuple[list[Item], Exception]] = []

    async def enqueue(self, payload: bytes, task_id: str) -> None:
        if not self.answers:
            raise ConnectionError("Redis does not answer")
        self.jobs.append((payload, task_id))

    def fail(self, batch: Iterable[Item], exc: Exception) -> None:
        self.failures.append((list(batch), exc))

    async def ping(self) -> bool:
        if not self.answers:
            raise ConnectionError("Redis does not answer")
        return True


def spooler_on(spool: Spool, redis: FakeRedis) -> Spooler:
    return Spooler(spool, enqueue=redis.enqueue, fail=redis.fail, probe=redis.ping, timeout_s=1.0)


async def test_spooled_batches_are_replayed_in_order_through_the_given_enqueue(
    tmp_path: Path,
) -> None:
    redis = FakeRedis()
    spooler = spooler_on(Spool(tmp_path / "spool"), redis)
    try:
        spooler.start(ConnectionError("refused"))
        first, second = items(0, 3), items(3, 5)
        await spooler.append(first)
        await spooler.append(second)
        assert spooler.spooled == 5
        assert all(sent is not None and sent.done() for _, _, sent in first + second)
        assert spooler.spooling and not redis.jobs and spooler.replayed == 0

        redis.answers = True

        async def replayed() -> bool:
            return not spooler.spooling

        await wait_for(replayed)
        events = [e["entity"]["id"] for payload, _ in redis.jobs for e in json.loads(payload)]
        assert events == [str(n) for n in range(5)]
        assert all(task_id.startswith("spool-") for _, task_id in redis.jobs)
        assert spooler.replayed == 5
        assert not redis.failures
    finally:
        await spooler.aclose()
    assert not Spool(tmp_path / "spool").has_segments()


async def test_a_full_spool_reports_what_it_could_not_keep_through_the_given_fail(
    tmp_path: Path,
) -> None:
    redis = FakeRedis()
    batch = items(0, 3)
    spooler = spooler_on(Spool(tmp_path, max_bytes=len(batch[0][0]) + 1), redis)
    try:
        await spooler.append(batch)
        assert spooler.spooled == 1
        ((refused, error),) = redis.failures
        assert refused == batch[1:]
        assert isinstance(error, SpoolFull)
    finally:
        await spooler.aclose()


async def test_the_clients_counters_are_one_stats_object() -> None:
    client = AuditClient.from_url("redis://127.0.0.1:9/0")
    try:
        assert await client.capture(AuditEvent(action="not an action")) is None
        assert client.failed == client.stats.failed == 1
        assert client.sent == client.spooled == client.replayed == 0
    finally:
        await client.aclose(timeout_s=0.01)

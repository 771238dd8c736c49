"""The producer spool: durable segments on disk, and the client spooling and replaying them."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from service.events import Entity, finalize
from service.producer import spool as spool_module
from service.producer.client import FAILURE_PREFIX, AuditClient, AuditEvent
from service.producer.spool import Spool, SpoolError
from service.queue import dead_letter
from service.settings import Settings
from tests.faults.proxy import TcpProxy
from tests.support.admin_api import Tokens
from tests.support.polling import wait_for
from tests.support.producer import CAPTURE_BOUND
from tests.support.queue import queued_events, queued_jobs
from tests.support.servers import Servers
from tests.support.worker import count_rows, running_worker

# --- The spool on its own ----------------------------------------------------------------------


def lines(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"action": "a.b", "n": i}).encode() for i in range(start, start + n)]


@pytest.mark.unit
def test_append_then_replay_in_order_and_delete(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.append(lines(3)) == 3
    assert spool.append(lines(2, start=3)) == 2
    assert spool.closed_segments() == []  # the segment being written is not replayable
    spool.rotate()
    (path,) = spool.closed_segments()
    segment = spool.claim(path)
    assert segment is not None
    assert segment.lines == lines(5)
    segment.delete()
    segment.release()
    assert not spool.has_segments()
    assert spool.refresh() == 0


@pytest.mark.unit
def test_a_segment_being_written_is_locked_against_other_processes(tmp_path: Path) -> None:
    writer = Spool(tmp_path)
    other = Spool(tmp_path)
    writer.append(lines(1))
    (path,) = other.closed_segments()
    assert other.claim(path) is None  # the writer holds it
    writer.close()  # as a process exit would: the lock goes, the events stay
    segment = other.claim(path)
    assert segment is not None and segment.lines == lines(1)
    segment.release()


@pytest.mark.unit
def test_the_size_bound_takes_what_fits(tmp_path: Path) -> None:
    one = len(lines(1)[0]) + 1
    spool = Spool(tmp_path, max_bytes=one * 2 + 1)
    assert spool.append(lines(3)) == 2
    assert spool.append(lines(1)) == 0
    spool.rotate()
    # Another process sees the same directory: it is full for it too.
    assert Spool(tmp_path, max_bytes=one * 2 + 1).append(lines(1)) == 0


@pytest.mark.unit
def test_segments_roll_over_and_keep_their_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=64)
    for i in range(10):
        spool.append(lines(1, start=i))
    spool.close()
    got: list[bytes] = []
    for path in spool.closed_segments():
        segment = spool.claim(path)
        assert segment is not None
        got += segment.lines
        segment.release()
    assert got == lines(10)
    assert len(spool.closed_segments()) > 1


@pytest.mark.unit
def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(2))
    spool.close()
    (path,) = spool.closed_segments()
    with open(path, "ab") as file:
        file.write(b'{"action": "a.b", "n"')  # a crash in the middle of a write
    segment = spool.claim(path)
    assert segment is not None and segment.lines == lines(2)
    segment.release()


@pytest.mark.unit
def test_a_failed_write_leaves_no_torn_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(1))

    def disk_full(fd: int, data: memoryview) -> int:
        os.write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write", disk_full)
    with pytest.raises(SpoolError, match="No space left"):
        spool.append(lines(2, start=1))
    monkeypatch.undo()
    spool.append(lines(1, start=3))
    spool.close()
    (path,) = spool.closed_segments()
    segment = spool.claim(path)
    assert segment is not None and segment.lines == [lines(1)[0], lines(1, start=3)[0]]
    segment.release()


@pytest.mark.unit
def test_a_failed_write_whose_cut_back_fails_too_spoils_no_later_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk is full and cutting the torn bytes back fails as well: the next batch must not
    be fused onto the torn line (it would be unreadable, its events lost)."""
    spool = Spool(tmp_path)
    spool.append(lines(1))

    def disk_full(fd: int, data: memoryview) -> int:
        os.write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module, "_write", disk_full)
    monkeypatch.setattr(spool_module.os, "ftruncate", no_truncate)
    with pytest.raises(SpoolError, match="No space left"):
        spool.append(lines(2, start=1))
    monkeypatch.undo()
    spool.append(lines(1, start=3))
    spool.close()
    got = []
    for path in spool.closed_segments():
        segment = spool.claim(path)
        assert segment is not None
        got += segment.lines
        segment.release()
    assert got == [lines(1)[0], lines(1, start=3)[0]]


@pytest.mark.unit
def test_an_unusable_directory_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match=r"the spool at .*Not a directory"):
        Spool(tmp_path / "file" / "spool").append(lines(1))


@pytest.mark.unit
def test_batches_respect_both_limits() -> None:
    def counts(n: int, max_events: int, max_bytes: int) -> list[int]:
        parts = spool_module.replay_batches(
            "s", lines(n), max_events=max_events, max_bytes=max_bytes
        )
        return [b.count for b in parts]

    assert counts(7, 3, 10**6) == [3, 3, 1]
    assert counts(3, 10, 10) == [1, 1, 1]  # a lone event bigger than the bound still goes


@pytest.mark.unit
def test_settings_spool() -> None:
    default = Settings.from_env({}, published=False)
    assert default.spool_dir is None  # a library user opts in
    assert default.with_server_spool().spool_dir == Path(".auditq/spool")
    env = {"AUDITQ_SPOOL_DIR": "/var/spool/auditq", "AUDITQ_SPOOL_MAX_BYTES": "2097152"}
    custom = Settings.from_env(env, published=False)
    assert custom.spool_dir == Path("/var/spool/auditq") and custom.spool_max_bytes == 2097152
    assert custom.with_server_spool().spool_dir == Path("/var/spool/auditq")
    off = Settings.from_env({"AUDITQ_SPOOL_DIR": "off"}, published=False)
    assert off.with_server_spool().spool_dir is None


# --- The client with a spool -------------------------------------------------------------------


def event(i: int) -> AuditEvent:
    return AuditEvent(action="invoice.paid", entity=Entity(type="invoice", id=str(i)))


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
async def cleanup(redis: aioredis.Redis, queue_name: str) -> AsyncIterator[None]:
    yield
    task_ids = await redis.zrange(queue_name, 0, -1)
    if task_ids:
        await redis.delete(*(b"arq:job:" + task_id for task_id in task_ids))
    await redis.delete(queue_name)


async def queued_ids(redis: aioredis.Redis, queue: str) -> list[str]:
    return [e["id"] for e in await queued_events(redis, queue)]


async def enqueued_ms(redis: aioredis.Redis, queue: str) -> dict[str, int]:
    """When each queued event's job was enqueued (Redis time, ms)."""
    times = {}
    for job in await queued_jobs(redis, queue):
        for segment in job["a"]:  # a merged job: one argument per producer batch
            for item in json.loads(segment):
                times[item["id"]] = int(job["et"])
    return times


@pytest.mark.unit
@pytest.mark.parametrize("down", ["refused", "blackholed"])
async def test_capture_spools_within_the_bound_when_redis_is_down(
    tmp_path: Path, closed_port: int, blackhole_port: int, down: str
) -> None:
    port = closed_port if down == "refused" else blackhole_port
    client = AuditClient.from_url(f"redis://127.0.0.1:{port}/0", queue="q", spool_dir=tmp_path)
    try:
        started = time.monotonic()
        first = await client.capture(event(1))
        elapsed = time.monotonic() - started
        started = time.monotonic()
        second = await client.capture(event(2))  # spooling now: straight to disk
        elapsed_second = time.monotonic() - started
    finally:
        await client.aclose()
    assert first is not None and second is not None
    assert elapsed < CAPTURE_BOUND and elapsed_second < CAPTURE_BOUND
    assert client.spooled == 2 and client.failed == 0 and client.sent == 0
    spool = Spool(tmp_path)
    (path,) = spool.closed_segments()
    segment = spool.claim(path)
    assert segment is not None
    assert [json.loads(line)["id"] for line in segment.lines] == [first, second]
    segment.release()


async def test_a_new_client_replays_what_an_earlier_one_spooled(
    tmp_path: Path,
    closed_port: int,
    servers: Servers,
    queue_name: str,
    redis: aioredis.Redis,
    cleanup: None,
) -> None:
    down = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue=queue_name, spool_dir=tmp_path
    )
    ids = [await down.capture(event(i)) for i in range(3)]
    for i in range(3, 600):
        down.capture_nowait(event(i))
    await down.aclose()
    assert down.spooled == 600 and None not in ids

    async with AuditClient.from_url(servers.redis_url, queue=queue_name, spool_dir=tmp_path) as up:
        assert await up.capture(event(600)) is not None

        async def replayed() -> bool:
            return len(await queued_ids(redis, queue_name)) == 601

        await wait_for(replayed, within_s=30)
        assert up.replayed == 601  # the new event queued behind the spooled ones
    queued = await queued_ids(redis, queue_name)
    assert [q for q in queued if q in ids] == ids  # in the order they were captured
    assert len(set(queued)) == 601
    times = await enqueued_ms(redis, queue_name)
    assert max(times[i] for i in ids) <= min(times.values())  # spooled events went first
    assert Spool(tmp_path).closed_segments() == []


async def proxy_to(redis_url: str) -> TcpProxy:
    """A started TCP proxy in front of the Redis of `redis_url`."""
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    return proxy


def through(redis_url: str, proxy: TcpProxy) -> str:
    """`redis_url` (its password too: the embedded Valkey has one) by way of `proxy`."""
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{proxy.port}" if auth else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_spooled_events_are_replayed_when_redis_comes_back(
    tmp_path: Path, servers: Servers, queue_name: str, redis: aioredis.Redis, cleanup: None
) -> None:
    proxy = await proxy_to(servers.redis_url)
    client = AuditClient.from_url(
        through(servers.redis_url, proxy), queue=queue_name, spool_dir=tmp_path
    )
    try:
        assert await client.capture(event(0)) is not None
        await proxy.cut()
        during = [await client.capture(event(i)) for i in range(1, 20)]
        for i in range(20, 200):
            client.capture_nowait(event(i))
        assert None not in during
        await proxy.restore()
        after = await client.capture(event(200))
        assert after is not None

        async def all_queued() -> bool:
            return len(await queued_ids(redis, queue_name)) >= 201

        await wait_for(all_queued, within_s=30)
    finally:
        await client.aclose()
        await proxy.close()
    queued = await queued_ids(redis, queue_name)
    assert len(set(queued)) == 201
    assert client.failed == 0 and client.spooled >= 199
    times = await enqueued_ms(redis, queue_name)
    replayed = [times[i] for i in during if i]
    assert replayed == sorted(replayed)  # replayed in the order they were captured


@pytest.mark.unit
async def test_a_full_spool_drops_counts_and_logs_each_event(
    tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="auditq")
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue="q", spool_dir=tmp_path, spool_max_bytes=600
    )
    try:
        results = [await client.capture(event(i)) for i in range(4)]
    finally:
        await client.aclose()
    kept = [r for r in results if r is not None]
    assert 1 <= len(kept) < 4
    assert client.spool_dropped == 4 - len(kept)
    lines = [r.getMessage() for r in caplog.records if r.name == "auditq"]
    assert len(lines) == client.spool_dropped
    assert all('"errorName": "SpoolFull"' in line for line in lines)
    assert all(line.startswith(FAILURE_PREFIX) for line in lines)


@pytest.mark.unit
async def test_an_unwritable_spool_is_one_line_and_capture_returns_none(
    tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    caplog.set_level(logging.WARNING)
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue="q", spool_dir=tmp_path / "file" / "spool"
    )
    try:
        results = [await client.capture(event(i)) for i in range(3)]
        client.capture_nowait(event(3))
    finally:
        await client.aclose()
    assert results == [None, None, None]
    assert client.failed == 4
    spool_lines = [r for r in caplog.records if "spool cannot be written" in r.getMessage()]
    assert len(spool_lines) == 1
    assert "Traceback" not in caplog.text


@pytest.mark.unit
async def test_capture_is_bounded_while_spooling_under_load(
    tmp_path: Path, closed_port: int
) -> None:
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue="q", spool_dir=tmp_path
    )
    try:
        for i in range(5000):
            client.capture_nowait(event(i))
        started = time.monotonic()
        results = await asyncio.gather(*(client.capture(event(i)) for i in range(200)))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert elapsed < CAPTURE_BOUND
    # On a loaded machine a capture may hit its bound and say None; what said an id is
    # spooled, and a None may still have been spooled after its bound (never lost silently).
    accepted = sum(result is not None for result in results)
    assert 5000 + accepted <= client.spooled <= 5200


async def test_an_unusable_spool_does_not_hold_events_back_once_redis_is_back(
    tmp_path: Path, servers: Servers, queue_name: str, redis: aioredis.Redis, cleanup: None
) -> None:
    (tmp_path / "file").write_text("")
    proxy = await proxy_to(servers.redis_url)
    client = AuditClient.from_url(
        through(servers.redis_url, proxy), queue=queue_name, spool_dir=tmp_path / "file" / "spool"
    )
    try:
        await proxy.cut("refuse")
        assert await client.capture(event(1)) is None  # neither Redis nor the spool took it
        await proxy.restore()

        async def direct_again() -> bool:
            return await client.capture(event(2)) is not None

        await wait_for(direct_again, within_s=30, interval=0.2)
    finally:
        await client.aclose()
        await proxy.close()


async def test_http_ingest_spools_while_redis_is_down_and_says_202(
    settings: Settings, tokens: Tokens, closed_port: int, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from service.api.app import create_app

    down = dataclasses.replace(
        settings, redis_url=f"redis://127.0.0.1:{closed_port}/0", data_dir=tmp_path
    ).with_server_spool()  # as `auditq api` runs it
    events = [{"action": "auth.login"}, {"action": "auth.logout"}]
    async with TestClient(TestServer(create_app(down))) as api:
        async with api.post(
            "/api/v1/events", headers=tokens.ingest, json={"events": events}
        ) as response:
            assert response.status == 202, await response.text()
            accepted = (await response.json())["accepted"]
    assert len(accepted) == 2
    # The token's own spool: its segments replay with the provenance of that token.
    (token_spool,) = (tmp_path / "spool" / "http").iterdir()
    spool = Spool(token_spool)
    spooled = []
    for path in spool.closed_segments():
        segment = spool.claim(path)
        assert segment is not None
        spooled += [json.loads(line)["id"] for line in segment.lines]
        segment.release()
    assert spooled == accepted  # on disk, for the next process on this spool to deliver


# --- A spool that cannot be trusted, a damaged line, replay ids -------------------------------


@pytest.mark.unit
def test_a_new_spool_directory_is_made_0700(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool")
    spool.append(lines(1))
    assert (tmp_path / "a" / "spool").stat().st_mode & 0o777 == 0o700
    spool.close()


@pytest.mark.unit
@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o720])
async def test_a_spool_others_can_write_to_is_refused_in_one_line(
    tmp_path: Path, closed_port: int, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    # A segment planted by whoever could write there: it must never be replayed.
    (directory / "seg-00000000000000000001-1-aaaaaa.jsonl").write_bytes(lines(1)[0] + b"\n")
    directory.chmod(mode)
    with pytest.raises(spool_module.SpoolRefused, match="group or others"):
        Spool(directory).append(lines(1))
    with pytest.raises(spool_module.SpoolRefused):
        Spool(directory).closed_segments()

    caplog.set_level(logging.WARNING)
    # The point is the refusal, not the capture timeout: a long one, so a refused connect that a
    # loaded machine schedules late still fails as a refused connect.
    client = AuditClient.from_url(
        f"redis://127.0.0.1:{closed_port}/0", queue="q", spool_dir=directory, capture_timeout_s=5.0
    )
    try:
        results = [await client.capture(event(i)) for i in range(3)]
    finally:
        await client.aclose()
    assert results == [None, None, None]  # as without a spool: Redis is down
    assert client.spooled == 0 and client.failed == 3
    refusals = [r for r in caplog.records if "is refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert len(list(directory.iterdir())) == 1  # nothing written, the planted one untouched


@pytest.mark.unit
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_spool_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(spool_module.SpoolRefused, match="owned by uid 65534"):
        Spool(directory).append(lines(1))


@pytest.mark.unit
def test_segments_are_not_read_through_symlinks_or_as_fifos(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(lines(1)[0] + b"\n")
    (directory / "seg-00000000000000000001-1-aaaaaa.jsonl").symlink_to(outside)
    os.mkfifo(directory / "seg-00000000000000000002-1-bbbbbb.jsonl")
    spool = Spool(directory)
    spool.append(lines(1, start=5))
    spool.rotate()
    claimed = [spool.claim(path) for path in spool.closed_segments()]
    assert claimed[0] is None and claimed[1] is None  # skipped, each said in a line
    assert claimed[2] is not None and claimed[2].lines == lines(1, start=5)
    claimed[2].release()
    assert len([r for r in caplog.records if "is skipped" in r.getMessage()]) == 2
    assert outside.read_bytes() == lines(1)[0] + b"\n"


@pytest.mark.unit
def test_a_corrupt_line_is_a_batch_of_its_own() -> None:
    good = lines(5)
    segment = [*good[:2], b'{"action": "a.b", "n": ', good[2], b"\xff\xfe", *good[3:]]
    got = list(spool_module.replay_batches("seg-x", segment, max_bytes=10**6))
    assert [(b.task_id, b.count) for b in got] == [
        ("spool-seg-x-0-1", 2),
        ("spool-seg-x-2-corrupt", 1),
        ("spool-seg-x-3-3", 1),
        ("spool-seg-x-4-corrupt", 1),
        ("spool-seg-x-5-6", 2),
    ]
    assert got[1].payload == segment[2]  # as it is: the worker dead-letters it with its reason
    assert json.loads(got[0].payload) == [json.loads(line) for line in good[:2]]


@pytest.mark.unit
def test_replay_ids_name_their_lines_whatever_the_batch_size() -> None:
    """A task id means one set of lines: a replay by a process with other limits never finds
    an id "already enqueued" for a batch with other events in it."""
    segment = lines(40)
    seen: dict[str, bytes] = {}
    for max_events in (1, 2, 3, 7, 10, 40, 500):
        for max_bytes in (60, 200, 10**6):
            for batch in spool_module.replay_batches(
                "seg-x", segment, max_events=max_events, max_bytes=max_bytes
            ):
                assert seen.setdefault(batch.task_id, batch.payload) == batch.payload
    # The client replays with the same batch size, whatever its own flush size.
    default = list(spool_module.replay_batches("seg-x", lines(1200), max_bytes=10**7))
    assert [b.count for b in default] == [500, 500, 200]


async def test_one_corrupt_line_is_dead_lettered_and_the_rest_stored(
    tmp_path: Path, settings: Settings, redis: aioredis.Redis
) -> None:
    assert settings.redis_url and settings.database_url
    spool = Spool(tmp_path / "spool")
    good = [
        finalize(AuditEvent(action="spooled.event", entity=Entity(type="t", id=str(i))))[1]
        for i in range(4)
    ]
    spool.append([good[0], good[1], b'{"action": "spooled.torn", "id": ', good[2], good[3]])
    spool.close()
    async with AuditClient.from_url(
        settings.redis_url, queue=settings.queue, spool_dir=tmp_path / "spool"
    ) as client:
        await wait_for(lambda: _replayed(client, 5), within_s=30)
    async with running_worker(settings):

        async def settled() -> bool:
            ids = await dead_letter.list_ids(redis, settings.queue)
            return await count_rows(settings.database_url or "") == 4 and len(ids) == 1

        await wait_for(settled)
    (letter_id,) = await dead_letter.list_ids(redis, settings.queue)
    assert letter_id.endswith("-2-corrupt")
    letter = await dead_letter.get(redis, settings.queue, letter_id)
    assert letter is not None and letter.error_name == "InvalidJSON"
    assert letter.payload == '{"action": "spooled.torn", "id": '


async def _replayed(client: AuditClient, n: int) -> bool:
    await asyncio.sleep(0)
    return client.replayed >= n


@pytest.mark.unit
def test_the_staging_sweep_leaves_a_segment_being_made_and_removes_a_dead_ones(
    tmp_path: Path,
) -> None:
    """A writer creates its segment under a staging name, then locks and renames it; a sweep
    running in that window (another process's replay) must not take the file from it: that
    failed the writer's lock with EAGAIN and the events it was spooling were refused."""
    spool = Spool(tmp_path)
    spool.append([b'{"id": "kept"}'])  # makes the directory as a writer does
    being_made = tmp_path / f"{spool_module.STAGING_PREFIX}being-made"
    being_made.touch(mode=0o600)  # created, not yet locked: the writer's window
    left_by_a_crash = tmp_path / f"{spool_module.STAGING_PREFIX}left-by-a-crash"
    left_by_a_crash.touch(mode=0o600)
    long_ago = time.time() - 2 * spool_module.STAGING_GRACE_S
    os.utime(left_by_a_crash, (long_ago, long_ago))

    spool.sweep_staging()

    assert being_made.exists()
    assert not left_by_a_crash.exists()

"""Syslog RFC 5424 with octet-counted framing into Debian's rsyslog, over TCP and over TLS
verified against a test CA: every event arrives once per delivery, in stored order, whole
(a newline inside an event does not split it), and a receiver away for a while loses none."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings
from service.store import destinations as store
from tests.destinations import rsyslog
from tests.destinations.test_delivery import STORED_ORDER, first_seen
from tests.support.polling import wait_for
from tests.support.worker import running_worker

_ID = re.compile(r'\[auditq@32473 id="([0-9a-f-]{36})"')


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return dataclasses.replace(settings, destination_retry_max_s=1.0)


@pytest.fixture
async def plain_syslog(tmp_path: Path) -> AsyncIterator[rsyslog.Rsyslog]:
    if reason := rsyslog.missing():
        pytest.skip(reason)
    directory = tmp_path / "rsyslog-tcp"
    directory.mkdir()
    server = rsyslog.Rsyslog(directory, tls=False)
    async with rsyslog.stopped_at_exit(server):
        await server.start()
        yield server
        await server.stop()


@pytest.fixture
async def tls_syslog(tmp_path: Path) -> AsyncIterator[rsyslog.Rsyslog]:
    if reason := rsyslog.missing_tls():
        pytest.skip(reason)
    directory = tmp_path / "rsyslog-tls"
    directory.mkdir()
    server = rsyslog.Rsyslog(directory, tls=True)
    async with rsyslog.stopped_at_exit(server):
        await server.start()
        yield server
        await server.stop()


async def add(pg: asyncpg.Connection, name: str, url: str, fmt: str, **options: object) -> int:
    ident = await store.add_destination(
        pg,
        name=name,
        kind="syslog",
        url=url,
        format=fmt,
        filter="",
        filter_json={},
        options={"allow_private": True, "host": "auditq-test", **options},
        secret=None,
        since=None,
        created_by="test",
    )
    assert ident is not None
    return ident


async def capture(settings: Settings, events: list[AuditEvent]) -> list[str]:
    client = AuditClient.from_settings(dataclasses.replace(settings, capture_timeout_s=5.0))
    try:
        ids = [await client.capture(event) for event in events]
    finally:
        await client.aclose()
    assert all(ids)
    return [str(i) for i in ids]


def received_ids(server: rsyslog.Rsyslog) -> list[str]:
    return [m.group(1) for line in server.lines() if (m := _ID.search(line))]


async def test_tcp_and_tls_receive_every_event_in_stored_order_through_an_outage(
    fast: Settings,
    pg: asyncpg.Connection,
    plain_syslog: rsyslog.Rsyslog,
    tls_syslog: rsyslog.Rsyslog,
) -> None:
    assert tls_syslog.ca is not None
    await add(pg, "tcp", plain_syslog.url(), "json")
    await add(pg, "tls", tls_syslog.url(), "cef", ca_pem=tls_syslog.ca.read_text())
    multiline = AuditEvent(action="doc.updated", metadata={"note": "line one\nline two"})
    async with running_worker(fast):
        ids = await capture(fast, [multiline] + [AuditEvent(action="auth.login")] * 99)

        async def both_have_them() -> bool:
            return set(ids) <= set(received_ids(plain_syslog)) and set(ids) <= set(
                received_ids(tls_syslog)
            )

        await wait_for(both_have_them, within_s=60)
        await plain_syslog.stop()  # away for a while: what is stored meanwhile waits
        more = await capture(fast, [AuditEvent(action="config.updated")] * 50)

        async def failing() -> bool:
            found = await store.get_destination(pg, "tcp")
            return found is not None and found.consecutive_failures >= 2

        await wait_for(failing, within_s=60)
        await plain_syslog.start()

        async def back() -> bool:
            return set(more) <= set(received_ids(plain_syslog))

        await wait_for(back, within_s=60)
    stored = [row[0] for row in await pg.fetch(STORED_ORDER)]
    for server in (plain_syslog, tls_syslog):
        got = received_ids(server)
        assert first_seen([{"id": i} for i in got]) == [i for i in stored if i in got]
    assert set(ids + more) <= set(received_ids(plain_syslog))
    # One message per event, whole: the JSON body parses, the newline inside it included.
    tcp_lines = {
        i: line for line in plain_syslog.lines() if (m := _ID.search(line)) for i in [m.group(1)]
    }
    body = tcp_lines[ids[0]].split("] ", 1)[1]
    assert json.loads(body.replace("#012", "\n"))["metadata"]["note"] == "line one\nline two"
    assert tcp_lines[ids[0]].startswith("doc.updated ")
    tls_line = next(line for line in tls_syslog.lines() if ids[1] in line)
    assert "CEF:0|auditq|auditq|1|auth.login|auth.login|" in tls_line
    assert f"externalId={ids[1]}" in tls_line


async def test_tls_refuses_a_receiver_its_ca_does_not_vouch_for(
    fast: Settings, pg: asyncpg.Connection, tls_syslog: rsyslog.Rsyslog
) -> None:
    ident = await add(pg, "unverified", tls_syslog.url(), "json")  # no CA: the system's CAs
    async with running_worker(fast):
        await capture(fast, [AuditEvent(action="auth.login")])

        async def refused() -> bool:
            found = await store.get_destination_by_id(pg, ident)
            return found is not None and found.failed_attempts_total >= 1

        await wait_for(refused, within_s=60)
    found = await store.get_destination_by_id(pg, ident)
    assert found is not None and "CERTIFICATE_VERIFY_FAILED" in (found.last_error or "")
    assert received_ids(tls_syslog) == []

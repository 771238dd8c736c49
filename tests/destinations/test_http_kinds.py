"""Splunk HEC and Elasticsearch `_bulk` against receivers that implement their documented
request and response formats: authentication, the fields each requires, per-item errors,
and idempotent re-delivery by event id."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from service.settings import Settings
from service.store import destinations as store
from tests.destinations.receivers import Receiver
from tests.destinations.test_delivery import STORED_ORDER, capture, first_seen
from tests.support.polling import wait_for
from tests.support.worker import running_worker

HEC_TOKEN = "11111111-2222-3333-4444-555555555555"
ES_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return dataclasses.replace(settings, destination_retry_max_s=1.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(token=HEC_TOKEN) as running:
        yield running


async def add(
    pg: asyncpg.Connection, name: str, kind: str, url: str, secret: str, **opts: object
) -> int:
    ident = await store.add_destination(
        pg,
        name=name,
        kind=kind,
        url=url,
        format=str(opts.pop("format", "json")),
        filter="",
        filter_json={},
        options={"allow_private": True, **opts},
        secret=secret,
        since=None,
        created_by="test",
    )
    assert ident is not None
    return ident


async def test_splunk_hec_gets_every_event_with_its_fields_through_an_outage(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    await add(
        pg, "splunk", "splunk-hec", receiver.url(""), HEC_TOKEN, host="auditq-1", index="audit"
    )
    receiver.down = True
    async with running_worker(fast):
        ids = await capture(fast, 120, "auth.login")

        async def failing() -> bool:
            found = await store.get_destination(pg, "splunk")
            return found is not None and found.state == "failing"

        await wait_for(failing, within_s=60)
        receiver.down = False

        async def arrived() -> bool:
            return set(ids) <= {e["event"]["id"] for e in receiver.items}

        await wait_for(arrived, within_s=60)
    events = receiver.items
    stored = [row[0] for row in await pg.fetch(STORED_ORDER)]
    assert first_seen([e["event"] for e in events]) == [i for i in stored if i in set(ids)]
    event = events[0]
    assert event["host"] == "auditq-1" and event["source"] == "auditq"
    assert event["sourcetype"] == "auditq:event" and event["index"] == "audit"
    stamp = datetime.fromisoformat(event["event"]["ts"]).timestamp()
    assert abs(event["time"] - stamp) < 1e-3


async def test_splunk_hec_with_a_wrong_token_is_failing_and_says_why(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    ident = await add(pg, "splunk", "splunk-hec", receiver.url("/"), "wrong-token")
    receiver.echo = True  # the receiver quotes the token it refused: it must not be kept
    async with running_worker(fast):
        await capture(fast, 3)

        async def failing() -> bool:
            found = await store.get_destination_by_id(pg, ident)
            return found is not None and found.state == "failing"

        await wait_for(failing, within_s=60)
    found = await store.get_destination_by_id(pg, ident)
    assert found is not None and "Invalid token" in (found.last_error or "")
    assert "wrong-token" not in (found.last_error or "") and receiver.items == []


async def test_elasticsearch_bulk_is_idempotent_by_id_and_per_item_errors_hold_the_position(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver
) -> None:
    before = datetime.now(UTC)
    ident = await add(
        pg, "es", "elasticsearch", receiver.url("/audit-events"), ES_KEY, format="ocsf"
    )
    async with running_worker(fast):
        ids = await capture(fast, 60, "doc.updated")

        async def indexed() -> bool:
            return set(ids) <= set(receiver.es_docs)

        await wait_for(indexed, within_s=60)
        sent_before = len(receiver.items)
        # Sent again from the start: every create is a per-item 409, which counts as delivered.
        await store.backfill(pg, ident, before)

        async def caught_up() -> bool:
            found = await store.get_destination_by_id(pg, ident)
            return found is not None and (await store.lag(pg, found.position))[0] == 0

        await wait_for(caught_up, within_s=60)
        # Nothing twice; new: the destination's own records (created, with it, before its
        # start; backfilled), rows of the record like any other.
        records = await pg.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'dest%'")
        assert records == 2
        assert len(receiver.items) == sent_before + records
        assert len(receiver.es_docs) == len(ids) + records
        # One document the cluster refuses: the destination holds there, and says which.
        more = await capture(fast, 5, "doc.deleted")
        receiver.es_reject = {more[2]}

        async def stuck() -> bool:
            found = await store.get_destination_by_id(pg, ident)
            return found is not None and found.state == "failing"

        await wait_for(stuck, within_s=60)
        found = await store.get_destination_by_id(pg, ident)
        assert found is not None and more[2] in (found.last_error or "")
        receiver.es_reject = set()

        async def all_in() -> bool:
            return set(more) <= set(receiver.es_docs)

        await wait_for(all_in, within_s=60)
    doc = receiver.es_docs[ids[0]]
    assert doc["class_uid"] == 6003 and doc["unmapped"]["id"] == ids[0]

"""Destinations of one worker share their reads: a batch is read once for every destination
at the same position with the same filter, and none of them waits on another's receiver;
delivery gives way to ingest without falling behind for good."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.settings import Settings
from service.store import destinations as store
from tests.destinations.receivers import Receiver
from tests.destinations.test_delivery import SECRET, STORED_ORDER, add, capture, fast, first_seen
from tests.support.polling import wait_for
from tests.support.worker import running_worker
from workers import delivery
from workers.state import WorkerState

__all__ = ["fast"]  # the fixture, shared with test_delivery


@pytest.fixture
async def other() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


@pytest.fixture
async def third() -> AsyncIterator[Receiver]:
    async with Receiver(secret=SECRET) as running:
        yield running


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[Any, ...]]:
    """Every read of the database that found rows, by position and filter."""
    counted: Counter[tuple[Any, ...]] = Counter()
    next_rows = store.next_rows

    async def counting(conn: Any, position: Any, filters: Any, **kwargs: Any) -> Any:
        rows, end = await next_rows(conn, position, filters, **kwargs)
        if rows:
            counted[position, filters] += 1
        return rows, end

    monkeypatch.setattr(store, "next_rows", counting)
    return counted


def ocsf_ids(items: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(item["metadata"]["uid"] for item in items))


async def test_destinations_at_one_position_read_each_batch_once_and_each_gets_every_event(
    fast: Settings,
    pg: asyncpg.Connection,
    receiver: Receiver,
    other: Receiver,
    third: Receiver,
    reads: Counter[tuple[Any, ...]],
) -> None:
    await add(pg, "json", receiver.url("/hook"))
    await add(pg, "ocsf", other.url("/hook"), format="ocsf")
    await add(
        pg,
        "auth",
        third.url("/hook"),
        filter="action_prefix=auth.",
        filter_json={"action_prefix": "auth."},
    )
    async with running_worker(fast):
        ids = await capture(fast, 300) + await capture(fast, 20, "auth.login")

        async def arrived() -> bool:
            return (
                set(ids) <= {i["id"] for i in receiver.items}
                and set(ids) <= set(ocsf_ids(other.items))
                and set(ids[300:]) <= {i["id"] for i in third.items}
            )

        await wait_for(arrived, within_s=60)
    stored = [row[0] for row in await pg.fetch(STORED_ORDER) if row[0] in set(ids)]
    assert [i for i in first_seen(receiver.items) if i in set(ids)] == stored
    assert [i for i in ocsf_ids(other.items) if i in set(ids)] == stored
    auth = set(ids[300:])
    assert [i for i in first_seen(third.items) if i in set(ids)] == [i for i in stored if i in auth]
    # json and ocsf stand at the same positions with the same (empty) filter: one read each.
    assert reads and max(reads.values()) == 1, reads.most_common(3)
    assert {f for _, f in reads} == {
        store.stored_filter({}),
        store.stored_filter({"action_prefix": "auth."}),
    }


async def test_a_receiver_down_holds_back_no_other_destination(
    fast: Settings, pg: asyncpg.Connection, receiver: Receiver, other: Receiver
) -> None:
    await add(pg, "up", receiver.url("/hook"))
    down = await add(pg, "down", other.url("/hook"))
    other.down = True
    async with running_worker(fast):
        ids = await capture(fast, 200)

        async def up_has_all() -> bool:
            return set(ids) <= {i["id"] for i in receiver.items}

        await wait_for(up_has_all, within_s=60)

        async def failing() -> bool:
            found = await store.get_destination_by_id(pg, down)
            return found is not None and found.state == "failing"

        await wait_for(failing, within_s=60)
        assert other.items == []
        more = await capture(fast, 100)
        other.down = False

        async def down_has_all() -> bool:
            return set(ids + more) <= {i["id"] for i in other.items}

        await wait_for(down_has_all, within_s=60)
    everything = set(ids + more)
    stored = [row[0] for row in await pg.fetch(STORED_ORDER) if row[0] in everything]
    assert [i for i in first_seen(other.items) if i in everything] == stored
    assert [i for i in first_seen(receiver.items) if i in everything] == stored


async def test_delivery_gives_way_to_ingest_but_keeps_delivering(
    fast: Settings,
    pg: asyncpg.Connection,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose ingest is always saturated still delivers everything, in batches that
    grow while it is behind; caught up, it reads seldom (every DEFER_S, not every IDLE_S)."""
    monkeypatch.setattr(WorkerState, "ingesting", lambda self: True)
    sizes: list[int] = []
    read = delivery._read

    async def noting(conn: Any, position: Any, filters: Any, max_rows: int) -> Any:
        sizes.append(max_rows)
        return await read(conn, position, filters, max_rows)

    monkeypatch.setattr(delivery, "_read", noting)
    ident = await add(pg, "siem", receiver.url("/hook"))
    await store.set_paused(pg, "siem", True)  # rows pile up: the destination falls behind
    async with running_worker(fast):
        ids = await capture(fast, 1500)

        async def stored() -> bool:
            n = await pg.fetchval("SELECT count(*) FROM audit_log WHERE id = ANY($1::uuid[])", ids)
            return bool(n == len(ids))

        await wait_for(stored, within_s=60)  # all of them wait: the destination is behind
        await store.set_paused(pg, "siem", False)

        async def arrived() -> bool:
            return set(ids) <= {i["id"] for i in receiver.items}

        await wait_for(arrived, within_s=60)
        assert max(sizes) > delivery.BATCH_ROWS
        done = await store.get_destination_by_id(pg, ident)
        assert done is not None and (await store.lag(pg, done.position))[0] == 0
        sizes.clear()
        more = await capture(fast, 5)

        async def more_arrived() -> bool:
            return set(more) <= {i["id"] for i in receiver.items}

        await wait_for(more_arrived, within_s=60)
        # Caught up under saturated ingest: about one read per DEFER_S (5 s), where a worker
        # with free job slots reads every IDLE_S (0.2 s), 25 times as often.
        await asyncio.sleep(delivery.DEFER_S)
        assert len(sizes) <= 4, len(sizes)

"""Delivery: one runner per destination across all workers, streaming stored rows out.

Every worker supervises every destination; a runner first takes the destination's advisory
lock on a connection of its own, so exactly one runner (in any worker) delivers it, and
another takes over within a few seconds when that worker or its connection goes. A runner
reads the rows after the destination's position in (xid, seq) order (docs/destinations.md),
sends the batch, and moves the position only once the receiver acknowledged; a failure is
retried with capped exponential backoff and full jitter, forever, on the runner's own
connection, so ingest never waits on a receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import asyncpg
import msgspec

from service.ops.destinations.formats import Item
from service.ops.destinations.safety import UnsafeDestination
from service.ops.destinations.transports import DeliveryError, Sender, make_sender
from service.redaction import redact_sensitive_in_string
from service.settings import Settings
from service.store import db
from service.store import destinations as store
from service.store.items import item

logger = logging.getLogger(__name__)

SUPERVISE_S = 1.0  # seconds between looks for destinations added or removed
LOCK_RETRY_S = 2.0  # seconds between attempts at a destination another worker delivers
IDLE_S = 0.2  # seconds between looks for new rows when a destination is caught up
# A batch smaller than this means the destination is caught up: wait IDLE_S before the next,
# so a stream of rows goes out in batches of a fifth of a second's rows, not a request per
# statement (each batch costs a few queries and a request whatever its size).
FULL_BATCH = 100
PAUSED_S = 1.0  # seconds between looks at a paused destination
BATCH_ROWS = 500  # rows read per batch (and at most sent in one request)
RETRY_BASE_S = 0.5  # first backoff after a failed attempt; doubled per failure up to the cap
DB_RETRY_S = 2.0  # seconds before a runner whose database connection failed starts again


_encoder = msgspec.json.Encoder()


def stored_item(row: asyncpg.Record) -> Item:
    """The Item of a row `next_rows` read: its item JSON as the API writes it, the stored JSON
    values spliced in as they are (msgspec.Raw), never decoded."""
    data = item(row)
    for name in store.JSON_COLUMNS:
        if data[name] is not None:
            data[name] = msgspec.Raw(data[name])
    return Item(
        id=str(row["id"]),
        ts=row["ts"],
        action=row["action"],
        severity=row["severity"],
        json=msgspec.Raw(_encoder.encode(data)),
        data=data,
    )


def backoff(failures: int, *, cap_s: float) -> float:
    """The pause after `failures` failed attempts in a row: full jitter under a capped doubling."""
    ceiling = min(cap_s, RETRY_BASE_S * 2 ** min(failures - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


async def run(settings: Settings) -> None:
    """Supervise every destination until cancelled: a runner task for each."""
    url = settings.worker_url
    assert url is not None
    runners: dict[int, asyncio.Task[None]] = {}
    conn: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await db.connect(url)
                ids = await store.destination_ids(conn)
            except Exception as exc:  # the database away: look again later
                logger.debug("destinations not listed: %s", type(exc).__name__)
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(DB_RETRY_S)
                continue
            for ident in ids:
                task = runners.get(ident)
                if task is None or task.done():
                    runners[ident] = asyncio.get_running_loop().create_task(
                        _runner(settings, ident), name=f"auditq-destination-{ident}"
                    )
            for ident in [i for i, task in runners.items() if task.done() and i not in ids]:
                del runners[ident]
            await asyncio.sleep(SUPERVISE_S)
    finally:
        for task in runners.values():
            task.cancel()
        for task in runners.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if conn is not None:
            conn.terminate()


async def _runner(settings: Settings, ident: int) -> None:
    """Deliver one destination while this worker holds its lock; end when it is removed."""
    url = settings.worker_url
    assert url is not None
    try:
        conn = await db.connect(url)
    except Exception as exc:
        logger.debug("destination %d: no connection: %s", ident, type(exc).__name__)
        await asyncio.sleep(DB_RETRY_S)
        return
    try:
        while not await store.try_lock(conn, ident):
            if await store.get_destination_by_id(conn, ident) is None:
                return
            await asyncio.sleep(LOCK_RETRY_S)
        await Delivery(conn, ident, retry_max_s=settings.destination_retry_max_s).run()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        # The lock goes with the connection: this or another worker starts again.
        logger.warning("destination %d: database failed: %s", ident, type(exc).__name__)
        await asyncio.sleep(DB_RETRY_S)
    except Exception as exc:  # never a silent end: the supervisor starts it again
        logger.warning(
            "destination %d: runner failed: %s: %s",
            ident,
            type(exc).__name__,
            redact_sensitive_in_string(str(exc)),
        )
        await asyncio.sleep(DB_RETRY_S)
    finally:
        conn.terminate()


class Delivery:
    """The loop of one destination whose lock this worker holds."""

    def __init__(self, conn: asyncpg.Connection, ident: int, *, retry_max_s: float) -> None:
        self.conn = conn
        self.ident = ident
        self.retry_max_s = retry_max_s
        self.sender: Sender | None = None
        self.sender_key: Any = None

    async def run(self) -> None:
        """Deliver until the destination is removed (or the task is cancelled)."""
        try:
            while await self.step():
                pass
        finally:
            if self.sender is not None:
                with contextlib.suppress(Exception):
                    await self.sender.close()

    async def _sender(self, destination: store.Destination) -> Sender:
        key = (destination.kind, destination.url, destination.format, destination.updated_at)
        if self.sender is None or key != self.sender_key:
            if self.sender is not None:
                await self.sender.close()
                self.sender = None
            secret = await store.read_secret(self.conn, destination.id)
            self.sender = make_sender(destination, secret)
            self.sender_key = key
        return self.sender

    async def step(self) -> bool:
        """One batch (or one pause); False once the destination is gone."""
        destination = await store.get_destination_by_id(self.conn, self.ident)
        if destination is None:
            return False
        if destination.paused:
            await asyncio.sleep(PAUSED_S)
            return True
        filters = store.stored_filter(destination.filter_json)
        rows, end = await store.next_rows(
            self.conn, destination.position, filters, max_rows=BATCH_ROWS
        )
        if end == destination.position:
            await asyncio.sleep(IDLE_S)
            return True
        wanted = [stored_item(row) for row in rows if row["wanted"]]
        if wanted:
            try:
                sender = await self._sender(destination)
                await sender.send(wanted)
            except (DeliveryError, UnsafeDestination) as exc:
                await self._failed(destination, str(exc))
                return True
            except (asyncpg.PostgresError, asyncpg.InterfaceError):
                raise  # the database, not the receiver: the runner starts again
            except Exception as exc:  # unforeseen: retried like a refusal, and shown, not hidden
                problem = redact_sensitive_in_string(f"{type(exc).__name__}: {exc}")
                await self._failed(destination, f"internal error: {problem}")
                return True
        await store.advance(self.conn, self.ident, destination.position, end, delivered=len(wanted))
        if len(rows) < FULL_BATCH:
            await asyncio.sleep(IDLE_S)
        return True

    async def _failed(self, destination: store.Destination, error: str) -> None:
        failures = await store.record_failure(self.conn, self.ident, error)
        if failures in (1, store.FAILING_AFTER) or failures % 100 == 0:
            logger.warning(
                "destination %s: delivery failed %d times in a row: %s",
                destination.name,
                failures,
                error,
            )
        await asyncio.sleep(backoff(failures, cap_s=self.retry_max_s))

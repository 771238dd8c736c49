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
import dataclasses
import logging
import random
from collections.abc import Callable
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
# A caught-up destination looks for new rows on the ticks of this clock (every runner of a
# worker on the same tick, so those at the same position read once between them): a stream of
# rows goes out in batches of a fifth of a second's rows, not a request per statement.
IDLE_S = 0.2
# A batch smaller than this means the destination is caught up: it waits for the next tick.
FULL_BATCH = 100
# Ingest goes first: while jobs wait in the queue (WorkerState.ingesting), a destination that
# is not behind waits, looking again every BUSY_S, for at most DEFER_S since its last batch;
# then it reads one, and while its batches come back full (behind)
# it reads on without waiting, in batches that grow. Its lag under a burst of ingest is
# about DEFER_S plus the catching up; it pays the same CPU per event, later, in fewer
# batches. A worker that is not saturated (a steady 2,000 events/s) never waits.
BUSY_S = 0.2
DEFER_S = 5.0
PAUSED_S = 1.0  # seconds between looks at a paused destination
BATCH_ROWS = 500  # rows read per batch when caught up (and at most sent in one request) ...
MAX_BATCH_ROWS = 5000  # ... doubled per full batch up to this while behind
RETRY_BASE_S = 0.5  # first backoff after a failed attempt; doubled per failure up to the cap
DB_RETRY_S = 2.0  # seconds before a runner whose database connection failed starts again
READS_KEPT = 8  # batches a worker keeps for its other runners at the same position ...
READ_KEPT_S = 5.0  # ... for at most this long


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


async def _tick() -> None:
    """Wait for the next tick of the IDLE_S clock (the same for every runner of the worker)."""
    now = asyncio.get_running_loop().time()
    await asyncio.sleep(IDLE_S - now % IDLE_S)


def backoff(failures: int, *, cap_s: float) -> float:
    """The pause after `failures` failed attempts in a row: full jitter under a capped doubling."""
    ceiling = min(cap_s, RETRY_BASE_S * 2 ** min(failures - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


def _never_busy() -> bool:
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """The rows after a position for one filter: those it wants, and where the batch ends."""

    items: list[Item]
    read: int  # rows read, wanted or not
    end: store.Position


class Reader:
    """A worker's batches, read once for every runner at the same position with the same
    filter: the rows and their item JSON are made once, and each format rendered once (Item).

    Entries below every transaction still running never change, so a batch read earlier
    is still exact for its position, only perhaps shorter than one read now; it is kept a
    few seconds only (what an erasure changed since is read anew)."""

    def __init__(self) -> None:
        self._reads: dict[tuple[store.Position, str], tuple[float, asyncio.Task[Batch]]] = {}

    async def read(
        self, conn: asyncpg.Connection, position: store.Position, filters: Any, max_rows: int
    ) -> Batch:
        key = (position, _encoder.encode(filters).decode())
        now = asyncio.get_running_loop().time()
        read_at, task = self._reads.get(key, (0.0, None))
        if task is not None and now - read_at < READ_KEPT_S:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
            except Exception:  # another runner's read failed (its connection): read again
                pass
        task = asyncio.get_running_loop().create_task(
            _read(conn, position, filters, max_rows), name="auditq-destination-read"
        )
        self._reads[key] = (now, task)
        while len(self._reads) > READS_KEPT:
            del self._reads[next(iter(self._reads))]
        try:
            batch = await asyncio.shield(task)
        except BaseException:
            if self._reads.get(key, (0.0, None))[1] is task:
                del self._reads[key]
            raise
        if batch.end == position:  # nothing yet: the next look reads again
            self._reads.pop(key, None)
        return batch


async def _read(
    conn: asyncpg.Connection, position: store.Position, filters: Any, max_rows: int
) -> Batch:
    rows, end = await store.next_rows(conn, position, filters, max_rows=max_rows)
    return Batch([stored_item(row) for row in rows if row["wanted"]], len(rows), end)


async def run(settings: Settings, *, busy: Callable[[], bool] = _never_busy) -> None:
    """Supervise every destination until cancelled: a runner task for each. `busy` says
    whether this worker's ingest is saturated (delivery then gives way, DEFER_S)."""
    url = settings.worker_url
    assert url is not None
    reader = Reader()
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
                        _runner(settings, ident, reader, busy),
                        name=f"auditq-destination-{ident}",
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


async def _runner(settings: Settings, ident: int, reader: Reader, busy: Callable[[], bool]) -> None:
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
        await Delivery(
            conn,
            ident,
            retry_max_s=settings.destination_retry_max_s,
            reader=reader,
            busy=busy,
        ).run()
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

    def __init__(
        self,
        conn: asyncpg.Connection,
        ident: int,
        *,
        retry_max_s: float,
        reader: Reader | None = None,
        busy: Callable[[], bool] = _never_busy,
    ) -> None:
        self.conn = conn
        self.ident = ident
        self.retry_max_s = retry_max_s
        self.reader = reader or Reader()
        self.busy = busy
        self.batch_rows = BATCH_ROWS
        self.behind = False  # the last batch came back full: more rows are waiting
        self.read_at = 0.0  # when this runner last read a batch (loop time)
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
        now = asyncio.get_running_loop().time()
        if not self.behind and self.busy() and now - self.read_at < DEFER_S:
            await asyncio.sleep(BUSY_S)  # ingest first
            return True
        self.read_at = now
        destination = await store.get_destination_by_id(self.conn, self.ident)
        if destination is None:
            return False
        if destination.paused:
            await asyncio.sleep(PAUSED_S)
            return True
        filters = store.stored_filter(destination.filter_json)
        batch = await self.reader.read(self.conn, destination.position, filters, self.batch_rows)
        if batch.end == destination.position:
            await _tick()
            return True
        if batch.items:
            try:
                sender = await self._sender(destination)
                await sender.send(batch.items)
            except (DeliveryError, UnsafeDestination) as exc:
                await self._failed(destination, str(exc))
                return True
            except (asyncpg.PostgresError, asyncpg.InterfaceError):
                raise  # the database, not the receiver: the runner starts again
            except Exception as exc:  # unforeseen: retried like a refusal, and shown, not hidden
                problem = redact_sensitive_in_string(f"{type(exc).__name__}: {exc}")
                await self._failed(destination, f"internal error: {problem}")
                return True
        await store.advance(
            self.conn, self.ident, destination.position, batch.end, delivered=len(batch.items)
        )
        self.behind = batch.read >= self.batch_rows
        if self.behind:  # larger batches: each costs a few queries and a request, any size
            self.batch_rows = min(self.batch_rows * 2, MAX_BATCH_ROWS)
        elif batch.read < FULL_BATCH:  # caught up
            self.batch_rows = BATCH_ROWS
            await _tick()
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

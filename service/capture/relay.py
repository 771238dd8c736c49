"""The relay: moves each application database's outbox into the queue, in capture order.

One relay drains an outbox at a time (a session advisory lock in that database; others
wait as standbys). It reads a batch, enqueues its events through AuditClient with ids
derived from the rows, and deletes the rows only once every event was accepted; a relay
killed in between sends them again and auditq stores each id once. It is woken by
LISTEN/NOTIFY and polls as well, and rides out its database and Redis going away. It never
touches the application's tables: only the outbox, in short statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from service.capture.outbox import (
    DELETE_ROWS,
    NOTIFY_CHANNEL,
    SELECT_BATCH,
    SELECT_INSTALLATION,
    SELECT_TABLES,
    CapturedTable,
    Origin,
    event_for,
    fitting,
)
from service.events import AuditEvent
from service.producer.client import AuditClient
from service.settings import Settings

logger = logging.getLogger(__name__)

BATCH_ROWS = 1000  # outbox rows read, enqueued and deleted together
POLL_INTERVAL_S = 1.0  # a missed NOTIFY (or a quiet one) costs at most this much lag
NOT_INSTALLED_PAUSE_S = 5.0  # between looks at a database where capture is not installed
STANDBY_PAUSE_S = 2.0  # between tries for the outbox another relay drains
RETRY_FIRST_S = 0.2  # pauses after a failure double from here...
RETRY_MAX_S = 5.0  # ...up to here
CONNECT_TIMEOUT_S = 10.0
# The relay waits for Redis longer than an application's capture would: nothing waits on it.
CAPTURE_TIMEOUT_S = 5.0
# pg_try_advisory_lock key ("auditqr"): one relay per outbox, per database.
RELAY_LOCK_KEY = 0x61756469747172
APPLICATION_NAME = "auditq-capture-relay"
TRY_RELAY_LOCK = "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)"


class _Stopped(Exception):
    """The relay was asked to stop while it waited."""


class OutboxRelay:
    """Drain one application database's outbox into the queue until stopped.

    `client` must be the relay's own: it reads the client's count of events sent."""

    def __init__(
        self,
        url: str,
        client: AuditClient,
        *,
        extra_keys: frozenset[str] = frozenset(),
        max_event_bytes: int,
        max_future_s: float,
        batch_rows: int = BATCH_ROWS,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._url = url
        self._client = self.client = client
        self._extra_keys = extra_keys
        self._max_event_bytes = max_event_bytes
        self._max_future_s = max_future_s
        self._batch_rows = batch_rows
        self._poll_interval_s = poll_interval_s
        self._tables: dict[int, CapturedTable] = {}
        self._origin: Origin | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._said: str | None = None  # the last trouble logged, so an outage is said once
        self.relayed = 0  # events accepted by Redis
        self.rows_done = 0  # outbox rows deleted (events, and updates that changed nothing)
        self.name = describe(url)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; what is in hand then stays in the outbox for next time."""
        self._stop = stop
        with contextlib.suppress(_Stopped):
            await self._run()

    async def _run(self) -> None:
        pause = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                conn = await self._connect()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._trouble(f"cannot reach the database ({type(exc).__name__}: {exc})")
                pause = await self._pause(pause)
                continue
            pause = RETRY_FIRST_S
            try:
                await self._serve(conn)
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                self._trouble(f"lost the database ({type(exc).__name__}: {exc})")
                pause = await self._pause(pause)
            except _Stopped:
                raise
            except Exception as exc:
                # A fault of the relay itself must not end it for good (a worker would go on
                # without relaying): said, and tried again from the outbox, which kept it all.
                self._trouble(f"failed ({type(exc).__name__}: {exc}); trying again")
                pause = await self._pause(pause)
            finally:
                conn.terminate()  # a dead connection cannot be closed politely
                self._origin = None

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._url,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": APPLICATION_NAME},  # for the DBA's views
        )
        return conn

    async def _serve(self, conn: asyncpg.Connection) -> None:
        while not await conn.fetchval(TRY_RELAY_LOCK, RELAY_LOCK_KEY):
            self._trouble("another relay drains this outbox; standing by")
            await self._sleep(STANDBY_PAUSE_S)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        while True:
            try:
                installation = await conn.fetchrow(SELECT_INSTALLATION)
            except asyncpg.UndefinedTableError:
                installation = None
            if installation is not None:
                break
            self._trouble("capture is not installed there (auditq capture install); waiting")
            await self._sleep(NOT_INSTALLED_PAUSE_S)
        self._origin = Origin(installation["database_id"], installation["database"])
        if self._said is not None:
            logger.warning("capture relay %s: working again", self.name)
            self._said = None
        logger.info("capture relay %s: draining its outbox", self.name)
        while True:
            self._wake.clear()
            await self._drain(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await _first(self._wake, self._stop)
            if self._stop.is_set():
                raise _Stopped

    def _notified(self, *args: Any) -> None:
        self._wake.set()

    async def _load_tables(self, conn: asyncpg.Connection) -> None:
        self._tables = {
            row["table_id"]: CapturedTable.from_row(row) for row in await conn.fetch(SELECT_TABLES)
        }

    async def _drain(self, conn: asyncpg.Connection) -> None:
        """Relay batches until the outbox is empty."""
        # Each round reads the captured tables again: an install since the last one may have
        # added a table or changed an entity or a mask.
        await self._load_tables(conn)
        while True:
            rows = await conn.fetch(SELECT_BATCH, self._batch_rows)
            if not rows:
                return
            if any(row["table_id"] not in self._tables for row in rows):
                await self._load_tables(conn)  # installed during this round
            events = self._events(rows)
            await self._enqueue(events)
            # Only now: every event of these rows is in Redis.
            await conn.execute(DELETE_ROWS, [row["id"] for row in rows])
            self.relayed += len(events)
            self.rows_done += len(rows)
            if self._stop.is_set():
                raise _Stopped

    def _events(self, rows: Sequence[Any]) -> list[AuditEvent]:
        assert self._origin is not None
        events = []
        for row in rows:
            table = self._tables.get(row["table_id"])
            if table is None:
                # Its table was uninstalled with --discard-pending meanwhile: nothing to say.
                continue
            event = event_for(
                row,
                table,
                self._origin,
                extra_keys=self._extra_keys,
                max_event_bytes=self._max_event_bytes,
                max_future_s=self._max_future_s,
            )
            if event is not None:
                events.append(event)
        return events

    async def _enqueue(self, events: list[AuditEvent]) -> None:
        """Enqueue every event; send them all again until Redis accepted every one."""
        pause = RETRY_FIRST_S
        while events and not await self._send(events):
            # An event the queue refuses (the application's data: too large, a clock ahead)
            # is made to fit and the batch sent again at once; else Redis is the trouble.
            fitted = [self._fitting(event) for event in events]
            refused = sum(new is not old for new, old in zip(fitted, events, strict=True))
            if refused:
                logger.warning(
                    "capture relay %s: %d events did not fit the queue as they were; sent "
                    "with large values cut, or without their diff",
                    self.name,
                    refused,
                )
                events = fitted
                continue
            self._trouble("Redis did not accept every event of a batch; it is sent again")
            # One event at a time until Redis answers again: an outage costs one failure line
            # per try, not one per waiting event. (Sent twice, an event is stored once.)
            while await self._client.capture(events[0]) is None:
                pause = await self._pause(pause)
        if self._said is not None:
            logger.warning("capture relay %s: working again", self.name)
            self._said = None

    async def _send(self, events: list[AuditEvent]) -> bool:
        """Hand the events to the client in order; True when Redis accepted every one.

        The client sends its buffer in order, one batch after the other: once the last
        event's batch is accepted, the others' batches were answered before it, and the
        client's count of events sent tells whether all of them were accepted."""
        before = self._client.sent
        for event in events[:-1]:
            self._client.capture_nowait(event)  # buffered; a failure is logged and counted
        last = await self._client.capture(events[-1])
        return last is not None and self._client.sent - before == len(events)

    def _fitting(self, event: AuditEvent) -> AuditEvent:
        return fitting(
            event,
            extra_keys=self._extra_keys,
            max_event_bytes=self._max_event_bytes,
            max_future_s=self._max_future_s,
        )

    def _trouble(self, what: str) -> None:
        if what != self._said:
            logger.warning("capture relay %s: %s", self.name, what)
            self._said = what

    async def _pause(self, pause: float) -> float:
        """Wait `pause` seconds (or until stopped); return the next, longer, pause."""
        await self._sleep(pause)
        return min(pause * 2, RETRY_MAX_S)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        if self._stop.is_set():
            raise _Stopped


async def _first(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def describe(url: str) -> str:
    """host:port/database of a URL, for log lines (never its password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


def relay_client(settings: Settings) -> AuditClient:
    """The producer the relay enqueues through: no spool (the outbox is its spool)."""
    return AuditClient.from_settings(
        settings,
        capture_timeout_s=max(settings.capture_timeout_s, CAPTURE_TIMEOUT_S),
        spool_dir=None,
    )


async def run_relays(
    settings: Settings, urls: Sequence[str], stop: asyncio.Event
) -> list[OutboxRelay]:
    """Relay every database of `urls` until `stop` is set; return the relays (their counts)."""
    # A client each: a relay reads its own client's count of events sent.
    relays = [
        OutboxRelay(
            url,
            relay_client(settings),
            extra_keys=settings.redact_extra_keys,
            max_event_bytes=settings.max_event_bytes,
            max_future_s=settings.max_future_s,
        )
        for url in urls
    ]
    try:
        await asyncio.gather(*(relay.run(stop) for relay in relays))
    finally:
        for relay in relays:
            await relay.client.aclose()
    return relays


class RelayTask:
    """The relays of AUDITQ_CAPTURE_DATABASE_URLS, running beside a worker."""

    def __init__(self, settings: Settings) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            run_relays(settings, settings.capture_database_urls, self._stop),
            name="auditq-capture-relay",
        )

    async def stop(self) -> None:
        """Stop relaying; rows in hand stay in their outbox for the next relay."""
        self._stop.set()
        try:
            await self._task
        except Exception as exc:  # said, not raised: the worker's own shutdown goes on
            logger.error("the capture relay failed: %s: %s", type(exc).__name__, exc)

    def cancel(self) -> None:
        """Stop at once (the worker closes without Redis); the outbox keeps what was in hand."""
        self._stop.set()
        self._task.cancel()

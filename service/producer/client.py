"""The producer: capture audit events and enqueue them in batches, never raising to the caller."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypedDict, Unpack

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.connections import parse_redis_url, redis_client
from service.errors import ConfigError, InvalidEvent
from service.events import ACTION_PATTERN, AuditEvent, finalize
from service.producer.context import AuditContext, current_context, with_context
from service.producer.failures import (
    FAILURE_PREFIX,
    BufferFull,
    ClientClosed,
    DeliveryUncertain,
    NotReplicated,
    SpoolFull,
    log_failure,
)
from service.producer.spool import SpoolError
from service.producer.spooler import BATCH_MAX_BYTES, Item, Spooler, trusted_spool
from service.queue.enqueue import (
    ENQUEUE_FUNCTION,
    ENQUEUE_SCRIPT,
    has_no_functions,
    is_function_missing,
    load_functions,
)
from service.queue.jobs import Provenance, provenance_tag
from service.settings import Settings

__all__ = [
    "FAILURE_PREFIX",
    "AuditClient",
    "AuditEvent",
    "BufferFull",
    "ClientClosed",
    "ClientStats",
    "DeliveryUncertain",
    "NotReplicated",
    "SpoolError",
    "SpoolFull",
]

# With WAIT (wait_replicas): the replicas get this share of a batch's Redis time to confirm it,
# so that Redis answers "not confirmed" before the client gives up on the reply.
WAIT_SHARE = 0.5
SEND_TIMEOUT_FACTOR = 4  # capture timeouts per send: connect, one reconnect, the reply, slack
# A capture from a thread other than the client's loop's: that loop tells, this share of the
# bound before the caller gives up, whether the event was still waiting or already sent.
CROSS_THREAD_MARGIN = 0.2
CLOSE_TIMEOUT = 5.0  # seconds
REPLICA_CHECK_S = 1.0  # seconds the Sentinels' count of replicas is trusted ("auto")
UNREPLICATED_WARNING_INTERVAL = 60.0  # seconds between warnings of unreplicated batches
# With a spool, a batch an awaiting capture is in tries Redis for this share of the capture
# bound; the rest is left to append it to the spool, so `capture` still answers in time.
REDIS_SHARE_WITH_SPOOL = 0.5

logger = logging.getLogger(__name__)

_DEFAULTS = Settings()
_ACTION = re.compile(ACTION_PATTERN)
VALID_ACTIONS_KEPT = 4096  # distinct actions remembered as valid
_valid_actions: set[str] = set()
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


class ClientOptions(TypedDict, total=False):
    """The options of AuditClient, for from_url and from_settings."""

    queue: str
    capture_timeout_s: float
    buffer_max_events: int
    flush_interval_s: float
    flush_max_events: int
    max_event_bytes: int
    max_future_s: float
    redact_extra_keys: Iterable[str]
    spool_dir: Path | str | None
    spool_max_bytes: int
    provenance: Provenance | None
    wait_replicas: int | Literal["auto"]


@dataclasses.dataclass
class ClientStats:
    """What became of the events given to a client, counted since it was made (its spooler
    counts the events it spooled and replayed)."""

    sent: int = 0  # events enqueued
    failed: int = 0  # events that could not be enqueued (each logged)
    uncertain: int = 0  # events sent without an answer in time: they may be stored (logged)
    dropped: int = 0  # events dropped because the buffer was full (each logged)
    spool_dropped: int = 0  # events dropped because the spool was full (each logged)
    unreplicated: int = 0  # events accepted with no replica connected ("auto")


class _Stat:
    """A count of the client's stats, read as an attribute of the client (`client.sent`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, client: AuditClient, owner: type | None = None) -> int:
        return int(getattr(client.stats, self.name))


class AuditClient:
    """Enqueue audit events to the arq queue in batches; never raise to the caller.

    With `spool_dir`, a batch Redis does not take is appended durably to a local spool
    (service/producer/spool.py) and replayed, in order, once Redis answers again; `capture` then
    returns the id of an event that is spooled, as it will be delivered.
    """

    sent = _Stat()
    failed = _Stat()
    uncertain = _Stat()
    dropped = _Stat()
    spool_dropped = _Stat()
    unreplicated = _Stat()

    def __init__(
        self,
        redis: Redis,
        *,
        queue: str = _DEFAULTS.queue,
        capture_timeout_s: float = _DEFAULTS.capture_timeout_s,
        buffer_max_events: int = _DEFAULTS.buffer_max_events,
        flush_interval_s: float = _DEFAULTS.flush_interval_s,
        flush_max_events: int = _DEFAULTS.flush_max_events,
        max_event_bytes: int = _DEFAULTS.max_event_bytes,
        max_future_s: float = _DEFAULTS.max_future_s,
        redact_extra_keys: Iterable[str] = _DEFAULTS.redact_extra_keys,
        spool_dir: Path | str | None = None,
        spool_max_bytes: int = _DEFAULTS.spool_max_bytes,
        provenance: Provenance | None = None,
        wait_replicas: int | Literal["auto"] = 0,
    ) -> None:
        """Wrap `redis` (the client owns and closes it); prefer from_url or from_settings.

        `wait_replicas`: replicas that must confirm a batch (Redis WAIT) before its events
        count as enqueued; see docs/reliability.md."""
        if not queue:
            raise ConfigError("queue must not be empty")
        if not capture_timeout_s > 0 or not flush_interval_s > 0:
            raise ConfigError("capture_timeout_s and flush_interval_s must be positive")
        if wait_replicas != "auto" and wait_replicas < 0:
            raise ConfigError("wait_replicas must not be negative")
        if buffer_max_events < 1 or flush_max_events < 1 or max_event_bytes < 1:
            raise ConfigError(
                "buffer_max_events, flush_max_events and max_event_bytes must be at least 1"
            )
        self.stats = ClientStats()
        self._redis = redis
        self._script = redis.register_script(ENQUEUE_SCRIPT)
        self._functions = True  # the server has functions: FCALL, else EVAL of the script
        self._queue = queue
        self._capture_timeout = capture_timeout_s
        self._send_timeout = capture_timeout_s * SEND_TIMEOUT_FACTOR
        self._buffer_max = buffer_max_events
        self._flush_interval = flush_interval_s
        self._flush_max = flush_max_events
        self._max_event_bytes = max_event_bytes
        self._max_future_s = max_future_s
        self._extra_keys = frozenset(redact_extra_keys)
        self._provenance = provenance
        # "auto": one replica's confirmation, or none when no replica is connected.
        self._wait_auto = wait_replicas == "auto"
        self._wait_replicas = 1 if wait_replicas == "auto" else wait_replicas
        self._replicas_seen: int | None = None
        self._replicas_checked_at = -REPLICA_CHECK_S
        self._unreplicated_said_at = -UNREPLICATED_WARNING_INTERVAL
        self._lock = threading.Lock()  # counters and loop binding are touched from any thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: asyncio.Task[None] | None = None
        self._buffer: collections.deque[Item] = collections.deque()
        self._waiting = 0  # buffered items with a capture awaiting them
        # (deadline, item) of the captures awaiting on the client's loop, in deadline order.
        self._deadlines: collections.deque[tuple[float, Item]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None  # at the first deadline
        self._pending = asyncio.Event()  # the buffer has items (or the client is closing)
        self._urgent = asyncio.Event()  # send now: a capture waits, a batch is full, or closing
        self._closing = False
        spool = None if spool_dir is None else trusted_spool(Path(spool_dir), spool_max_bytes)
        self._spooler = (
            None
            if spool is None
            else Spooler(
                spool,
                enqueue=self._enqueue_payload,
                fail=self._fail_batch,
                probe=redis.ping,
                timeout_s=self._send_timeout,
                extra_keys=self._extra_keys,
            )
        )
        if self._spooler is not None and _running_loop() is not None:
            # Made in async code (the API's client): replay what an earlier process spooled now.
            self._bind()
            self._spooler.ensure_replayer()

    @property
    def spooled(self) -> int:
        """Events Redis did not take, appended to the spool."""
        return 0 if self._spooler is None else self._spooler.spooled

    @property
    def replayed(self) -> int:
        """Events replayed from the spool into Redis."""
        return 0 if self._spooler is None else self._spooler.replayed

    @classmethod
    def from_url(cls, url: str, **options: Unpack[ClientOptions]) -> AuditClient:
        """Make a client for the Redis at `url`; connects on first use, not now.

        `spool_dir` (opt-in) keeps what Redis cannot take on local disk until it can.
        """
        target = parse_redis_url(url)
        timeout = options.get("capture_timeout_s", _DEFAULTS.capture_timeout_s)
        redis: Redis = redis_client(
            target,
            connect_timeout=timeout,
            timeout=timeout,
            # One immediate retry: after a Redis restart or a failover the pooled connection
            # is dead, and the first command would fail without it.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        # With Sentinel, replication is the point: a batch counts once a replica has it.
        options.setdefault("wait_replicas", "auto" if target.is_sentinel else 0)
        return cls(redis, **options)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Unpack[ClientOptions]) -> AuditClient:
        """Make a client from the settings' Redis URL, queue, producer options and spool."""
        if settings.redis_url is None:
            raise ConfigError(
                "no Redis URL: set AUDITQ_REDIS_URL or start the embedded stack with `auditq run`"
            )
        configured = ClientOptions(
            queue=settings.queue,
            capture_timeout_s=settings.capture_timeout_s,
            buffer_max_events=settings.buffer_max_events,
            flush_interval_s=settings.flush_interval_s,
            flush_max_events=settings.flush_max_events,
            max_event_bytes=settings.max_event_bytes,
            max_future_s=settings.max_future_s,
            redact_extra_keys=settings.redact_extra_keys,
            spool_dir=settings.spool_dir,
            spool_max_bytes=settings.spool_max_bytes,
        )
        if settings.redis_wait_replicas is not None:
            configured["wait_replicas"] = settings.redis_wait_replicas
        return cls.from_url(settings.redis_url, **(configured | options))

    @classmethod
    def from_env(cls, **options: Unpack[ClientOptions]) -> AuditClient:
        """Make a client from the AUDITQ_* environment (AUDITQ_REDIS_URL, AUDITQ_QUEUE, …)."""
        return cls.from_settings(Settings.from_env(), **options)

    async def __aenter__(self) -> AuditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Producing.

    async def capture(self, event: AuditEvent) -> str | None:
        """Enqueue one event and return its id, or None (logged) if it is not known enqueued.

        With a spool, an event Redis did not take but that is durably spooled counts as
        enqueued (it will be delivered): its id is returned. `None` with the error name
        `DeliveryUncertain` means the event was sent and no answer came in time: it may
        still be stored, so resend it with the same `id` (stored once), never as a new event.
        """
        context = current_context()
        try:
            if self._closing:
                raise ClientClosed("the audit client is closed")
            data, done = self._prepare(event, context)
        except Exception as exc:
            self._fail(event, exc, context)
            return None
        try:
            loop = self._loop or self._bind()
            if loop is None or _running_loop() is loop:
                await self._enqueue_and_wait(data, done)
            else:
                await self._submit_to(loop, data, done)
        except Exception as exc:
            self._fail(done, exc, context)
            return None
        return str(done.id)

    def capture_nowait(self, event: AuditEvent) -> None:
        """Buffer one event for the next batch; return at once, from any thread."""
        context = current_context()
        try:
            if self._closing:
                raise ClientClosed("the audit client is closed")
            data, done = self._prepare(event, context)
            item: Item = (data, done, None)
            loop = self._loop or self._bind()
            if loop is None:
                raise RuntimeError("the audit client has no event loop yet: use it from async code")
            if _running_loop() is loop:
                self._push(item)
            elif not loop.is_running():
                raise RuntimeError("the audit client's event loop is not running")
            else:
                loop.call_soon_threadsafe(self._push_nowait, item)
        except Exception as exc:
            self._fail(event, exc, context)

    def bind_loop(self) -> None:
        """Bind the client to the running event loop now, from async code (an app's startup).

        A client binds to the loop of its first capture; bound at startup, sync code in other
        threads (a framework's thread pool) can `capture_nowait` before any async capture.
        """
        if _running_loop() is None:
            raise RuntimeError("bind_loop needs a running event loop: call it from async code")
        self._bind()

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT) -> None:
        """Send what is buffered (waiting at most `timeout_s`), then close the connection."""
        loop = self._loop
        if loop is not None and loop is not _running_loop() and loop.is_running():
            # The sender and the connections live on the client's loop: close them there.
            done = asyncio.run_coroutine_threadsafe(self._close(timeout_s), loop)
            await asyncio.wrap_future(done)
        else:
            await self._close(timeout_s)

    # Preparing an event, in the caller's thread.

    def _prepare(self, event: object, context: AuditContext | None) -> tuple[bytes, AuditEvent]:
        """Validate, complete from the context, redact and encode an event."""
        if not isinstance(event, AuditEvent):
            raise InvalidEvent(f"expected an AuditEvent, not {type(event).__name__}")
        action = event.action
        if type(action) is not str or action not in _valid_actions:
            if not isinstance(action, str) or len(action) > 128 or not _ACTION.fullmatch(action):
                raise InvalidEvent(f"`action` must match {ACTION_PATTERN}, not {action!r:.200}")
            if type(action) is str and len(_valid_actions) < VALID_ACTIONS_KEPT:
                _valid_actions.add(action)  # a service has few actions: each checked once
        try:
            if context is not None:
                event = with_context(event, context)
            done, data = finalize(
                event,
                extra_keys=self._extra_keys,
                max_bytes=self._max_event_bytes,
                max_future_s=self._max_future_s,
                validate=True,  # every field, exactly as the worker will
            )
        except InvalidEvent:
            raise
        except Exception as exc:
            # A Struct built in code is not validated: odd field values surface here.
            raise InvalidEvent(f"cannot encode the event: {exc}") from exc
        return data, done

    # Buffering and sending, on the client's loop.

    def _bind(self) -> asyncio.AbstractEventLoop | None:
        """Bind the client to the running loop on first use; return the client's loop."""
        with self._lock:
            if self._loop is None:
                self._loop = _running_loop()
            return self._loop

    async def _submit_to(
        self, loop: asyncio.AbstractEventLoop, data: bytes, event: AuditEvent
    ) -> None:
        """Buffer an event on the client's loop, another thread's, and wait (bounded) until
        its batch is sent."""
        if not loop.is_running():
            raise RuntimeError("the audit client's event loop is not running")
        # Another thread's loop: the buffer and connections belong to the client's loop, which
        # decides the outcome a little before this thread's bound.
        bound = self._capture_timeout * (1 - CROSS_THREAD_MARGIN)
        done = asyncio.run_coroutine_threadsafe(self._enqueue_and_wait(data, event, bound), loop)
        scope = asyncio.timeout(self._capture_timeout)
        try:
            async with scope:
                await asyncio.wrap_future(done)
        except TimeoutError:
            if not scope.expired():
                raise
            raise DeliveryUncertain(
                f"event {event.id}: the audit client's loop did not answer within "
                f"{self._capture_timeout} s; it may still be stored"
            ) from None

    async def _enqueue_and_wait(
        self, data: bytes, event: AuditEvent, bound: float | None = None
    ) -> None:
        """Wait up to `bound` (the capture bound by default) for the event's batch, then
        tell: sent, not sent, or unknown."""
        if self._closing:
            raise ClientClosed("the audit client is closed")
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        item: Item = (data, event, sent)
        self._push(item)
        # The bound answers through the future (_expire), not with asyncio.timeout (a fifth
        # of a capture's CPU). Captures on the client's loop share one bound, so their
        # deadlines come in order: one timer watches them all (_expire_due).
        timer = None
        if bound is None:
            deadline = loop.time() + self._capture_timeout
            self._deadlines.append((deadline, item))
            if self._watchdog is None:
                self._watchdog = loop.call_at(deadline, self._expire_due, loop)
        else:
            timer = loop.call_at(loop.time() + bound, self._expire, item)
        try:
            await sent
        except asyncio.CancelledError:
            # The caller was cancelled: an event it did not see accepted must not be sent.
            self._discard(item)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expire the captures whose bound passed; watch for the next deadline."""
        self._watchdog = None
        deadlines = self._deadlines
        now = loop.time()
        while deadlines:
            deadline, item = deadlines[0]
            if deadline > now and not _answered(item):
                self._watchdog = loop.call_at(deadline, self._expire_due, loop)
                return
            deadlines.popleft()
            self._expire(item)

    def _forget_answered(self) -> None:
        """Drop the deadlines of answered captures (batches are answered in order)."""
        deadlines = self._deadlines
        while deadlines and _answered(deadlines[0][1]):
            deadlines.popleft()

    def _expire(self, item: Item) -> None:
        """A capture's bound passed: tell it whether its event was not sent, or maybe sent."""
        sent = item[2]
        if sent is None or sent.done():
            return  # answered just as the bound passed
        if self._discard(item):
            sent.set_exception(TimeoutError(f"not enqueued within {self._capture_timeout} s"))
            return
        # A batch took it: on the wire (Redis may have run the script and not answered yet)
        # or being spooled. "Failed" would make a caller that retries with a new event store
        # it twice.
        sent.set_exception(
            DeliveryUncertain(
                f"event {item[1].id} was handed to Redis and not confirmed within "
                f"{self._capture_timeout} s; it may still be stored: resend it with the same "
                "id, never as a new event"
            )
        )

    def _push_nowait(self, item: Item) -> None:
        try:
            if self._closing:
                raise ClientClosed("the audit client is closed")
            self._push(item)
        except Exception as exc:
            self._fail(item[1], exc, None)

    def _push(self, item: Item) -> None:
        buffer = self._buffer
        if len(buffer) >= self._buffer_max:
            raise BufferFull(f"the buffer holds {self._buffer_max} events, its limit")
        buffer.append(item)
        if item[2] is not None:
            self._waiting += 1
        sender = self._sender
        if sender is None or sender.done():
            self._ensure_sender()
        spooler = self._spooler
        if spooler is not None:
            spooler.ensure_replayer()
        if not self._pending.is_set():
            self._pending.set()
        if self._is_urgent() and not self._urgent.is_set():
            self._urgent.set()

    def _discard(self, item: Item) -> bool:
        """Take a waiting item back out of the buffer; False when a batch already took it."""
        try:
            self._buffer.remove(item)
        except ValueError:
            return False
        if item[2] is not None:
            self._waiting -= 1
        return True

    def _is_urgent(self) -> bool:
        return self._waiting > 0 or len(self._buffer) >= self._flush_max or self._closing

    def _ensure_sender(self) -> None:
        if self._sender is None or self._sender.done():
            # An empty context: the sender must not see the request that happened to start it.
            self._sender = asyncio.get_running_loop().create_task(
                self._run_sender(), name="auditq-sender", context=contextvars.Context()
            )
            self._sender.add_done_callback(_log_sender_death)

    async def _run_sender(self) -> None:
        while True:
            await self._pending.wait()
            if not self._buffer:
                if self._closing:
                    return
                self._pending.clear()
                continue
            if not self._is_urgent():
                # Only capture_nowait events: linger a little so they share one job.
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._urgent.wait()
            batch = self._take_batch()
            if not self._buffer and not self._closing:
                self._pending.clear()
            if batch:
                await self._send(batch)

    def _take_batch(self) -> list[Item]:
        batch: list[Item] = []
        size = 2  # the brackets
        while self._buffer and len(batch) < self._flush_max:
            data = self._buffer[0][0]
            if batch and size + len(data) + 1 > BATCH_MAX_BYTES:
                break
            item = self._buffer.popleft()
            sent = item[2]
            if sent is not None:
                self._waiting -= 1
                if sent.done():
                    continue  # its capture already gave up and reported the failure
            batch.append(item)
            size += len(data) + 1
        return batch

    async def _send(self, batch: list[Item]) -> None:
        timeout = self._send_timeout
        spooler = self._spooler
        if spooler is not None:
            await spooler.unheld()  # the last replay pass: spooled events go first
            if spooler.spooling:
                await spooler.append(batch)
                return
            if any(item[2] is not None for item in batch):
                timeout = self._capture_timeout * REDIS_SHARE_WITH_SPOOL
        payload = b"[" + b",".join(item[0] for item in batch) + b"]"
        try:
            async with asyncio.timeout(timeout):
                # "finalized" (validated, completed, redacted here): the batch joins the
                # queue's open job while no worker has taken it, so many small batches (from
                # every producer) make one job, and the worker need not redo that work.
                awaited = any(item[2] is not None for item in batch)
                # A capture waits for this batch: the replicas' confirmation fits its bound.
                within = min(timeout, self._capture_timeout) if awaited else timeout
                await self._enqueue(self._job_args(payload), within_s=within)
        except asyncio.CancelledError:
            self._fail_batch(batch, ClientClosed("closed while the batch was being sent"))
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError | RedisTimeoutError):
                # The script went out and no answer came: Redis may have run it.
                exc = DeliveryUncertain(
                    f"Redis did not answer within {timeout} s; the batch may still be stored"
                )
            if spooler is not None:
                # Redis may have run the script and lost only the reply: spooling the batch
                # then delivers it twice, which its events' ids make harmless.
                spooler.start(exc)
                await spooler.append(batch)
                return
            self._fail_batch(batch, exc)
            return
        with self._lock:
            self.stats.sent += len(batch)
        for _, _, sent in batch:
            if sent is not None and not sent.done():
                sent.set_result(None)
        self._forget_answered()

    async def _enqueue(self, args: list[bytes | str], *, within_s: float) -> None:
        """Run the enqueue script; with wait_replicas, return only once replicas confirm it."""
        if self._wait_auto and self._replicas_seen == 0 and await self._replicas_connected() == 0:
            # Known to have no replica (rechecked every REPLICA_CHECK_S): no WAIT to sit out.
            await self._enqueue_once(args, within_s=within_s, wait=False)
            self._count_unreplicated(args[0])
            return
        try:
            confirmed = await self._enqueue_once(args, within_s=within_s)
        except ResponseError as exc:
            if is_function_missing(exc):
                # A Redis that lost the library (a fresh server, a failover, FUNCTION FLUSH):
                # load it again where this client may (a producer user may not; its workers do).
                await load_functions(self._redis)
            elif has_no_functions(exc):
                self._functions = False  # before Redis 7: the same script, as EVAL
            else:
                raise
            confirmed = await self._enqueue_once(args, within_s=within_s)
        if not self._wait_replicas or confirmed >= self._wait_replicas:
            return
        if self._wait_auto and await self._replicas_connected() == 0:
            self._count_unreplicated(args[0])  # no replica to wait for: accepted as it is
            return
        raise NotReplicated(
            f"{confirmed} of {self._wait_replicas} replicas confirmed the batch "
            f"within {self._wait_ms(within_s)} ms"
        )

    async def _replicas_connected(self) -> int | None:
        """How many replicas the Sentinels see up for the primary (checked at most every
        REPLICA_CHECK_S); None when that cannot be told (then WAIT decides alone)."""
        now = time.monotonic()
        if now - self._replicas_checked_at < REPLICA_CHECK_S:
            return self._replicas_seen
        self._replicas_checked_at = now
        pool = self._redis.connection_pool
        manager = getattr(pool, "sentinel_manager", None)
        self._replicas_seen = None  # the Sentinels do not answer: strict, as with a number
        for sentinel in manager.sentinels if manager is not None else ():
            try:
                replicas = await sentinel.sentinel_slaves(pool.service_name)  # type: ignore[attr-defined]
            except Exception as exc:
                logger.debug("asking a Sentinel for replicas failed: %s", type(exc).__name__)
                continue
            self._replicas_seen = sum(1 for r in replicas if _streaming(r))
            break
        return self._replicas_seen

    def _count_unreplicated(self, payload: bytes | str) -> None:
        """Count a batch accepted with no replica connected; say so once a minute."""
        try:
            events = len(_raw_list.decode(payload))
        except msgspec.DecodeError:
            events = 1
        with self._lock:
            self.stats.unreplicated += events
        now = time.monotonic()
        if now - self._unreplicated_said_at >= UNREPLICATED_WARNING_INTERVAL:
            self._unreplicated_said_at = now
            logger.warning(
                "the Redis primary has no replica connected: batches are accepted unreplicated "
                "(%d events so far; AUDITQ_REDIS_WAIT_REPLICAS=auto; a number makes it strict)",
                self.stats.unreplicated,
            )

    def _wait_ms(self, within_s: float) -> int:
        # Within the socket timeout (the capture bound) too, or the read would time out first.
        return max(1, int(min(within_s, self._capture_timeout) * WAIT_SHARE * 1000))

    async def _enqueue_once(
        self, args: list[bytes | str], *, within_s: float, wait: bool = True
    ) -> int:
        """Run the enqueue function (or script) once; with wait_replicas, in one pipeline with
        WAIT, returning how many replicas confirmed it."""
        redis = self._redis
        if not self._wait_replicas or not wait:
            if self._functions:
                await redis.fcall(ENQUEUE_FUNCTION, 1, self._queue, *args)  # type: ignore[arg-type,misc]
            else:
                await self._script(keys=[self._queue], args=args)
            return 0
        wait_ms = self._wait_ms(within_s)
        # One round trip, one connection: WAIT covers the writes of its own connection. EVAL,
        # not EVALSHA: a NOSCRIPT (a new primary) would cost a whole WAIT before the retry.
        async with redis.pipeline(transaction=False) as pipe:
            if self._functions:
                pipe.fcall(ENQUEUE_FUNCTION, 1, self._queue, *args)  # type: ignore[arg-type]
            else:
                pipe.eval(ENQUEUE_SCRIPT, 1, self._queue, *args)  # type: ignore[arg-type]
            pipe.wait(self._wait_replicas, wait_ms)
            *_, confirmed = await pipe.execute()
        return int(confirmed)

    async def _enqueue_payload(self, payload: bytes, task_id: str) -> None:
        """Enqueue a batch's payload as a job with this task id (the spooler's replay)."""
        await self._enqueue(self._job_args(payload, task_id), within_s=self._send_timeout)

    def _job_args(self, payload: bytes, task_id: str = "") -> list[bytes | str]:
        """The enqueue script's arguments for `payload`: one job of its own, with its
        provenance claim and tag, when the client has a provenance (the API's)."""
        provenance = self._provenance
        if provenance is None:
            return [payload, task_id, "finalized"]
        task_id = task_id or f"{provenance.task_prefix}-{uuid.uuid4().hex}"
        tag = provenance_tag(provenance.key, task_id=task_id, via=provenance.via, payload=payload)
        return [payload, task_id, "finalized", provenance.via, tag]

    def _fail_batch(self, batch: Iterable[Item], exc: Exception) -> None:
        for _, event, sent in batch:
            if sent is None:
                self._fail(event, exc, None)
            elif not sent.done():
                sent.set_exception(exc)  # its capture logs it

    async def _close(self, timeout_s: float) -> None:
        if self._closing:
            return
        self._closing = True
        if self._spooler is not None:
            self._spooler.stop()
        self._pending.set()
        self._urgent.set()
        sender = self._sender
        if sender is not None and not sender.done() and sender.get_loop() is _running_loop():
            finished, _ = await asyncio.wait({sender}, timeout=timeout_s)
            if not finished:
                sender.cancel()
                await asyncio.wait({sender})
        if self._spooler is not None:
            await self._spooler.aclose()  # what is still spooled stays for the next client
        leftovers = list(self._buffer)
        self._buffer.clear()
        self._waiting = 0
        self._fail_batch(leftovers, ClientClosed(f"closed before sending, after {timeout_s} s"))
        self._deadlines.clear()  # every capture has its answer now
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        try:
            await self._redis.aclose()
        except Exception as exc:
            logger.warning("closing the audit client's Redis connection failed: %s", exc)

    # Reporting failures.

    def _fail(self, event: object, exc: BaseException, context: AuditContext | None) -> None:
        stats = self.stats
        with self._lock:
            if isinstance(exc, BufferFull):
                stats.dropped += 1
            elif isinstance(exc, DeliveryUncertain):
                stats.uncertain += 1
            elif isinstance(exc, SpoolFull):
                stats.spool_dropped += 1
            else:
                stats.failed += 1
        log_failure(event, exc, context, self._extra_keys)


# The running loop, or None outside one: get_running_loop's own C lookup without its
# exception, so no Python frame and no try in every capture_nowait.
_running_loop = asyncio._get_running_loop


def _streaming(replica: dict[str, Any]) -> bool:
    """Whether a replica (as a Sentinel lists it) is up and streams the primary's writes: one
    still syncing (an old primary back after a failover) cannot confirm a WAIT yet."""
    down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    return not down and replica.get("master-link-status") == "ok"


def _answered(item: Item) -> bool:
    sent = item[2]
    return sent is None or sent.done()


def _log_sender_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # Restarted on the next event; said here so a bug is not silent.
        logger.error("the audit sender stopped: %s: %s", type(exc).__name__, exc)

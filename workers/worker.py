"""The arq worker: takes jobs of events, writes them in batches, retries or sets them aside."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from arq import Retry, Worker, cron, func
from arq.connections import RedisSettings
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import db, dead_letter
from service.errors import InvalidEvent
from service.events import (
    AuditEvent,
    check_complete,
    decode_json,
    derived_event_id,
    finalize,
)
from service.integrity.keys import load_or_create_private_key
from service.keys import (
    COMPLETE_MAXLEN,
    EVENTS_DEAD_LETTERED,
    EVENTS_STORED,
    STORED_COUNTER_TTL,
    attempts_key,
    complete_key,
    counters_key,
    stored_key,
)
from service.partitions import ensure_partitions
from service.queue import JOB_FUNCTION, deserialize_job, serialize_job
from service.redaction import redact_sensitive_in_string
from service.settings import Settings
from workers import heartbeat, maintenance, sealer
from workers.erased import ErasedSubjects
from workers.retry import (
    ARQ_MAX_TRIES,
    DEFER_WHILE_OPEN,
    MAX_ATTEMPTS,
    Breaker,
    Failure,
    backoff,
    classify,
)
from workers.writer import Rejected, write_events

logger = logging.getLogger("auditq.worker")

STATE = "auditq"  # key of WorkerState in arq's ctx
POLL_DELAY = 0.02  # seconds between queue polls; bounds the pickup latency of a new job
REDIS_DOWN_PAUSE = 0.5  # seconds between polls while Redis does not answer
SHUTDOWN_GRACE = 20.0  # seconds running jobs get to finish on SIGTERM before they are requeued
SUCCESS_PREFIX = "[AuditLogWorker] Successfully logged:"
UNEXPECTED_RETRY_DELAY = 5.0  # seconds before a job that failed in an unforeseen way runs again

_batch_decoder = msgspec.json.Decoder(list[AuditEvent] | AuditEvent)


@dataclasses.dataclass
class Task:
    """What a job function knows of the job it runs."""

    id: str
    enqueued_ms: int
    job_try: int
    failed_attempts: int = 0  # unknown-error attempts before the one that succeeded
    finalized: bool = False  # from auditq's client: each event's id and ts fixed at capture


@dataclasses.dataclass(eq=False)
class WorkerState:
    """Everything a job needs, made once per worker process."""

    settings: Settings
    breaker: Breaker = dataclasses.field(default_factory=Breaker)
    pool: Any = None  # asyncpg.Pool once started
    redis: Any = None  # arq's ArqRedis once started
    worker: Worker | None = None
    events_stored: int = 0
    events_dead_lettered: int = 0
    tasks_complete: int = 0  # tasks whose every event was stored
    tasks_failed: int = 0  # tasks that left events in the dead letter
    worker_id: str = dataclasses.field(default_factory=heartbeat.new_worker_id)
    erased: ErasedSubjects | None = None  # erased subjects (workers/erased.py), made at startup
    _probe: asyncio.Task[None] | None = None
    _heartbeat: asyncio.Task[None] | None = None
    _sealer: asyncio.Task[None] | None = None

    def trip(self, exc: BaseException) -> None:
        """Open the breaker: stop taking jobs and probe the database until it answers."""
        self.breaker.trip(exc)
        if self.worker is not None:
            self.worker.allow_pick_jobs = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while self.breaker.is_open:
            await asyncio.sleep(self.breaker.next_pause())
            try:
                conn = await asyncpg.connect(self.settings.worker_url, timeout=2)
                await conn.close()
            except Exception as exc:  # every failure means "still down"
                logger.debug("database probe failed: %s", type(exc).__name__)
                continue
            # Connections made before the outage are dead; replace them on next use.
            await self.pool.expire_connections()
            self.breaker.close()
            if self.worker is not None:
                self.worker.allow_pick_jobs = True


def _parse(
    payload: str, task: Task, state: WorkerState, finalized: bool = False
) -> tuple[list[AuditEvent], list[Rejected]]:
    """Decode a job's payload into valid events (defaults filled) and rejected ones.

    `finalized`: the producer (auditq's client) completed and redacted each event already;
    an event that is complete is then stored as it is, after its size is checked again."""
    settings = state.settings

    def complete(index: int, event: AuditEvent) -> AuditEvent:
        if finalized and None not in (event.id, event.ts, event.category, event.presentation):
            check_complete(event, max_bytes=settings.max_event_bytes)
            return event
        done, _ = finalize(
            event,
            extra_keys=settings.redact_extra_keys,
            max_bytes=settings.max_event_bytes,
            default_id=None
            if event.id is not None
            else derived_event_id(task.id, index, task.enqueued_ms),
            default_ts=None
            if event.ts is not None
            else datetime.fromtimestamp(task.enqueued_ms / 1000, UTC),
        )
        return done

    events: list[AuditEvent] = []
    rejected: list[Rejected] = []
    try:  # fast path: the whole payload is valid
        decoded = _batch_decoder.decode(payload)
        items: list[Any] = decoded if isinstance(decoded, list) else [decoded]
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raw = decode_json(payload)  # raises InvalidEvent for bad JSON; else find the bad events
        items = raw if isinstance(raw, list) else [raw]
    for index, item in enumerate(items):
        try:
            event = item if isinstance(item, AuditEvent) else msgspec.convert(item, AuditEvent)
            events.append(complete(index, event))
        except (msgspec.ValidationError, InvalidEvent) as exc:
            rejected.append(Rejected(index, item, f"invalid event at index {index}: {exc}"))
    return events, rejected


async def store_events(
    ctx: dict[str, Any], payload: str, *, invalid_utf8: bool = False, finalized: bool = False
) -> dict[str, Any]:
    """Store one job's events; set aside what cannot be stored, never lose any."""
    try:
        return await _store_events(ctx, payload, invalid_utf8=invalid_utf8, finalized=finalized)
    except Retry:
        raise
    except Exception as exc:
        # Never let arq fail the job: it would keep the events only in a result that expires.
        # Whatever this is (Redis gone while dead-lettering, a bug), the job is tried again.
        logger.error(
            "[AuditLogWorker] task %s failed unexpectedly (%s: %s); retrying in %.0f s",
            ctx["job_id"],
            type(exc).__name__,
            redact_sensitive_in_string(str(exc)),
            UNEXPECTED_RETRY_DELAY,
        )
        raise Retry(defer=UNEXPECTED_RETRY_DELAY) from exc


async def _store_events(
    ctx: dict[str, Any], payload: str, *, invalid_utf8: bool, finalized: bool
) -> dict[str, Any]:
    state: WorkerState = ctx[STATE]
    enqueued: datetime = ctx["enqueue_time"]
    task = Task(
        ctx["job_id"], int(enqueued.timestamp() * 1000), ctx["job_try"], finalized=finalized
    )
    started = time.perf_counter()
    started_ms = int(time.time() * 1000)
    if invalid_utf8:
        await _dead_letter(
            state, task, payload, 0, "InvalidEncoding", "payload is not valid UTF-8", "invalid"
        )
        return {"stored": 0, "rejected": 1}
    try:
        events, invalid = _parse(payload, task, state, finalized)
    except InvalidEvent as exc:
        await _dead_letter(state, task, payload, 0, "InvalidJSON", str(exc), "invalid")
        return {"stored": 0, "rejected": 1}

    inserted, refused = 0, []
    erased = state.erased
    if erased is not None and (events or invalid):  # an erased subject's: pseudonymised
        await erased.refresh(state.redis, state.pool, state.settings.queue)
        events = erased.apply(events)
    if events:
        result = await _write(state, task, events)
        if result is None:  # the retry policy gave up: the whole batch is dead-lettered
            return {"stored": 0, "rejected": len(events) + len(invalid)}
        inserted, refused = result.inserted, result.rejected
    rejected = sorted(invalid + refused, key=lambda r: r.index)
    if rejected:
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        await _dead_letter(
            state,
            task,
            [
                erased.clear_document(item) if erased is not None else item
                for item in (msgspec.to_builtins(r.event) for r in rejected)
            ],
            len(rejected),
            "RejectedEvent",
            rejected[0].reason + more,
            "invalid" if invalid else "data",
        )
    stored = len(events) - len(refused)
    state.events_stored += stored
    await _record_stored(state, task, stored, started_ms, complete=not rejected)
    if logger.isEnabledFor(logging.DEBUG):
        bad = {id(r.event) for r in refused}
        for event in events:
            if id(event) not in bad:
                entity = event.entity
                logger.debug(
                    "%s %s %s:%s",
                    SUCCESS_PREFIX,
                    event.action,
                    entity.type if entity else None,
                    entity.id if entity else None,
                )
    logger.info(
        "[AuditLogWorker] task %s: %d events stored (%d new), %d rejected in %.1f ms",
        task.id,
        stored,
        inserted,
        len(rejected),
        (time.perf_counter() - started) * 1000,
    )
    # The result arq keeps for an hour shows the redacted events; the raw argument is dropped
    # from it (service/queue.py), so a foreign producer's unredacted secrets are not kept.
    return {"stored": stored, "rejected": len(rejected), "events": events}


async def _record_stored(
    state: WorkerState, task: Task, stored: int, started_ms: int, *, complete: bool
) -> None:
    """Count stored events (per second and in total) and log a complete task in its stream."""
    queue = state.settings.queue
    now_ms = int(time.time() * 1000)
    try:
        async with state.redis.pipeline(transaction=False) as pipe:
            if stored:
                second = stored_key(queue, now_ms // 1000)
                pipe.incrby(second, stored)
                pipe.expire(second, STORED_COUNTER_TTL)
                pipe.hincrby(counters_key(queue), EVENTS_STORED, stored)
            if complete:
                # The complete history is this capped stream, not 100,000 arq result keys.
                fields = {
                    "id": task.id,
                    "event_count": stored,
                    "attempts": task.failed_attempts + 1,
                    "enqueued_at_ms": task.enqueued_ms,
                    "started_at_ms": started_ms,
                    "finished_at_ms": now_ms,
                }
                pipe.xadd(complete_key(queue), fields, maxlen=COMPLETE_MAXLEN, approximate=True)
            await pipe.execute()
    except Exception as exc:  # bookkeeping must never fail a task whose events are stored
        logger.warning("task %s: stats not recorded: %s: %s", task.id, type(exc).__name__, exc)
    if complete:
        state.tasks_complete += 1


async def _write(state: WorkerState, task: Task, events: list[AuditEvent]) -> Any:
    """Write the batch under the retry policy; None when it was dead-lettered."""
    if state.breaker.is_open:
        raise Retry(defer=DEFER_WHILE_OPEN)
    try:
        async with asyncio.timeout(state.settings.job_timeout_s * 0.8):
            async with state.pool.acquire() as conn:
                result = await write_events(conn, events, keyed=task.finalized)
    except Exception as exc:
        failure = classify(exc)
        if failure is Failure.INFRASTRUCTURE:
            state.trip(exc)
            raise Retry(defer=DEFER_WHILE_OPEN) from exc
        attempts = int(await state.redis.hincrby(attempts_key(state.settings.queue), task.id, 1))
        message = redact_sensitive_in_string(str(exc))
        if attempts < MAX_ATTEMPTS:
            delay = backoff(attempts)
            logger.warning(
                "task %s attempt %d/%d failed (%s: %s); retrying in %.0f s",
                task.id,
                attempts,
                MAX_ATTEMPTS,
                type(exc).__name__,
                message,
                delay,
            )
            raise Retry(defer=delay) from exc
        payload = [msgspec.to_builtins(e) for e in events]
        await _dead_letter(
            state, task, payload, len(events), type(exc).__name__, message, "unknown", attempts
        )
        return None
    if task.job_try > 1:
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.hget(attempts_key(state.settings.queue), task.id)
            pipe.hdel(attempts_key(state.settings.queue), task.id)
            failed, _ = await pipe.execute()
        task.failed_attempts = int(failed or 0)
    return result


async def _dead_letter(
    state: WorkerState,
    task: Task,
    payload: Any,
    event_count: int,
    error_name: str,
    message: str,
    classification: str,
    attempts: int = 1,
) -> None:
    letter = await dead_letter.add(
        state.redis,
        state.settings.queue,
        task_id=task.id,
        payload=payload,
        event_count=event_count,
        error_name=error_name,
        message=message,
        classification=classification,
        attempts=attempts,
        enqueued_at_ms=task.enqueued_ms,
        ttl_days=state.settings.dead_letter_ttl_days,
    )
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.hdel(attempts_key(state.settings.queue), task.id)
        pipe.hincrby(counters_key(state.settings.queue), EVENTS_DEAD_LETTERED, event_count)
        await pipe.execute()
    state.events_dead_lettered += event_count
    state.tasks_failed += 1
    logger.error(
        "[AuditLogWorker] task %s set aside in the dead letter: %s: %s",
        task.id,
        letter.error_name,
        letter.message,
    )


async def maintain(ctx: dict[str, Any]) -> None:
    """Make partitions ahead and drop those past retention."""
    state: WorkerState = ctx[STATE]
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=state.settings.partitions_ahead_months)
        if state.settings.retention_days:
            await maintenance.drop_expired_partitions(
                conn, retention_days=state.settings.retention_days
            )


async def _startup(ctx: dict[str, Any]) -> None:
    state: WorkerState = ctx[STATE]
    state.redis = ctx["redis"]
    assert state.settings.worker_url is not None
    state.pool = await db.create_pool(state.settings.worker_url, size=state.settings.db_pool_size)
    state.erased = ErasedSubjects(state.settings.subject_entity_types)
    # Before the first job: a month's rows must never land in the default partition while
    # that month's own partition is about to be made (the key is unique per partition).
    async with state.pool.acquire() as conn:
        await ensure_partitions(conn, months_ahead=state.settings.partitions_ahead_months)
    state._heartbeat = asyncio.get_running_loop().create_task(
        heartbeat.run(state, worker_id=state.worker_id), name="auditq-heartbeat"
    )
    if state.settings.sealing:  # integrity checkpoints (docs/integrity.md)
        key = load_or_create_private_key(state.settings.seal_key_path)
        state._sealer = asyncio.get_running_loop().create_task(
            sealer.run(state.pool, key, interval_s=state.settings.seal_interval_s),
            name="auditq-sealer",
        )


async def _shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState = ctx[STATE]
    if state._probe is not None:
        state._probe.cancel()
    if state._sealer is not None:
        state._sealer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state._sealer
    if state._heartbeat is not None:
        state._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state._heartbeat
        with contextlib.suppress(Exception):  # Redis away: the heartbeat expires on its own
            await heartbeat.forget(state, worker_id=state.worker_id)
    if state.pool is not None:
        await state.pool.close()


class _HideJobArguments(logging.Filter):
    """Drop the job arguments from arq's "job started" line: they are the events themselves,
    secrets and all when a foreign producer did not redact. arq has no option for this."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 4 and "→" in str(record.msg):
            record.args = (*record.args[:2], "…", record.args[3])
        return True


# Any Redis failure in the poll loop, e.g. a WatchError that redis-py raises for a connection
# lost while WATCHing, or READONLY/LOADING replies around a failover or restart.
_REDIS_DOWN = (RedisError, OSError)


class _Worker(Worker):
    """arq's worker, waiting out a Redis outage of any length instead of exiting.

    arq ends `main()` on the first Redis error of its poll loop, so a Redis restart used to
    stop the worker for good (its queue intact, but nothing stored until someone restarted
    it). Jobs caught by the outage are safe: their events are stored idempotently, and a job
    whose end could not be recorded is run again after its in-progress key expires.
    """

    _redis_down_since: float | None = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except _REDIS_DOWN as exc:
            if self._redis_down_since is None:
                self._redis_down_since = time.monotonic()
                logger.warning(
                    "Redis fails (%s: %s); waiting for it",
                    type(exc).__name__,
                    redact_sensitive_in_string(str(exc)),
                )
            await asyncio.sleep(REDIS_DOWN_PAUSE)
            return
        if self._redis_down_since is not None:
            down_s = time.monotonic() - self._redis_down_since
            self._redis_down_since = None
            logger.warning("Redis answers again after %.1f s", down_s)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            counted = self.job_counter
            try:
                await super().start_jobs([job_id])
            except _REDIS_DOWN:
                if self.job_counter > counted and job_id.decode() not in self.tasks:
                    # arq took a slot for a job it could not start: give it back, or a few
                    # outages would leave the worker with no slot to run anything.
                    self.job_counter -= 1
                    self.sem.release()
                raise


def redis_settings(url: str) -> RedisSettings:
    """arq's Redis settings with a retry policy, so a Redis restart is ridden out."""
    settings = RedisSettings.from_dsn(url)
    settings.retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), 8)
    # OSError too: redis-py retries a failed connect only for the errors listed here, and a
    # refused connection is still a bare OSError at that point.
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    settings.conn_retries = 30
    return settings


def build_worker(settings: Settings, *, handle_signals: bool = False) -> Worker:
    """Make the arq worker for `settings` (URLs resolved)."""
    assert settings.redis_url and settings.database_url
    state = WorkerState(settings)
    arq_logger = logging.getLogger("arq.worker")
    if not any(isinstance(f, _HideJobArguments) for f in arq_logger.filters):
        arq_logger.addFilter(_HideJobArguments())
    worker = _Worker(
        functions=[func(store_events, name=JOB_FUNCTION, max_tries=ARQ_MAX_TRIES)],
        cron_jobs=[cron(maintain, name="maintain", minute={7}, run_at_startup=True)],
        redis_settings=redis_settings(settings.redis_url),
        queue_name=settings.queue,
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.job_timeout_s,
        poll_delay=POLL_DELAY,
        max_tries=ARQ_MAX_TRIES,
        keep_result=3600,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={STATE: state},
        handle_signals=handle_signals,
        job_completion_wait=int(SHUTDOWN_GRACE),
        log_results=False,
    )
    state.worker = worker
    return worker


def worker_state(worker: Worker) -> WorkerState:
    state: WorkerState = worker.ctx[STATE]
    return state


async def stop_worker(worker: Worker, *, grace: float = SHUTDOWN_GRACE) -> None:
    """Stop taking jobs, let running ones finish (up to `grace`), then close."""
    worker.allow_pick_jobs = False
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), grace)
    await worker.close()


async def run_until(worker: Worker, stop: asyncio.Event) -> None:
    """Run `worker` until `stop` is set, then stop it without losing a job."""
    main = asyncio.create_task(worker.main())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if main.done():
        waiter.cancel()
        main.result()  # a worker that died on its own: raise why
        return
    await stop_worker(worker)
    main.cancel()  # worker.main() polls forever; close() only cancels a task arq started itself
    with contextlib.suppress(asyncio.CancelledError):
        await main

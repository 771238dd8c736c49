"""The job: decode a payload of events, write them in one batch, retry or set aside the rest."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import msgspec
from arq import Retry
from redis.exceptions import RedisError

from service.errors import InvalidEvent
from service.events import (
    MAX_NESTING,
    PG_INFINITIES,
    AuditEvent,
    check_complete,
    decode_json,
    derived_event_id,
    finalize,
)
from service.queue import dead_letter
from service.queue.jobs import (
    deserialize_job,
    joined_segments,
    provenance_tag,
    redact_job_argument,
    serialize_job,
)
from service.queue.keys import (
    COMPLETE_MAXLEN,
    EVENTS_DEAD_LETTERED,
    EVENTS_STORED,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    LIVE_MAXLEN,
    STORED_COUNTER_TTL,
    attempts_key,
    complete_key,
    counters_key,
    live_key,
    oversized_key,
    stored_key,
    unfinished_key,
)
from service.queue.live import live_entry
from service.redaction import (
    holds_text_only_marks,
    may_hold_secret_json_text,
    redact_sensitive_in_string,
)
from service.settings import Settings
from workers.retry import (
    DEFER_WHILE_OPEN,
    MAX_ATTEMPTS,
    MAX_UNFINISHED_RUNS,
    Failure,
    backoff,
    classify,
)
from workers.state import STATE, Task, WorkerState
from workers.wire_check import checked_events, free_form_ok
from workers.writer import Rejected, write_events, write_json_events

logger = logging.getLogger("auditq.worker")

SUCCESS_PREFIX = "[AuditLogWorker] Successfully logged:"
UNEXPECTED_RETRY_DELAY = 5.0  # seconds before a job that failed in an unforeseen way runs again
JOB_BUDGET_SHARE = 0.9  # of arq's job_timeout: the whole job ends (or retries) before arq's
WRITE_BUDGET_SHARE = 0.8  # of arq's job_timeout: the write, inside the job's budget

_batch_decoder = msgspec.json.Decoder(list[AuditEvent] | AuditEvent)
T = TypeVar("T")


# The one-statement path checks the whole text at once against the wire format, by AuditEvent's
# own rules (workers/wire_check.py): the "finalized" flag is a hint anyone can set, not a proof.
_raw_decoder = msgspec.json.Decoder(list[msgspec.Raw])
# In JSON text without a backslash every quote delimits a string: what is outside the strings
# is every other piece between quotes. Of that only the brackets count, arrays as objects
# (that they pair up is the decoder's to check). Brackets and quotes are kept first, in one
# pass, so the split works on a few bytes an event rather than on all of its text.
_NOT_BRACKETS_OR_QUOTES = bytes(c for c in range(256) if c not in b'{}[]"')
_AS_BRACES = bytes.maketrans(b"[]", b"{}")


def _nests_at_most(data: bytes, levels: int) -> bool:
    """Tell whether JSON text without a backslash nests at most `levels` deep."""
    text = b"".join(data.translate(_AS_BRACES, _NOT_BRACKETS_OR_QUOTES).split(b'"')[::2])
    for _ in range(levels):  # each pass takes the innermost level away
        if not text:
            return True
        text = text.replace(b"{}", b"")
    return not text


_FALL_BACK = object()  # the job's events go the way of a foreign producer's


def _parse(
    payload: str, task: Task, state: WorkerState, finalized: bool = False, *, offset: int = 0
) -> tuple[list[AuditEvent], list[Rejected]]:
    """Decode a job's payload into valid events (defaults filled) and rejected ones.

    `finalized`: the producer (auditq's client) completed and redacted each event already;
    an event that is complete is then stored as it is, after its size is checked again."""
    settings = state.settings

    def complete(index: int, event: AuditEvent) -> AuditEvent:
        if finalized and None not in (event.id, event.ts, event.category, event.presentation):
            # Redacted again with this worker's rules and extra keys.
            return check_complete(
                event,
                max_bytes=settings.max_event_bytes,
                extra_keys=settings.redact_extra_keys,
                max_future_s=settings.max_future_s,
            )
        done, _ = finalize(
            event,
            extra_keys=settings.redact_extra_keys,
            max_bytes=settings.max_event_bytes,
            max_future_s=settings.max_future_s,
            default_id=None
            if event.id is not None
            else derived_event_id(task.id, offset + index, task.enqueued_ms),
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
            rejected.append(
                Rejected(offset + index, item, f"invalid event at index {index}: {exc}")
            )
    return events, rejected


async def store_events(
    ctx: dict[str, Any],
    payload: str,
    *more: str,
    invalid_utf8: bool | list[int] = False,
    finalized: bool = False,
    via: str | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """Store one job's events; set aside what cannot be stored, never lose any.

    A merged job (service/queue/enqueue.lua) has one argument (segment) per producer batch: each
    is read and checked alone, so a bad one is set aside alone and the others are stored."""
    state: WorkerState = ctx[STATE]
    received_via, verified = _received_via(state, ctx["job_id"], payload, via, tag)
    segments = [payload, *more]
    bad_utf8 = frozenset(
        (0,) if invalid_utf8 is True else invalid_utf8 if isinstance(invalid_utf8, list) else ()
    )
    try:
        # Inside the try: Redis failing here means a retry, never a job arq fails itself.
        if await _runs_never_ended(state, ctx["job_id"], segments):
            return {"stored": 0, "rejected": len(segments)}
        # The whole job within its budget, not only the write: past arq's job_timeout arq
        # would fail the job itself, keeping its events only in a result that expires.
        async with asyncio.timeout(state.settings.job_timeout_s * JOB_BUDGET_SHARE):
            return await _store_events(
                ctx,
                segments,
                bad_utf8=bad_utf8,
                finalized=finalized,
                received_via=received_via,
                verified=verified,
            )
    except Retry:
        if not (invalid_utf8 or finalized or more):
            await redact_waiting_job(ctx["redis"], ctx["job_id"], payload, state.settings)
        raise
    except Exception as exc:
        # Never let arq fail the job: it would keep the events only in a result that expires.
        # Whatever this is (Redis gone while dead-lettering, a bug, the budget spent), the job
        # is tried again; every step of it is idempotent.
        logger.error(
            "[AuditLogWorker] task %s failed unexpectedly (%s: %s); retrying in %.0f s",
            ctx["job_id"],
            type(exc).__name__,
            redact_sensitive_in_string(str(exc), state.settings.redact_extra_keys),
            UNEXPECTED_RETRY_DELAY,
        )
        if not (invalid_utf8 or finalized or more):
            await redact_waiting_job(ctx["redis"], ctx["job_id"], payload, state.settings)
        raise Retry(defer=UNEXPECTED_RETRY_DELAY) from exc
    finally:
        with contextlib.suppress(Exception):  # Redis away: counted as one more unfinished run
            await state.redis.hdel(unfinished_key(state.settings.queue), ctx["job_id"])


async def _runs_never_ended(state: WorkerState, task_id: str, segments: list[str]) -> bool:
    """Count this run as unfinished until it ends; a task whose earlier runs never ended
    (each killed its worker) is set aside with its text instead of being run again."""
    queue = state.settings.queue
    runs = int(await state.redis.hincrby(unfinished_key(queue), task_id, 1))
    if runs <= MAX_UNFINISHED_RUNS:
        return False
    message = (
        f"{runs - 1} runs of this task never ended (its worker died each time): "
        "set aside instead of being run again"
    )
    task = Task(task_id, 0, runs)
    for number, segment in enumerate(segments):
        letter_id = task_id if len(segments) == 1 else f"{task_id}.{number}"
        await _set_aside(state, task, letter_id, segment, "UnfinishedRuns", message)
    await state.redis.hdel(unfinished_key(queue), task_id)
    return True


async def redact_waiting_job(redis: Any, job_id: str, payload: str, settings: Settings) -> None:
    """A job tried again waits in Redis: keep its argument there redacted, not as a foreign
    producer sent it. The next try reads the same events in the same order (the same ids)."""
    redacted = redact_job_argument(payload, settings.redact_extra_keys)
    if redacted is payload:
        return
    key = JOB_PREFIX + job_id
    try:
        raw = await redis.get(key)
        if raw is None:
            return
        job = deserialize_job(raw)
        job["a"] = [redacted]
        await redis.set(key, serialize_job(job), keepttl=True)
    except Exception as exc:  # Redis away: the job is tried again as it is
        logger.warning("task %s: its argument is not redacted in Redis yet: %s", job_id, exc)


def _received_via(
    state: WorkerState, task_id: str, payload: str, via: str | None, tag: str | None
) -> tuple[str, bool]:
    """Who delivered the job, and whether the API vouched for it: the API's claim when its
    tag checks out, else the queue."""
    queue_via = f"redis:{state.settings.queue}"
    if via is None:
        return queue_via, False
    key = state.provenance_key
    if key is not None and tag is not None:
        expected = provenance_tag(key, task_id=task_id, via=via, payload=payload.encode())
        if hmac.compare_digest(expected, tag):
            return via, True
    logger.warning(
        "[AuditLogWorker] task %s claims to come from %r without a valid tag: stored as %s",
        task_id,
        via[:128],
        queue_via,
    )
    return queue_via, False


async def _store_events(
    ctx: dict[str, Any],
    segments: list[str],
    *,
    bad_utf8: frozenset[int],
    finalized: bool,
    received_via: str,
    verified: bool,
) -> dict[str, Any]:
    state: WorkerState = ctx[STATE]
    enqueued: datetime = ctx["enqueue_time"]
    task = Task(
        ctx["job_id"],
        int(enqueued.timestamp() * 1000),
        ctx["job_try"],
        finalized=finalized,
        received_via=received_via,
        verified=verified,
    )
    started = time.perf_counter()
    started_ms = int(time.time() * 1000)
    if finalized and not bad_utf8:
        done = await _store_completed(state, task, joined_segments(segments), started, started_ms)
        if done is not None:
            return done
    events, invalid, unreadable = await _read_segments(state, task, segments, bad_utf8)
    events = _first_of_each_id(events)
    inserted: list[tuple[int, datetime]] = []
    refused: list[Rejected] = []
    erased = state.erased
    if erased is not None and (events or invalid):  # an erased subject's: pseudonymised
        await erased.refresh(state.redis, state.pool, state.settings.queue)
        events = erased.apply(events)
    if events:
        batch = events

        async def write(conn: asyncpg.Connection) -> Any:
            return await write_events(conn, batch, keyed=task.keyed, received_via=task.received_via)

        result = await _write(
            state, task, write, lambda: [msgspec.to_builtins(e) for e in batch], len(batch)
        )
        if result is None:  # the retry policy gave up: the whole batch is dead-lettered
            return {"stored": 0, "rejected": len(events) + len(invalid) + unreadable}
        inserted, refused = result.inserted, result.rejected
    rejected = sorted(invalid + refused, key=lambda r: r.index)
    if rejected:
        await _letter_rejected(state, task, rejected, "invalid" if invalid else "data")
    if logger.isEnabledFor(logging.DEBUG):
        bad = {id(r.event) for r in refused}
        _log_stored(msgspec.to_builtins(e) for e in events if id(e) not in bad)
    live = live_entry(inserted) if inserted else None
    return await _done(
        state,
        task,
        len(events) - len(refused),
        len(inserted),
        len(rejected) + unreadable,
        started,
        started_ms,
        live,
    )


async def _letter_rejected(
    state: WorkerState, task: Task, rejected: list[Rejected], classification: str
) -> None:
    """Dead-letter the events of a task that cannot be stored, with the first reason."""
    erased = state.erased
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
        classification,
    )


async def _read_segments(
    state: WorkerState, task: Task, segments: list[str], bad_utf8: frozenset[int]
) -> tuple[list[AuditEvent], list[Rejected], int]:
    """Read each segment alone: its valid events, its invalid ones, and how many segments
    were set aside whole (not UTF-8, not JSON, no event)."""
    events: list[AuditEvent] = []
    invalid: list[Rejected] = []
    unreadable = 0  # segments set aside whole
    for number, segment in enumerate(segments):
        # A merged job's bad segment is its own failed task (`<task id>.<segment>`).
        letter_id = task.id if len(segments) == 1 else f"{task.id}.{number}"
        if number in bad_utf8:
            await _set_aside(
                state,
                task,
                letter_id,
                segment,
                "InvalidEncoding",
                "the payload is not valid UTF-8: its exact bytes are kept, base64-encoded",
            )
            unreadable += 1
            continue
        try:
            found, refused_here = _parse(
                segment, task, state, task.finalized, offset=len(events) + len(invalid)
            )
        except InvalidEvent as exc:
            await _set_aside(state, task, letter_id, segment, "InvalidJSON", str(exc))
            unreadable += 1
            continue
        if not found and not refused_here:
            await _set_aside(
                state,
                task,
                letter_id,
                segment,
                "EmptyBatch",
                "the payload holds no event (an empty array)",
            )
            unreadable += 1
            continue
        events += found
        invalid += refused_here
    return events, invalid, unreadable


def _first_of_each_id(events: list[AuditEvent]) -> list[AuditEvent]:
    """One event per id, the first (contract §5: one batch carrying an id twice stores the
    first); a later copy counts as a redelivery, stored already."""
    seen: set[Any] = set()
    unique: list[AuditEvent] = []
    for event in events:
        if event.id in seen:
            continue
        seen.add(event.id)
        unique.append(event)
    return unique if len(unique) < len(events) else events


async def _set_aside(
    state: WorkerState, task: Task, letter_id: str, text: str, error_name: str, message: str
) -> None:
    """Dead-letter a segment that holds no readable event, with its text (redacted)."""
    # Its events cannot be counted: it counts as one, never as none.
    await _dead_letter(state, task, text, 1, error_name, message, "invalid", letter_id=letter_id)


async def _done(
    state: WorkerState,
    task: Task,
    stored: int,
    new: int,
    rejected: int,
    started: float,
    started_ms: int,
    live: dict[str, bytes] | None,
) -> dict[str, Any]:
    """Count and log a job whose events are stored; what arq keeps as its result."""
    state.events_stored += stored
    await _record_stored(state, task, stored, started_ms, live, complete=not rejected)
    state.stored_report.add(task.id, stored, new, rejected, (time.perf_counter() - started) * 1000)
    # What arq keeps for an hour is what the task views need, never the events: Redis holds
    # nothing per stored event (the raw argument is dropped from it too, service/queue/jobs.py).
    return {"stored": stored, "rejected": rejected}


def _log_stored(events: Iterable[dict[str, Any]]) -> None:
    for event in events:
        entity = event.get("entity") or {}
        logger.debug(
            "%s %s %s:%s", SUCCESS_PREFIX, event["action"], entity.get("type"), entity.get("id")
        )


async def _completed_items(state: WorkerState, payload: str) -> Sequence[Any] | None:
    """The events of a job whose producer says it completed them (auditq's client and API),
    every one checked; None when the job must go the way of a foreign producer's (_parse),
    which checks and isolates each event.

    What is checked here, once for the whole text: no string could need redaction by this
    worker's rules (the one pre-check of service/redaction.py; the text has no escapes, so
    its strings are as they are read, and no letter the text pre-check reads as ASCII, such
    as Kelvin's K), nothing nests too deep, no event is over the size
    limit, every event is valid by the wire format (one validating decode), each is
    complete, no id comes twice, no ts is ahead of this worker's clock, and no erased
    subject's event is in it."""
    settings = state.settings
    data = payload.encode()
    if holds_text_only_marks(data) or may_hold_secret_json_text(data, settings.redact_extra_keys):
        return None
    # The array and an event are two levels: metadata, changes and params nest less than
    # MAX_NESTING inside (a deeper one is judged event by event).
    if not _nests_at_most(data, MAX_NESTING):
        return None
    if len(data) > settings.max_event_bytes:  # else each event is within the limit too
        try:
            if any(len(e) > settings.max_event_bytes for e in _raw_decoder.decode(data)):
                return None
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return None
    erased = state.erased
    if erased is not None:
        await erased.refresh(state.redis, state.pool, settings.queue)
    subjects = erased is not None and bool(erased.pseudonyms)
    try:
        items = checked_events.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    latest = datetime.now(UTC).timestamp() + settings.max_future_s
    for i in items:
        if (
            i.id is None
            or i.ts is None
            or i.category is None
            or i.presentation is None
            or i.ts in PG_INFINITIES
            or i.ts.timestamp() > latest
            or not free_form_ok(i)
        ):
            return None
    if not items or len({i.id for i in items}) < len(items):
        return None  # an id twice: the per-event way keeps the first
    if subjects and erased is not None and (erased.touches(items) or erased.mentioned_in(payload)):
        return None
    return items


async def _store_completed(
    state: WorkerState, task: Task, payload: str, started: float, started_ms: int
) -> dict[str, Any] | None:
    """Store a job of completed events as PostgreSQL reads them from the job's text, in one
    statement; None when it must go the per-event way (_completed_items, or a refused row)."""
    items = await _completed_items(state, payload)
    if items is None:
        return None

    async def write(conn: asyncpg.Connection) -> Any:
        try:
            return await write_json_events(
                conn, payload, keyed=task.keyed, received_via=task.received_via
            )
        except asyncpg.PostgresError as exc:
            if classify(exc) is not Failure.DATA:
                raise
            # One of them is refused: the per-event path finds it and stores the others.
            logger.info(
                "[AuditLogWorker] task %s: a row was refused (%s: %s); its events are "
                "checked one by one",
                task.id,
                type(exc).__name__,
                redact_sensitive_in_string(str(exc), state.settings.redact_extra_keys),
            )
            return _FALL_BACK

    result = await _write(state, task, write, lambda: decode_json(payload), len(items))
    if result is None:  # the retry policy gave up: the whole batch is dead-lettered
        return {"stored": 0, "rejected": len(items)}
    if result is _FALL_BACK:
        return None
    new, live = result
    if logger.isEnabledFor(logging.DEBUG):
        _log_stored(decode_json(payload))
    return await _done(state, task, len(items), new, 0, started, started_ms, live)


async def _record_stored(
    state: WorkerState,
    task: Task,
    stored: int,
    started_ms: int,
    live: dict[str, bytes] | None,
    *,
    complete: bool,
) -> None:
    """Count stored events (per second and in total), log a complete task in its stream, and
    tell the live tail which rows are new (after the commit: they are readable now)."""
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
            if live is not None:  # which rows are new (service/queue/live.py)
                pipe.xadd(live_key(queue), live, maxlen=LIVE_MAXLEN, approximate=True)
            await pipe.execute()
    except Exception as exc:  # bookkeeping must never fail a task whose events are stored
        logger.warning("task %s: stats not recorded: %s: %s", task.id, type(exc).__name__, exc)
    if complete:
        state.tasks_complete += 1


async def _write(
    state: WorkerState,
    task: Task,
    write: Callable[[asyncpg.Connection], Awaitable[T]],
    letter: Callable[[], Any],
    event_count: int,
) -> T | None:
    """Write under the retry policy; None when the events (`letter()`) were dead-lettered."""
    if state.breaker.is_open:
        raise Retry(defer=DEFER_WHILE_OPEN)
    try:
        async with asyncio.timeout(state.settings.job_timeout_s * WRITE_BUDGET_SHARE):
            async with state.pool.acquire() as conn:
                result = await write(conn)
    except Exception as exc:
        failure = classify(exc)
        if failure is Failure.INFRASTRUCTURE:
            state.trip(exc)
            raise Retry(defer=DEFER_WHILE_OPEN) from exc
        attempts = int(await state.redis.hincrby(attempts_key(state.settings.queue), task.id, 1))
        message = redact_sensitive_in_string(str(exc), state.settings.redact_extra_keys)
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
        await _dead_letter(
            state, task, letter(), event_count, type(exc).__name__, message, "unknown", attempts
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
    *,
    letter_id: str | None = None,
) -> None:
    erased = state.erased
    if erased is not None:  # whenever written: cleared of every erased subject
        try:
            await erased.refresh(state.redis, state.pool, state.settings.queue)
        except (OSError, TimeoutError, asyncpg.PostgresError, RedisError):
            pass  # the store or Redis is away: cleared with what this worker knew
        payload = erased.clear_letter(payload)
        message = erased.clear_text(message)
    letter = await dead_letter.add(
        state.redis,
        state.settings.queue,
        task_id=letter_id or task.id,
        payload=payload,
        event_count=event_count,
        error_name=error_name,
        message=message,
        classification=classification,
        attempts=attempts,
        enqueued_at_ms=task.enqueued_ms,
        ttl_days=state.settings.dead_letter_ttl_days,
        extra_keys=state.settings.redact_extra_keys,
        via=task.received_via if task.verified else None,
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


OVERSIZED_CLAIM_MS = 60_000  # how long a worker holds a task it is setting aside


async def set_aside_if_oversized(state: WorkerState, redis: Any, task_id: str) -> bool:
    """Set a queued task over AUDITQ_MAX_JOB_BYTES aside unread: its bytes are moved (not
    read) beside its dead letter, and no worker loads it. True when the task was too big."""
    limit = state.settings.max_job_bytes
    size = int(await redis.strlen(JOB_PREFIX + task_id))
    if size <= limit:
        return False
    queue = state.settings.queue
    # Claimed as arq claims a job it starts, so that one worker alone sets it aside.
    if not await redis.set(IN_PROGRESS_PREFIX + task_id, b"1", nx=True, px=OVERSIZED_CLAIM_MS):
        return True
    kept = oversized_key(queue, task_id)
    ttl_s = state.settings.dead_letter_ttl_days * 86_400
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rename(JOB_PREFIX + task_id, kept)
        pipe.expire(kept, ttl_s)
        pipe.zrem(queue, task_id)
        await pipe.execute()
    task = Task(task_id, 0, 1)
    message = (
        f"the task is {size} bytes, over AUDITQ_MAX_JOB_BYTES ({limit}): set aside unread; "
        f"its bytes are kept in Redis under {kept}"
    )
    await _dead_letter(state, task, None, 1, "OversizedTask", message, "invalid")
    await redis.delete(IN_PROGRESS_PREFIX + task_id)
    return True

"""The dead letter: events that could not be stored, kept in Redis (PostgreSQL may be down)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis

from service.queue.jobs import RAW_BYTES_PREFIX, redact_raw_bytes
from service.redaction import redact_escapes, redact_sensitive, redact_sensitive_in_string

DEFAULT_TTL_DAYS = 90


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One failed task: what it carried, why it failed, how often it was tried."""

    id: str
    kind: str  # "events": a batch of events
    payload: Any  # the events (redacted), or the raw text when it was not valid JSON
    event_count: int
    error_name: str
    message: str
    classification: str  # data · unknown · invalid
    attempts: int
    enqueued_at_ms: int
    failed_at_ms: int
    # Who delivered it, when the API vouched for that (http:<token name>, api): a retry
    # delivers it again under the same provenance. None: the queue (redis:<queue>).
    via: str | None = None


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One failed run of a task, kept across retries. No message: one may quote a person's
    data, and this list is not where an erasure looks (the letter's own message is)."""

    failed_at_ms: int
    error_name: str
    classification: str
    attempts: int


MAX_HISTORY = 50  # failures kept per task, the latest

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)
_failure_decoder = msgspec.json.Decoder(Failure)


def history_key(queue: str, task_id: str) -> str:
    """List of a task's failures, oldest first (survives a retry, expires with the letter)."""
    return f"auditq:{queue}:failures:{task_id}"


async def history(redis: aioredis.Redis, queue: str, task_id: str) -> list[Failure]:
    """Every kept failure of one task, oldest first."""
    kept: list[bytes] = await redis.lrange(history_key(queue, task_id), 0, -1)  # type: ignore[misc]
    return [_failure_decoder.decode(raw) for raw in kept]


def index_key(queue: str) -> str:
    """Sorted set of dead-letter ids by failure time."""
    return f"auditq:{queue}:dead"


def record_key(queue: str, task_id: str) -> str:
    return f"auditq:{queue}:dead:{task_id}"


async def add(
    redis: aioredis.Redis,
    queue: str,
    *,
    task_id: str,
    payload: Any,
    event_count: int,
    error_name: str,
    message: str,
    classification: str,
    attempts: int,
    enqueued_at_ms: int,
    ttl_days: int = DEFAULT_TTL_DAYS,
    extra_keys: frozenset[str] = frozenset(),
    via: str | None = None,
) -> DeadLetter:
    """Store a failed task, redacting its payload and message again on the way in (with the
    configured extra keys: Settings.redact_extra_keys)."""
    now_ms = int(time.time() * 1000)
    if isinstance(payload, str) and payload.startswith(RAW_BYTES_PREFIX):
        payload = redact_raw_bytes(payload, extra_keys)
    elif isinstance(payload, str):
        payload = redact_sensitive_in_string(payload, extra_keys)
    else:  # escapes written inside its strings are read too
        payload = redact_escapes(redact_sensitive(payload, extra_keys), extra_keys)
    letter = DeadLetter(
        id=task_id,
        kind="events",
        payload=payload,
        event_count=event_count,
        error_name=error_name,
        message=redact_sensitive_in_string(message, extra_keys),
        classification=classification,
        attempts=attempts,
        enqueued_at_ms=enqueued_at_ms,
        failed_at_ms=now_ms,
        via=via,
    )
    ttl_ms = ttl_days * 86_400_000
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(record_key(queue, task_id), _encoder.encode(letter), px=ttl_ms)
        pipe.zadd(index_key(queue), {task_id: now_ms})
        pipe.zremrangebyscore(index_key(queue), "-inf", now_ms - ttl_ms)
        failure = Failure(
            failed_at_ms=now_ms,
            error_name=error_name,
            classification=classification,
            attempts=attempts,
        )
        pipe.rpush(history_key(queue, task_id), _encoder.encode(failure))
        pipe.ltrim(history_key(queue, task_id), -MAX_HISTORY, -1)
        pipe.pexpire(history_key(queue, task_id), ttl_ms)
        await pipe.execute()
    return letter


async def get(redis: aioredis.Redis, queue: str, task_id: str) -> DeadLetter | None:
    """Return one dead letter, or None."""
    raw = await redis.get(record_key(queue, task_id))
    return None if raw is None else _decoder.decode(raw)


async def list_ids(redis: aioredis.Redis, queue: str) -> list[str]:
    """Every dead-letter id, oldest first."""
    return [m.decode() for m in await redis.zrange(index_key(queue), 0, -1)]


async def remove(redis: aioredis.Redis, queue: str, task_id: str) -> None:
    """Forget one dead letter (after a replay or a cleanup)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(record_key(queue, task_id))
        pipe.zrem(index_key(queue), task_id)
        await pipe.execute()

"""Changing tasks: retry a failed one (or every failed one matching a filter), clean up old ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from redis.exceptions import WatchError

from service.keys import EVENTS_RETRIED, RESULT_PREFIX, attempts_key, complete_key, counters_key
from service.ops import dead_letter
from service.ops.task_model import (
    CleanupPolicy,
    CleanupResult,
    RetryFilter,
    Task,
    TaskChanged,
    TaskNotFailed,
    TaskNotFound,
)
from service.ops.task_views import failed_task, without_payload
from service.ops.tasks import SCAN_CHUNK, TaskQueue, clock_ms
from service.queue import ENQUEUE_SCRIPT, provenance_tag

DAY_MS = 86_400_000

_letter_decoder = msgspec.json.Decoder(dead_letter.DeadLetter)


async def retry(
    tasks: TaskQueue,
    task_id: str,
    *,
    record: Callable[[int], Awaitable[None]] | None = None,
) -> Task:
    """Replay a failed task's events as a job of the same id, dropping its dead letter.

    `record(event_count)`, when given, writes the action's audit record once the task is
    known to be failed and before anything changes; when it raises, nothing is done.

    One transaction: the job is queued and the dead letter dropped together, so a worker that
    takes the job and fails it again writes a dead letter that stays (it cannot fall between
    the two steps). A dead letter that changes meanwhile (retried or failed again by someone
    else) aborts the retry with TaskChanged, nothing done."""
    letter_key = dead_letter.record_key(tasks.queue, task_id)
    result_key = RESULT_PREFIX + task_id
    async with tasks.redis.pipeline(transaction=True) as pipe:
        await pipe.watch(letter_key, result_key)
        raw = await pipe.get(letter_key)
        if raw is not None:
            letter = _letter_decoder.decode(raw)
            before = failed_task(letter, tasks.extra_keys)
            payload, events = letter.payload, letter.event_count
        else:
            detail = await tasks.get(task_id)
            if detail is None:
                raise TaskNotFound(f"no task {task_id}")
            if detail.status != "failed":
                raise TaskNotFailed(task_id, detail.status)
            before, payload, events = without_payload(detail), detail.payload, detail.event_count
        text = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
        if record is not None:
            await record(events)
        args = [
            text,
            task_id,
            *_provenance(tasks, letter if raw is not None else None, text, task_id),
        ]
        pipe.multi()  # type: ignore[no-untyped-call]
        # arq's result of the failed run would make the script see the task as done.
        pipe.delete(result_key)
        # EVAL, not EVALSHA: a script missing from the cache would fail alone inside EXEC.
        pipe.eval(ENQUEUE_SCRIPT, 1, tasks.queue, *args)
        pipe.delete(letter_key)
        pipe.zrem(dead_letter.index_key(tasks.queue), task_id)
        pipe.hdel(attempts_key(tasks.queue), task_id)
        pipe.hincrby(counters_key(tasks.queue), EVENTS_RETRIED, events)
        try:
            await pipe.execute()
        except WatchError:
            raise TaskChanged(task_id) from None
    retried = await tasks.get(task_id)
    if retried is not None:
        return without_payload(retried)
    # Taken and finished by a worker already: the retry happened all the same.
    return msgspec.structs.replace(before, status="queued", failure=None)


def _provenance(
    tasks: TaskQueue, letter: dead_letter.DeadLetter | None, text: str, task_id: str
) -> list[str]:
    """The enqueue's provenance arguments that keep the task's `via` (tagged anew with the
    key the API and the worker share); none when it came from the queue or no key is held."""
    if letter is None or not letter.via or tasks.provenance_key is None:
        return []
    tag = provenance_tag(
        tasks.provenance_key, task_id=task_id, via=letter.via, payload=text.encode()
    )
    return ["", letter.via, tag]


async def discard(tasks: TaskQueue, task_id: str) -> Task:
    """Drop a failed task for good (one that can never succeed): its dead letter and result.

    One transaction on what was read: a task retried or failed again meanwhile aborts the
    discard with TaskChanged, nothing done."""
    letter_key = dead_letter.record_key(tasks.queue, task_id)
    result_key = RESULT_PREFIX + task_id
    async with tasks.redis.pipeline(transaction=True) as pipe:
        await pipe.watch(letter_key, result_key)
        detail = await tasks.get(task_id)
        if detail is None:
            raise TaskNotFound(f"no task {task_id}")
        if detail.status != "failed":
            raise TaskNotFailed(task_id, detail.status)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(letter_key, result_key, dead_letter.history_key(tasks.queue, task_id))
        pipe.zrem(dead_letter.index_key(tasks.queue), task_id)
        pipe.hdel(attempts_key(tasks.queue), task_id)
        try:
            await pipe.execute()
        except WatchError:
            raise TaskChanged(task_id) from None
    return without_payload(detail)


async def matching_failed(tasks: TaskQueue, where: RetryFilter) -> list[str]:
    """The ids of the failed tasks `where` matches (at most `where.limit`), oldest first."""
    low = f"({where.newer_than.timestamp() * 1000:.0f}" if where.newer_than else "-inf"
    high = f"({where.older_than.timestamp() * 1000:.0f}" if where.older_than else "+inf"
    ids = [
        m.decode()
        for m in await tasks.redis.zrangebyscore(dead_letter.index_key(tasks.queue), low, high)
    ]
    matched: list[str] = []
    for start in range(0, len(ids), SCAN_CHUNK):
        chunk = ids[start : start + SCAN_CHUNK]
        records = await tasks.redis.mget(
            [dead_letter.record_key(tasks.queue, task_id) for task_id in chunk]
        )
        for task_id, raw in zip(chunk, records, strict=True):
            if raw is None:
                continue
            letter = _letter_decoder.decode(raw)
            if where.classification and letter.classification != where.classification:
                continue
            if where.error_name and letter.error_name != where.error_name:
                continue
            if where.limit is not None and len(matched) >= where.limit:
                return matched
            matched.append(task_id)
    return matched


async def discard_failed(tasks: TaskQueue, ids: list[str]) -> int:
    """Discard each of these failed tasks; return how many were (others changed meanwhile)."""
    discarded = 0
    for task_id in ids:
        try:
            await discard(tasks, task_id)
        except (TaskNotFound, TaskNotFailed, TaskChanged):
            continue
        discarded += 1
    return discarded


async def retry_failed(tasks: TaskQueue, where: RetryFilter | None = None) -> int:
    """Retry every failed task that matches `where`; return how many were retried."""
    where = where or RetryFilter()
    low = f"({where.newer_than.timestamp() * 1000:.0f}" if where.newer_than else "-inf"
    high = f"({where.older_than.timestamp() * 1000:.0f}" if where.older_than else "+inf"
    index = dead_letter.index_key(tasks.queue)
    retried = 0
    ids = [m.decode() for m in await tasks.redis.zrangebyscore(index, low, high)]
    for start in range(0, len(ids), SCAN_CHUNK):
        chunk = ids[start : start + SCAN_CHUNK]
        records = await tasks.redis.mget(
            [dead_letter.record_key(tasks.queue, task_id) for task_id in chunk]
        )
        for task_id, raw in zip(chunk, records, strict=True):
            if raw is None:
                continue
            letter = _letter_decoder.decode(raw)
            if where.classification and letter.classification != where.classification:
                continue
            if where.error_name and letter.error_name != where.error_name:
                continue
            if where.limit is not None and retried >= where.limit:
                return retried
            try:
                await retry(tasks, task_id)
            except (TaskNotFound, TaskNotFailed):
                continue  # retried by someone else meanwhile
            retried += 1
    return retried


async def cleanup(tasks: TaskQueue, policy: CleanupPolicy | None = None) -> CleanupResult:
    """Delete complete and failed tasks past their age, keeping the most recent failures."""
    policy = policy or CleanupPolicy()
    now_ms = clock_ms()
    complete_cutoff = max(0, now_ms - policy.complete_older_than_days * DAY_MS)
    # The stream's entry ids are the ms each task finished: MINID trims by age.
    deleted_complete = int(
        await tasks.redis.xtrim(
            complete_key(tasks.queue), minid=str(complete_cutoff), approximate=False
        )
    )
    index = dead_letter.index_key(tasks.queue)
    total = int(await tasks.redis.zcard(index))
    deleted_failed = 0
    if total > policy.keep_recent_failed:
        failed_cutoff = now_ms - policy.failed_older_than_days * DAY_MS
        oldest = await tasks.redis.zrange(
            index, 0, total - policy.keep_recent_failed - 1, withscores=True
        )
        doomed = [m.decode() for m, score in oldest if score < failed_cutoff]
        for start in range(0, len(doomed), SCAN_CHUNK):
            chunk = doomed[start : start + SCAN_CHUNK]
            async with tasks.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(dead_letter.record_key(tasks.queue, i) for i in chunk))
                pipe.delete(*(dead_letter.history_key(tasks.queue, i) for i in chunk))
                pipe.zrem(index, *chunk)
                await pipe.execute()
        deleted_failed = len(doomed)
    return CleanupResult(complete=deleted_complete, failed=deleted_failed)

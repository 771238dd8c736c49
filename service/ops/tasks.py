"""Reading tasks: one task, pages and counts, from arq's keys, our stream and dead letter.

Where a task's state lives:
- queued, retrying, in_progress: arq's queue (a sorted set scored by the ms a job is due),
  `arq:job:<id>` and `arq:in-progress:<id>`; retrying means due later (deferred by a Retry);
- failed: the dead letter (service/queue/dead_letter.py), or an arq result that failed;
- complete: the capped stream `auditq:<queue>:complete` the worker appends to, and arq's
  result for the most recent ones.
"""

from __future__ import annotations

import re
import time

import msgspec
import redis.asyncio as aioredis

from service.ops.task_cursor import (
    SEGMENT_STATUSES,
    SEGMENTS,
    Position,
    decode_cursor,
    encode_cursor,
)
from service.ops.task_model import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUSES,
    Status,
    StatusCounts,
    Task,
    TaskDetail,
    TaskPage,
)
from service.ops.task_views import (
    complete_task,
    failed_task,
    queued_task,
    redacted_payload,
    task_from_result,
    task_kind,
    with_payload,
)
from service.queue import dead_letter
from service.queue.enqueue import ENQUEUE_SCRIPT
from service.queue.jobs import JOB_FUNCTION, deserialize_job, joined_segments
from service.queue.keys import (
    COMPLETE_MAXLEN,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    attempts_key,
    complete_key,
)
from service.redaction import redact_escapes, redact_sensitive
from service.settings import Settings

SCAN_CHUNK = 200  # entries read from Redis per round trip while listing
LOOKUP_CHUNK = 1000  # stream entries read per round trip while looking one task up
SCAN_BUDGET = 5000  # entries one page may examine; past it the page ends short, with a cursor
# arq starts jobs from the front of the queue, so every job in progress is among the first
# entries that are due: counting in-progress markers there bounds the cost of the stats.
IN_PROGRESS_WINDOW = 1000  # entries
IN_PROGRESS_EXTRA = 10.0  # seconds arq adds to the job timeout for its in-progress marker
FUNCTION_PEEK_BYTES = 255  # a job's JSON names its function (and et) within its first bytes
_FUNCTION_FIELD = re.compile(rb'"f":"([^"]+)"')
_ENQUEUED_FIELD = re.compile(rb'"et":(\d{1,15})')
VIEW_MAX_JOB_BYTES = 1024 * 1024  # a queued job larger than this is shown, never loaded

_result_decoder = msgspec.json.Decoder()
_letter_decoder = msgspec.json.Decoder(dead_letter.DeadLetter)


class TaskQueue:
    """The tasks of one queue, read over Redis only (task_actions.py changes them)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        queue: str,
        job_timeout_s: float = 60.0,
        extra_keys: frozenset[str] = frozenset(),
    ) -> None:
        """Wrap `redis` (not owned: the caller closes it); `extra_keys` are redacted too."""
        self.redis = redis
        self.queue = queue
        self.extra_keys = extra_keys
        # The key that vouches for provenance (service/queue/jobs.py): with it a retried task keeps
        # the `via` it was delivered with. The API and the CLI set it.
        self.provenance_key: bytes | None = None
        self._in_progress_ms = int((job_timeout_s + IN_PROGRESS_EXTRA) * 1000)
        self.enqueue = redis.register_script(ENQUEUE_SCRIPT)

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, settings: Settings) -> TaskQueue:
        """The tasks of the settings' queue."""
        return cls(
            redis,
            queue=settings.queue,
            job_timeout_s=settings.job_timeout_s,
            extra_keys=settings.redact_extra_keys,
        )

    # Reading one task.

    async def get(self, task_id: str) -> TaskDetail | None:
        """Return one task with its payload, or None."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(self.queue, task_id)
            pipe.strlen(JOB_PREFIX + task_id)
            pipe.pttl(IN_PROGRESS_PREFIX + task_id)
            pipe.hget(attempts_key(self.queue), task_id)
            pipe.get(dead_letter.record_key(self.queue, task_id))
            pipe.get(RESULT_PREFIX + task_id)
            score, size, pttl, attempts, letter, result = await pipe.execute()
        now_ms = clock_ms()
        job = (await self._bodies([task_id]))[0] if score is not None and size else None
        if score is not None and job is not None:
            data = deserialize_job(job)
            text = joined_segments(data.get("a") or [""])
            task = self._queued(task_id, int(score), data, int(pttl), int(attempts or 0), now_ms)
            return with_payload(task, redacted_payload(text, self.extra_keys) if text else None)
        if letter is not None:
            failed = _letter_decoder.decode(letter)
            payload = redact_escapes(
                redact_sensitive(failed.payload, self.extra_keys), self.extra_keys
            )
            return with_payload(failed_task(failed, self.extra_keys), payload)
        if result is not None:
            return task_from_result(task_id, _result_decoder.decode(result), self.extra_keys)
        entry = await self._find_complete(task_id)
        if entry is not None:
            return with_payload(complete_task(entry), None)
        return None

    async def _find_complete(self, task_id: str) -> dict[str, str] | None:
        """Find a task in the complete stream, newest first (a lookup past arq's results)."""
        key = complete_key(self.queue)
        upper = "+"
        for _ in range(COMPLETE_MAXLEN // LOOKUP_CHUNK + 2):  # the stream is capped: so is this
            entries = await self.redis.xrevrange(key, max=upper, min="-", count=LOOKUP_CHUNK)
            for _, fields in entries:
                decoded = _fields(fields)
                if decoded.get("id") == task_id:
                    return decoded
            if len(entries) < LOOKUP_CHUNK:
                return None
            upper = "(" + entries[-1][0].decode()
        return None

    # Listing.

    async def page(
        self,
        *,
        status: Status | None = None,
        kind: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks: the queue by due time, then failed and complete ones newest first.

        A page may hold fewer than `limit` items while `next_cursor` is set: each page examines
        a bounded number of entries, so walk until `next_cursor` is null.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        wanted = frozenset(STATUSES) if status is None else frozenset({status})
        start = decode_cursor(cursor) if cursor else None
        items: list[Task] = []
        budget = SCAN_BUDGET
        segments = SEGMENTS[SEGMENTS.index(start.segment) :] if start else SEGMENTS
        for segment in segments:
            statuses = wanted & SEGMENT_STATUSES[segment]
            if not statuses or (kind is not None and kind != "events" and segment != "queue"):
                continue
            after = start if start is not None and start.segment == segment else None
            want = limit - len(items)
            if segment == "queue":
                found, stopped, budget = await self._walk_queue(statuses, kind, after, want, budget)
            elif segment == "failed":
                found, stopped, budget = await self._walk_failed(after, want, budget)
            else:
                found, stopped, budget = await self._walk_complete(after, want, budget)
            items.extend(found)
            if stopped is not None:  # full page, or out of budget: resume here
                return TaskPage(items=items, next_cursor=encode_cursor(stopped))
        return TaskPage(items=items, next_cursor=None)

    async def _walk_queue(
        self,
        statuses: frozenset[Status],
        kind: str | None,
        after: Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], Position | None, int]:
        now_ms = clock_ms()
        low = after.score if after is not None else None
        high: int | None = None
        if "retrying" not in statuses:
            high = now_ms
        elif statuses == {"retrying"}:
            low = max(low if low is not None else 0, now_ms + 1)
        last = (after.score, after.id) if after is not None else None
        items: list[Task] = []
        skip = 0
        while budget > 0:
            entries = await self.redis.zrangebyscore(
                self.queue,
                "-inf" if low is None else low,
                "+inf" if high is None else high,
                start=skip,
                num=SCAN_CHUNK,
                withscores=True,
            )
            if not entries:
                return items, None, budget
            budget -= len(entries)
            fresh = [(m.decode(), int(s)) for m, s in entries]
            fresh = [(i, s) for i, s in fresh if last is None or (s, i) > last]
            if not fresh:  # more entries share one score than a chunk holds: step over them
                skip += len(entries)
                continue
            skip = 0
            matching = await self._matching(fresh, statuses, kind, now_ms)
            # Job bodies can be megabytes: read only as many as the page can still take, and
            # of one over VIEW_MAX_JOB_BYTES only its head (_bodies).
            batch = matching[: want - len(items)]
            bodies = await self._bodies([m[0] for m in batch]) if batch else []
            for (task_id, score, pttl, attempts), body in zip(batch, bodies, strict=True):
                if body is None:  # finished since the queue was read
                    continue
                task = self._queued(task_id, score, deserialize_job(body), pttl, attempts, now_ms)
                if task.status in statuses and (kind is None or task.kind == kind):
                    items.append(task)
                    if len(items) >= want:
                        return items, Position("queue", score, task_id), budget
            end = batch[-1] if len(batch) < len(matching) else fresh[-1]
            last = (end[1], end[0])
            low = last[0]
        assert last is not None
        return items, Position("queue", last[0], last[1]), budget

    async def _bodies(self, task_ids: list[str]) -> list[bytes | None]:
        """The jobs of `task_ids`, each whole when it is small enough to show, else a stand-in
        naming its function, enqueue time and size: a task view never loads a large job."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.strlen(JOB_PREFIX + task_id)
            sizes = [int(n) for n in await pipe.execute()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id, size in zip(task_ids, sizes, strict=True):
                if size > VIEW_MAX_JOB_BYTES:
                    pipe.getrange(JOB_PREFIX + task_id, 0, FUNCTION_PEEK_BYTES)
                else:
                    pipe.get(JOB_PREFIX + task_id)
            raw = await pipe.execute()
        return [
            _stand_in(body, size) if size > VIEW_MAX_JOB_BYTES and body else body
            for body, size in zip(raw, sizes, strict=True)
        ]

    async def _matching(
        self,
        entries: list[tuple[str, int]],
        statuses: frozenset[Status],
        kind: str | None,
        now_ms: int,
    ) -> list[tuple[str, int, int, int]]:
        """The queue entries in `statuses` (and of `kind`), with their marker TTL and attempts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id, _ in entries:
                pipe.pttl(IN_PROGRESS_PREFIX + task_id)
                pipe.hget(attempts_key(self.queue), task_id)
                if kind is not None:
                    pipe.getrange(JOB_PREFIX + task_id, 0, FUNCTION_PEEK_BYTES)
            marks = iter(await pipe.execute())
        matching: list[tuple[str, int, int, int]] = []
        for task_id, score in entries:
            pttl, attempts = int(next(marks)), int(next(marks) or 0)
            if kind is not None and _peek_kind(next(marks)) not in (kind, None):
                continue
            if _queue_status(pttl, score, now_ms) in statuses:
                matching.append((task_id, score, pttl, attempts))
        return matching

    async def _walk_failed(
        self,
        after: Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], Position | None, int]:
        index = dead_letter.index_key(self.queue)
        high: int | str = after.score if after is not None else "+inf"
        last = (after.score, after.id) if after is not None else None
        items: list[Task] = []
        skip = 0
        while budget > 0:
            entries = await self.redis.zrevrangebyscore(
                index, high, "-inf", start=skip, num=SCAN_CHUNK, withscores=True
            )
            if not entries:
                return items, None, budget
            budget -= len(entries)
            fresh = [(m.decode(), int(s)) for m, s in entries]
            fresh = [(i, s) for i, s in fresh if last is None or (s, i) < last]
            if not fresh:
                skip += len(entries)
                continue
            skip = 0
            batch = fresh[: want - len(items)]  # records hold payloads: read no more than needed
            records = await self.redis.mget(
                [dead_letter.record_key(self.queue, task_id) for task_id, _ in batch]
            )
            for (task_id, score), raw in zip(batch, records, strict=True):
                if raw is None:  # expired: its index entry is trimmed on the next failure
                    continue
                items.append(failed_task(_letter_decoder.decode(raw), self.extra_keys))
                if len(items) >= want:
                    return items, Position("failed", score, task_id), budget
            last = (batch[-1][1], batch[-1][0])
            high = last[0]
        assert last is not None
        return items, Position("failed", last[0], last[1]), budget

    async def _walk_complete(
        self,
        after: Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], Position | None, int]:
        key = complete_key(self.queue)
        upper = "(" + after.id if after is not None else "+"
        items: list[Task] = []
        while budget > 0:
            entries = await self.redis.xrevrange(
                key, max=upper, min="-", count=min(SCAN_CHUNK, want - len(items))
            )
            if not entries:
                return items, None, budget
            budget -= len(entries)
            for entry_id, fields in entries:
                items.append(complete_task(_fields(fields)))
                upper = "(" + entry_id.decode()
                if len(items) >= want:
                    return items, Position("complete", 0, entry_id.decode()), budget
        return items, Position("complete", 0, upper[1:]), budget

    # Counting.

    async def counts(self) -> tuple[StatusCounts, float]:
        """Count tasks per status, and the age in seconds of the oldest one waiting."""
        now_ms = clock_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.queue, "-inf", now_ms)
            pipe.zcount(self.queue, f"({now_ms}", "+inf")
            pipe.zcard(dead_letter.index_key(self.queue))
            pipe.xlen(complete_key(self.queue))
            pipe.zrangebyscore(
                self.queue, "-inf", now_ms, start=0, num=IN_PROGRESS_WINDOW, withscores=True
            )
            due, retrying, failed, complete, front = await pipe.execute()
        in_progress, oldest_ms = 0, None
        if front:
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, _ in front:
                    pipe.exists(IN_PROGRESS_PREFIX + member.decode())
                running = await pipe.execute()
            for (_, score), busy in zip(front, running, strict=True):
                if busy:
                    in_progress += 1
                elif oldest_ms is None:
                    oldest_ms = int(score)
        counts = StatusCounts(
            queued=max(0, int(due) - in_progress),
            in_progress=in_progress,
            retrying=int(retrying),
            failed=int(failed),
            complete=int(complete),
        )
        oldest_age = 0.0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000)
        return counts, round(oldest_age, 3)

    # Retrying.

    def _queued(
        self,
        task_id: str,
        score: int,
        job: dict[str, object],
        pttl: int,
        attempts: int,
        now_ms: int,
    ) -> Task:
        return queued_task(
            task_id, score, job, pttl, attempts, now_ms, in_progress_ms=self._in_progress_ms
        )


def _stand_in(head: bytes, size: int) -> bytes:
    """A job too large to load, as far as its head tells: function, enqueue time, size."""
    function = _FUNCTION_FIELD.search(head)
    enqueued = _ENQUEUED_FIELD.search(head)
    return msgspec.json.encode(
        {
            "f": function.group(1).decode() if function else JOB_FUNCTION,
            "et": int(enqueued.group(1)) if enqueued else None,
            "a": [],
            "k": {},
            "too_large": size,
        }
    )


def _queue_status(pttl: int, score: int, now_ms: int) -> Status:
    if pttl > 0:  # arq's in-progress marker
        return "in_progress"
    return "retrying" if score > now_ms else "queued"


def _peek_kind(head: bytes | None) -> str | None:
    """The kind named at the start of a job's JSON (arq writes "t", then "f"); None if unseen."""
    match = _FUNCTION_FIELD.search(head or b"")
    return task_kind(match.group(1).decode()) if match else None


def clock_ms() -> int:
    return int(time.time() * 1000)


def _fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}

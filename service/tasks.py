"""Tasks: the queue's jobs as admins see them, read from arq's keys, our stream and dead letter.

Where a task's state lives:
- queued, retrying, in_progress: arq's queue (a sorted set scored by the ms a job is due),
  `arq:job:<id>` and `arq:in-progress:<id>`; retrying means due later (deferred by a Retry);
- failed: the dead letter (service/dead_letter.py), or an arq result that failed;
- complete: the capped stream `auditq:<queue>:complete` the worker appends to, and arq's
  result (kept an hour, with the payload) for the most recent ones.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis

from service import dead_letter
from service.errors import AuditqError
from service.keys import (
    COMPLETE_MAXLEN,
    EVENTS_RETRIED,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    attempts_key,
    complete_key,
    counters_key,
)
from service.policy import MAX_ATTEMPTS
from service.queue import ENQUEUE_SCRIPT, JOB_FUNCTION, deserialize_job
from service.redaction import redact_sensitive, redact_sensitive_in_string
from service.settings import Settings

Status = Literal["queued", "in_progress", "retrying", "failed", "complete"]
STATUSES: tuple[Status, ...] = ("queued", "in_progress", "retrying", "failed", "complete")
Kind = Literal["events", "maintenance"]
KINDS: tuple[Kind, ...] = ("events", "maintenance")
_KIND_OF_FUNCTION = {JOB_FUNCTION: "events", "maintain": "maintenance"}

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SCAN_CHUNK = 200  # entries read from Redis per round trip while listing
LOOKUP_CHUNK = 1000  # stream entries read per round trip while looking one task up
SCAN_BUDGET = 5000  # entries one page may examine; past it the page ends short, with a cursor
# arq starts jobs from the front of the queue, so every job in progress is among the first
# entries that are due: counting in-progress markers there bounds the cost of the stats.
IN_PROGRESS_WINDOW = 1000  # entries
IN_PROGRESS_EXTRA = 10.0  # seconds arq adds to the job timeout for its in-progress marker
DAY_MS = 86_400_000
FUNCTION_PEEK_BYTES = 127  # a job's JSON names its function within its first bytes
_FUNCTION_FIELD = re.compile(rb'"f":"([^"]+)"')


class TaskNotFound(AuditqError):
    """No task has this id (or it expired)."""


class TaskNotFailed(AuditqError):
    """Only a failed task can be retried."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is {status}; only a failed task can be retried")
        self.status = status


class InvalidCursor(AuditqError):
    """A cursor that no page of this listing handed out."""


class TaskFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why a task failed; the message is redacted."""

    error_name: str
    message: str
    classification: str  # data · unknown · invalid


class TaskPresentation(msgspec.Struct, frozen=True, kw_only=True):
    """Sentences a dashboard shows as they are."""

    title: str
    status_message: str
    detail_message: str


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One job of the queue, whatever state it is in."""

    id: str
    kind: str
    status: Status
    attempts: int
    max_attempts: int
    event_count: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    failure: TaskFailure | None
    presentation: TaskPresentation


class TaskDetail(Task, frozen=True, kw_only=True):
    """A task and its payload: the events (redacted), or the raw text when it is not JSON."""

    payload: Any


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of tasks; pass next_cursor back for the next (null: no more)."""

    items: list[Task]
    next_cursor: str | None


class StatusCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How many tasks are in each status."""

    queued: int
    in_progress: int
    retrying: int
    failed: int
    complete: int


class RetryFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which failed tasks a bulk retry takes (all when empty); times bound the failure time."""

    classification: Literal["data", "unknown", "invalid"] | None = None
    error_name: str | None = None
    older_than: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    newer_than: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None  # at most this many tasks


Days = Annotated[int, msgspec.Meta(ge=0, le=36_500)]


class CleanupPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a cleanup deletes: TestPlanIt keeps complete jobs a year and failed ones 90 days."""

    complete_older_than_days: Days = 365
    failed_older_than_days: Days = 90
    # The most recent failed tasks are kept whatever their age: evidence of the last incident.
    keep_recent_failed: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 100


class CleanupResult(msgspec.Struct, frozen=True, kw_only=True):
    """How many tasks a cleanup deleted."""

    complete: int
    failed: int


@dataclasses.dataclass(frozen=True)
class _Position:
    """Where a listing stopped: a segment and the last entry it examined there."""

    segment: Literal["queue", "failed", "complete"]
    score: int = 0
    id: str = ""


_SEGMENTS: tuple[Literal["queue", "failed", "complete"], ...] = ("queue", "failed", "complete")
_SEGMENT_STATUSES: dict[str, frozenset[Status]] = {
    "queue": frozenset({"queued", "in_progress", "retrying"}),
    "failed": frozenset({"failed"}),
    "complete": frozenset({"complete"}),
}

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_any = msgspec.json.Decoder()
_result_decoder = msgspec.json.Decoder()
_letter_decoder = msgspec.json.Decoder(dead_letter.DeadLetter)


def count_events(text: str | bytes) -> int:
    """Count the events of a job's payload without decoding them: a list's length, else 1 or 0."""
    try:
        return len(_raw_list.decode(text))
    except msgspec.ValidationError:  # valid JSON so far, but not a list: one (maybe bad) event
        pass
    except (msgspec.DecodeError, RecursionError):  # RecursionError: hostile nesting
        return 0
    try:
        _any.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return 0
    return 1


def redacted_payload(text: str | bytes, extra_keys: frozenset[str] = frozenset()) -> Any:
    """The events of a payload, redacted; the redacted text itself when it is not JSON."""
    try:
        return redact_sensitive(_any.decode(text), extra_keys)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: hostile nesting
        raw = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return redact_sensitive_in_string(raw, extra_keys)


def encode_cursor(position: _Position) -> str:
    """Make the opaque cursor for `position`."""
    raw = msgspec.json.encode([position.segment, position.score, position.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Position:
    """Read a cursor made by encode_cursor; raise InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        segment, score, task_id = msgspec.json.decode(raw, type=tuple[str, int, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("not a cursor this listing handed out") from None
    if segment not in _SEGMENTS:
        raise InvalidCursor("not a cursor this listing handed out")
    return _Position(segment, score, task_id)


def _at(ms: int | float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _seconds(ms: float) -> str:
    seconds = max(0, math.ceil(ms / 1000))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _title(kind: str, event_count: int) -> str:
    if kind == "events":
        return f"Store {_plural(event_count, 'audit event')}"
    if kind == "maintenance":
        return "Maintain partitions and retention"
    return f"Run {kind}"


def _kind(function: object) -> str:
    name = str(function)
    return _KIND_OF_FUNCTION.get(name, name)


class TaskQueue:
    """The tasks of one queue: read, list, retry and clean them up, over Redis only."""

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
        self._in_progress_ms = int((job_timeout_s + IN_PROGRESS_EXTRA) * 1000)
        self._enqueue = redis.register_script(ENQUEUE_SCRIPT)

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
            pipe.get(JOB_PREFIX + task_id)
            pipe.pttl(IN_PROGRESS_PREFIX + task_id)
            pipe.hget(attempts_key(self.queue), task_id)
            pipe.get(dead_letter.record_key(self.queue, task_id))
            pipe.get(RESULT_PREFIX + task_id)
            score, job, pttl, attempts, letter, result = await pipe.execute()
        now_ms = _now_ms()
        if score is not None and job is not None:
            data = deserialize_job(job)
            args = data.get("a") or [""]
            task = self._queued(task_id, int(score), data, int(pttl), int(attempts or 0), now_ms)
            raw = args[0] if isinstance(args[0], str) else None
            return _detail(task, None if raw is None else redacted_payload(raw, self.extra_keys))
        if letter is not None:
            failed = _letter_decoder.decode(letter)
            return _detail(self._failed(failed), redact_sensitive(failed.payload, self.extra_keys))
        if result is not None:
            return self._from_result(task_id, _result_decoder.decode(result))
        entry = await self._find_complete(task_id)
        if entry is not None:
            return _detail(self._complete(entry), None)
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

    # Building tasks from what Redis holds.

    def _queued(
        self,
        task_id: str,
        score: int,
        job: dict[str, Any],
        pttl: int,
        attempts: int,
        now_ms: int,
    ) -> Task:
        kind = _kind(job.get("f"))
        args = job.get("a") or [""]
        payload = args[0] if args else ""
        events = count_events(payload) if isinstance(payload, str | bytes) else 0
        enqueued = job.get("et")
        title = _title(kind, events)
        if pttl > 0:  # arq's in-progress marker: its remaining life tells when the job started
            started_ms = now_ms - max(0, self._in_progress_ms - pttl)
            attempt = attempts + 1
            presentation = TaskPresentation(
                title=title,
                status_message=f"Running (attempt {attempt} of {MAX_ATTEMPTS})",
                detail_message=f"A worker started it {_seconds(now_ms - started_ms)} ago.",
            )
            status: Status = "in_progress"
            return self._task(
                task_id,
                kind,
                status,
                attempts,
                events,
                enqueued,
                presentation,
                started_ms=started_ms,
                next_ms=None,
            )
        if score > now_ms:
            wait = _seconds(score - now_ms)
            if attempts:
                detail = (
                    f"Attempt {attempts} failed; attempt {attempts + 1} starts at "
                    f"{_at(score):%Y-%m-%d %H:%M:%S} UTC."
                )
            else:
                detail = "Deferred while the database is unreachable; waiting uses no attempt."
            presentation = TaskPresentation(
                title=title,
                status_message=f"Retrying in {wait} (attempt {attempts + 1} of {MAX_ATTEMPTS})",
                detail_message=detail,
            )
            return self._task(
                task_id,
                kind,
                "retrying",
                attempts,
                events,
                enqueued,
                presentation,
                started_ms=None,
                next_ms=score,
            )
        waited = now_ms - int(enqueued) if isinstance(enqueued, int) else 0
        presentation = TaskPresentation(
            title=title,
            status_message="Waiting for a worker",
            detail_message=f"Enqueued {_seconds(waited)} ago; the next free worker takes it.",
        )
        return self._task(
            task_id,
            kind,
            "queued",
            attempts,
            events,
            enqueued,
            presentation,
            started_ms=None,
            next_ms=score,
        )

    @staticmethod
    def _task(
        task_id: str,
        kind: str,
        status: Status,
        attempts: int,
        events: int,
        enqueued: object,
        presentation: TaskPresentation,
        *,
        started_ms: int | None,
        next_ms: int | None,
    ) -> Task:
        return Task(
            id=task_id,
            kind=kind,
            status=status,
            attempts=attempts,
            max_attempts=MAX_ATTEMPTS,
            event_count=events,
            enqueued_at=_at(enqueued) if isinstance(enqueued, int | float) else None,
            started_at=_at(started_ms),
            finished_at=None,
            next_attempt_at=_at(next_ms),
            failure=None,
            presentation=presentation,
        )

    def _failed(self, letter: dead_letter.DeadLetter) -> Task:
        message = redact_sensitive_in_string(letter.message, self.extra_keys)
        return Task(
            id=letter.id,
            kind=letter.kind,
            status="failed",
            attempts=letter.attempts,
            max_attempts=MAX_ATTEMPTS,
            event_count=letter.event_count,
            enqueued_at=_at(letter.enqueued_at_ms),
            started_at=None,
            finished_at=_at(letter.failed_at_ms),
            next_attempt_at=None,
            failure=TaskFailure(
                error_name=letter.error_name,
                message=message,
                classification=letter.classification,
            ),
            presentation=TaskPresentation(
                title=_title(letter.kind, letter.event_count),
                status_message=f"Failed: {letter.error_name}",
                detail_message=message,
            ),
        )

    @staticmethod
    def _complete(entry: dict[str, str]) -> Task:
        events = int(entry.get("event_count", 0))
        enqueued = int(entry.get("enqueued_at_ms", 0))
        started = int(entry.get("started_at_ms", 0))
        finished = int(entry.get("finished_at_ms", 0))
        return Task(
            id=entry.get("id", ""),
            kind="events",
            status="complete",
            attempts=int(entry.get("attempts", 1)),
            max_attempts=MAX_ATTEMPTS,
            event_count=events,
            enqueued_at=_at(enqueued),
            started_at=_at(started),
            finished_at=_at(finished),
            next_attempt_at=None,
            failure=None,
            presentation=TaskPresentation(
                title=_title("events", events),
                status_message=f"Stored {_plural(events, 'event')}",
                detail_message=(
                    f"Written in {(finished - started) / 1000:.2f} s, "
                    f"{(finished - enqueued) / 1000:.2f} s after it was enqueued."
                ),
            ),
        )

    def _from_result(self, task_id: str, result: dict[str, Any]) -> TaskDetail:
        """A task known only by arq's result: complete, or failed inside arq itself."""
        args = result.get("a") or [""]
        payload = (
            redacted_payload(args[0], self.extra_keys)
            if args and isinstance(args[0], str)
            else None
        )
        kind = _kind(result.get("f"))
        if result.get("s"):
            summary = result.get("r") if isinstance(result.get("r"), dict) else {}
            if summary and isinstance(summary.get("events"), list):
                payload = redact_sensitive(summary["events"], self.extra_keys)
            events = int(summary.get("stored", 0)) if summary else 0
            entry = {
                "id": task_id,
                "event_count": str(events),
                "enqueued_at_ms": str(result.get("et", 0)),
                "started_at_ms": str(result.get("st", 0)),
                "finished_at_ms": str(result.get("ft", 0)),
            }
            task = self._complete(entry)
            if kind != "events":
                done = msgspec.structs.replace(
                    task.presentation, title=_title(kind, 0), status_message="Done"
                )
                task = msgspec.structs.replace(task, kind=kind, presentation=done)
            return _detail(task, payload)
        # arq failed the job itself (an exception the worker did not handle, a timeout).
        message = redact_sensitive_in_string(str(result.get("r", "")), self.extra_keys)
        events = count_events(args[0]) if args and isinstance(args[0], str) else 0
        task = Task(
            id=task_id,
            kind=kind,
            status="failed",
            attempts=int(result.get("t") or 1),
            max_attempts=MAX_ATTEMPTS,
            event_count=events,
            enqueued_at=_at(result.get("et")),
            started_at=_at(result.get("st")),
            finished_at=_at(result.get("ft")),
            next_attempt_at=None,
            failure=TaskFailure(error_name="JobFailed", message=message, classification="unknown"),
            presentation=TaskPresentation(
                title=_title(kind, events),
                status_message="Failed: JobFailed",
                detail_message=message or "the worker failed the job without a message",
            ),
        )
        return _detail(task, payload)

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
        segments = _SEGMENTS[_SEGMENTS.index(start.segment) :] if start else _SEGMENTS
        for segment in segments:
            statuses = wanted & _SEGMENT_STATUSES[segment]
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
        after: _Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], _Position | None, int]:
        now_ms = _now_ms()
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
            # Job bodies can be megabytes: read only as many as the page can still take.
            batch = matching[: want - len(items)]
            bodies = await self.redis.mget([JOB_PREFIX + m[0] for m in batch]) if batch else []
            for (task_id, score, pttl, attempts), body in zip(batch, bodies, strict=True):
                if body is None:  # finished since the queue was read
                    continue
                task = self._queued(task_id, score, deserialize_job(body), pttl, attempts, now_ms)
                if task.status in statuses and (kind is None or task.kind == kind):
                    items.append(task)
                    if len(items) >= want:
                        return items, _Position("queue", score, task_id), budget
            end = batch[-1] if len(batch) < len(matching) else fresh[-1]
            last = (end[1], end[0])
            low = last[0]
        assert last is not None
        return items, _Position("queue", last[0], last[1]), budget

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
        after: _Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], _Position | None, int]:
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
                items.append(self._failed(_letter_decoder.decode(raw)))
                if len(items) >= want:
                    return items, _Position("failed", score, task_id), budget
            last = (batch[-1][1], batch[-1][0])
            high = last[0]
        assert last is not None
        return items, _Position("failed", last[0], last[1]), budget

    async def _walk_complete(
        self,
        after: _Position | None,
        want: int,
        budget: int,
    ) -> tuple[list[Task], _Position | None, int]:
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
                items.append(self._complete(_fields(fields)))
                upper = "(" + entry_id.decode()
                if len(items) >= want:
                    return items, _Position("complete", 0, entry_id.decode()), budget
        return items, _Position("complete", 0, upper[1:]), budget

    # Counting.

    async def counts(self) -> tuple[StatusCounts, float]:
        """Count tasks per status, and the age in seconds of the oldest one waiting."""
        now_ms = _now_ms()
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

    async def retry(self, task_id: str) -> Task:
        """Replay a failed task's events as a job of the same id, then drop the dead letter."""
        letter = await dead_letter.get(self.redis, self.queue, task_id)
        if letter is not None:
            payload, events = letter.payload, letter.event_count
        else:
            task = await self.get(task_id)
            if task is None:
                raise TaskNotFound(f"no task {task_id}")
            if task.status != "failed":
                raise TaskNotFailed(task_id, task.status)
            payload, events = task.payload, task.event_count  # failed inside arq
        text = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
        # arq's result of the failed run would make the script see the task as done.
        await self.redis.delete(RESULT_PREFIX + task_id)
        await self._enqueue(keys=[self.queue], args=[text, task_id])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(dead_letter.record_key(self.queue, task_id))
            pipe.zrem(dead_letter.index_key(self.queue), task_id)
            pipe.hdel(attempts_key(self.queue), task_id)
            pipe.hincrby(counters_key(self.queue), EVENTS_RETRIED, events)
            await pipe.execute()
        retried = await self.get(task_id)
        if retried is None:  # a worker stored it already and its result is not yet visible
            raise TaskNotFound(f"task {task_id} vanished while being retried")
        return _summary(retried)

    async def retry_failed(self, where: RetryFilter | None = None) -> int:
        """Retry every failed task that matches `where`; return how many were retried."""
        where = where or RetryFilter()
        low = f"({where.newer_than.timestamp() * 1000:.0f}" if where.newer_than else "-inf"
        high = f"({where.older_than.timestamp() * 1000:.0f}" if where.older_than else "+inf"
        index = dead_letter.index_key(self.queue)
        retried = 0
        ids = [m.decode() for m in await self.redis.zrangebyscore(index, low, high)]
        for start in range(0, len(ids), SCAN_CHUNK):
            chunk = ids[start : start + SCAN_CHUNK]
            records = await self.redis.mget(
                [dead_letter.record_key(self.queue, task_id) for task_id in chunk]
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
                    await self.retry(task_id)
                except (TaskNotFound, TaskNotFailed):
                    continue  # retried by someone else meanwhile
                retried += 1
        return retried

    # Cleaning up.

    async def cleanup(self, policy: CleanupPolicy | None = None) -> CleanupResult:
        """Delete complete and failed tasks past their age, keeping the most recent failures."""
        policy = policy or CleanupPolicy()
        now_ms = _now_ms()
        complete_cutoff = max(0, now_ms - policy.complete_older_than_days * DAY_MS)
        # The stream's entry ids are the ms each task finished: MINID trims by age.
        deleted_complete = int(
            await self.redis.xtrim(
                complete_key(self.queue), minid=str(complete_cutoff), approximate=False
            )
        )
        index = dead_letter.index_key(self.queue)
        total = int(await self.redis.zcard(index))
        deleted_failed = 0
        if total > policy.keep_recent_failed:
            failed_cutoff = now_ms - policy.failed_older_than_days * DAY_MS
            oldest = await self.redis.zrange(
                index, 0, total - policy.keep_recent_failed - 1, withscores=True
            )
            doomed = [m.decode() for m, score in oldest if score < failed_cutoff]
            for start in range(0, len(doomed), SCAN_CHUNK):
                chunk = doomed[start : start + SCAN_CHUNK]
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*(dead_letter.record_key(self.queue, i) for i in chunk))
                    pipe.zrem(index, *chunk)
                    await pipe.execute()
            deleted_failed = len(doomed)
        return CleanupResult(complete=deleted_complete, failed=deleted_failed)


def _queue_status(pttl: int, score: int, now_ms: int) -> Status:
    if pttl > 0:  # arq's in-progress marker
        return "in_progress"
    return "retrying" if score > now_ms else "queued"


def _peek_kind(head: bytes | None) -> str | None:
    """The kind named at the start of a job's JSON (arq writes "t", then "f"); None if unseen."""
    match = _FUNCTION_FIELD.search(head or b"")
    return _kind(match.group(1).decode()) if match else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def _detail(task: Task, payload: Any) -> TaskDetail:
    return TaskDetail(**msgspec.structs.asdict(task), payload=payload)


def _summary(detail: TaskDetail) -> Task:
    values = msgspec.structs.asdict(detail)
    del values["payload"]
    return Task(**values)
